"""One command for a lent CUDA GPU: install what is missing offline, run every GPU test and the GPU benchmarks
that answer the project's speed targets, and write benchmarks/results/<gpu>/ (`make gpu-check`).

    python3 benchmarks/gpu_check.py [--bundle gpu_bundle] [--budget 360]

Steps (each with its own time limit; logs under benchmarks/results/<gpu>/gpu_check/, or build/gpu_check/ on a dry run):
1. packages: the wheels of `make gpu-bundle` (pyiqa, open_clip_torch and the pure-Python packages they need that a
   bare GPU image lacks) installed with `pip --no-index --no-deps`, only when pyiqa or open_clip is missing;
2. the project: `pip install -e . --no-deps --no-build-isolation` with the CUDA attribute scorer
   (IQA_PLUGINS_BUILD_CUDA=1), unless this checkout is already installed;
3. `pytest -m gpu tests/` (every GPU test; on a machine without CUDA they all skip: the dry run);
4. GPU only: the benchmark cases behind the targets (triton.testing.do_bench timings): fused differential
   attention vs two SDPA calls at N=197, d=64, bf16; the M=1, N=577, d=384 decode call's bandwidth; DR.Experts
   fast vs literal at batch 64; the expert stage's host work per crop;
5. GPU only: `gpu_targets.json` (device, torch/triton versions, date, each target's measured value and verdict).
Exit status: 0 when every step ran and no test failed (a missed speed target is reported, not an error).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch

REPO = common.REPO_ROOT
BENCH = REPO / "benchmarks"
# pytest -k selections of the benchmark cases that answer the targets (forward only: the targets are forward)
BENCH_CASES = {
    "diff_attention": ("bench_diff_attention.py",
                       "test_gpu_diff_attention and fwd and not fwd_bwd and ((vit_n197_d64 and bfloat16 and "
                       "(fused or two_sdpa)) or (drexperts_m1_n577_d384 and fused))"),
    "drexperts": ("bench_drexperts.py", "(test_drexperts_paths and 64) or test_expert_stage_host_time"),
    "scoring": ("bench_scoring.py", "test_scoring_loop and as_is"),
}
TARGETS = {
    "fused_vs_two_sdpa_n197_d64_bf16": 1.5,
    "m1_n577_d384_bandwidth_fraction": 0.7,
    "drexperts_fast_vs_literal_batch64": 3.0,
    "drexperts_host_work_ratio_batch1": 5.0,
    "scoring_command_loop_over_bare_loop": 0.9,
}


def _log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run(name: str, cmd: list[str], logs: Path, timeout_s: float, env: dict | None = None) -> dict[str, Any]:
    """Run cmd with its output in logs/<name>.log (and echoed at the end); never raises on failure."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    start = time.monotonic()
    _log(f"{name}: {' '.join(cmd)} (limit {timeout_s:.0f} s)")
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=f, stderr=subprocess.STDOUT,
                                timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = round(time.monotonic() - start, 1)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    print("\n".join("    " + line for line in tail), flush=True)
    _log(f"{name}: exit {rc} after {seconds} s")
    shown = log.relative_to(REPO) if log.is_relative_to(REPO) else log
    return {"step": name, "exit": rc, "seconds": seconds, "log": str(shown)}


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _installed_here() -> bool:
    spec = importlib.util.find_spec("iqa_plugins")
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve().is_relative_to(REPO)


def install_steps(bundle: Path, logs: Path) -> list[dict[str, Any]]:
    steps = []
    missing = _missing("pyiqa", "open_clip")
    if missing:
        wheels = sorted(bundle.glob("*.whl"))
        if not wheels:
            _log(f"missing {missing} and no wheels in {bundle}: run `make gpu-bundle` where pip works and carry it")
            return [{"step": "bundle", "exit": "no bundle", "seconds": 0, "log": None}]
        steps.append(_run("bundle", [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                                     *map(str, wheels)], logs, 120))
    if not _installed_here():
        env = {"MAX_JOBS": str(os.cpu_count() or 4)}
        if torch.cuda.is_available():
            env["IQA_PLUGINS_BUILD_CUDA"] = "1"
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "--quiet",
               "-e", "."]
        steps.append(_run("install", cmd, logs, 240, env))
        if steps[-1]["exit"] != 0:  # the compiled scorer did not build: still test the rest (its tests then skip)
            steps.append(_run("install_without_extension", cmd, logs, 120, {"IQA_PLUGINS_NO_EXT": "1"}))
    return steps


def _pytest(name: str, args: list[str], logs: Path, timeout_s: float, junit: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q", "-rs",
           "--continue-on-collection-errors", f"--junitxml={junit}"]
    step = _run(name, cmd, logs, timeout_s)
    if step["exit"] == 5:  # nothing selected: no GPU test exists in what was collected
        step["exit"] = 0
    return step


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def evaluate_targets(out: Path) -> dict[str, Any]:
    """Each target's measured value (None when its benchmark did not run) from the benchmarks' JSON files."""
    values: dict[str, Any] = {name: None for name in TARGETS}
    details: dict[str, Any] = {}
    diff = _load(out / "diff_attention.json")
    if diff:
        recs = {(r["case"], r["impl"], r["dtype"], r["mode"]): r for r in diff["records"]}
        fused = recs.get(("vit_n197_d64", "fused", "bfloat16", "fwd"))
        sdpa = recs.get(("vit_n197_d64", "two_sdpa", "bfloat16", "fwd"))
        if fused and sdpa:
            values["fused_vs_two_sdpa_n197_d64_bf16"] = sdpa["median_ms"] / fused["median_ms"]
            details["n197_d64_bf16_ms"] = {"fused": fused["median_ms"], "two_sdpa": sdpa["median_ms"]}
        bandwidth = (diff.get("floors") or {}).get("bandwidth_GBps")
        decode = {dt: recs.get(("drexperts_m1_n577_d384", "fused", dt, "fwd")) for dt in ("float32", "bfloat16")}
        fractions = {dt: r["GBps"] / bandwidth for dt, r in decode.items() if r and bandwidth}
        if fractions:
            values["m1_n577_d384_bandwidth_fraction"] = min(fractions.values())
            details["m1_n577_d384"] = {"measured_copy_GBps": bandwidth, "fraction_by_dtype": fractions,
                                       "GBps_by_dtype": {dt: r["GBps"] for dt, r in decode.items() if r}}
    drx = _load(out / "drexperts.json")
    if drx:
        speedups = {k: v["speedup"] for k, v in drx["fast_vs_literal"].items() if k.endswith("batch64")}
        if speedups:
            values["drexperts_fast_vs_literal_batch64"] = min(speedups.values())
            details["drexperts_fast_vs_literal_batch64"] = speedups
    host = _load(out / "drexperts_host.json")
    if host and "batch1" in host["results"]:
        values["drexperts_host_work_ratio_batch1"] = host["results"]["batch1"]["ratio_per_expert_over_heads_median"]
        details["drexperts_host"] = {
            batch: {k: v for k, v in info.items() if "ratio" in k or k.endswith("experts_as_heads")
                    or k.endswith("per_expert_calls")}
            for batch, info in host["results"].items()}
    scoring = _load(out / "scoring.json")
    if scoring:
        values["scoring_command_loop_over_bare_loop"] = scoring["summary"].get(
            "command_loop_over_bare_loop_torch_defaults")
        details["scoring_images_per_s"] = {k: v["images_per_s"] for k, v in scoring["results"].items()}
    verdicts = {name: None if values[name] is None else bool(values[name] >= goal) for name, goal in TARGETS.items()}
    return {"targets": TARGETS, "measured": values, "met": verdicts, "details": details}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "gpu_bundle", help="folder of `make gpu-bundle`")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for the whole check (default 6 min)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    out = BENCH / "results" / common.device_slug(device)
    logs = out / "gpu_check" if gpu else REPO / "build" / "gpu_check"  # a dry run leaves the results alone
    _log(f"device: {common.device_name(device)}; torch {torch.__version__}; "
         f"{'GPU run' if gpu else 'no CUDA device: dry run (GPU tests must all skip, no benchmarks)'}")

    steps = install_steps(args.bundle, logs)
    left = lambda: max(30.0, deadline - time.monotonic())  # noqa: E731
    steps.append(_pytest("tests", ["-m", "gpu", "tests"], logs, min(left(), 150 if gpu else 600),
                         logs / "tests.junit.xml"))
    if gpu:
        for name, (file, selection) in BENCH_CASES.items():
            steps.append(_pytest(f"bench_{name}", [str(BENCH / file), "-o", "addopts=", "--benchmark-enable",
                                                   "-k", selection], logs, left(), logs / f"bench_{name}.junit.xml"))
        summary = {"schema": common.SCHEMA, "benchmark": "GPU targets", "environment": common.environment_info(device),
                   **evaluate_targets(out), "steps": steps}
        common.write_json(out / "gpu_targets.json", summary)
        for name, goal in TARGETS.items():
            value = summary["measured"][name]
            shown = "not measured" if value is None else f"{value:.2f} ({'met' if value >= goal else 'MISSED'})"
            _log(f"target {name} >= {goal}: {shown}")
        _log(f"wrote {out.relative_to(REPO)}/gpu_targets.json")
    failed = [s for s in steps if s["exit"] != 0]
    for s in failed:
        _log(f"step {s['step']} failed: exit {s['exit']} (log {s['log']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
