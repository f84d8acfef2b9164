"""Run the whole benchmark suite on this machine's device and write results, a report and plots.

    python benchmarks/run.py --mode full            # `make bench`: every benchmark, results/<device>/
    python benchmarks/run.py --mode quick [--out DIR] # `make bench-quick` / CI: tiny shapes, 1 round

What it does:
1. records the device, versions and date, and measures the device's ceilings (copy GB/s, matmul TFLOP/s), which
   the report turns into time floors on the kernel plots;
2. discovers `benchmarks/bench_*.py` (pytest-benchmark files) and runs them with pytest, in one process in quick
   mode (imports are the cost there) and one process per file in full mode (a crash or hang stays in its file);
3. reads pytest-benchmark's JSON and pytest's JUnit XML into one normalised `results.json` (measured cases,
   skipped cases with their reasons, failures), keeps the raw files under `raw/`, and
4. writes `REPORT.md` (tables + summary of ratios) and PNG plots through `report.py`.
Exit status: 0 when every benchmark that ran passed, 1 otherwise (the report is written either way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import common
import torch

BENCH_DIR = Path(__file__).resolve().parent
# Which parameter names the variant under test (the lines on a plot, the rows of a ratio) in each result.
VARIANT_KEYS = ("impl", "variant", "path", "backend", "method", "metric", "model", "peer")
BATCH_KEYS = ("batch", "batch_size", "B")
# pytest-benchmark settings per mode; CPU full mode keeps rounds low so the run stays within minutes.
BENCHMARK_OPTIONS = {
    "quick": ["--benchmark-min-rounds=1", "--benchmark-max-time=0", "--benchmark-warmup=off"],
    "full-cpu": [
        "--benchmark-min-rounds=3",
        "--benchmark-max-time=0.5",
        "--benchmark-warmup=on",
        "--benchmark-warmup-iterations=1",
    ],
    "full-cuda": [
        "--benchmark-min-rounds=10",
        "--benchmark-max-time=1.0",
        "--benchmark-warmup=on",
        "--benchmark-warmup-iterations=5",
    ],
}


def discover(only: list[str] | None = None) -> list[Path]:
    """The `bench_*.py` files, sorted; `only` keeps those whose suite name contains one of the given strings."""
    files = sorted(BENCH_DIR.glob("bench_*.py"))
    if only:
        files = [f for f in files if any(o in suite_name(f) for o in only)]
    return files


def suite_name(path: Path | str) -> str:
    return Path(path).stem.removeprefix("bench_")


def _pytest_command(files: list[Path], mode: str, device: torch.device, raw: Path, tag: str) -> list[str]:
    options = BENCHMARK_OPTIONS["quick" if mode == "quick" else f"full-{device.type}"]
    return [
        sys.executable,
        "-m",
        "pytest",
        *map(str, files),
        "-o",
        "addopts=",  # the project's addopts disable benchmarks for the test suite
        "-p",
        "no:cacheprovider",
        "-q",
        "--continue-on-collection-errors",
        "--benchmark-enable",
        "--benchmark-sort=name",
        f"--benchmark-json={raw / f'{tag}.benchmark.json'}",
        f"--junitxml={raw / f'{tag}.junit.xml'}",
        *options,
    ]


def run_pytest(files: list[Path], tag: str, mode: str, device: torch.device, out: Path, timeout_s: float) -> dict:
    """Run the given files in one pytest process; returns what happened (exit code, wall time, log file)."""
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    log = out / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = _pytest_command(files, mode, device, raw, tag)
    env = dict(
        os.environ, **{common.ENV_MODE: mode, common.ENV_OUT: str(out / "suites"), common.ENV_DEVICE: str(device)}
    )
    start = time.perf_counter()
    with log.open("w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        try:
            code = subprocess.run(
                cmd, check=False, cwd=common.REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
            f.write(f"\n[run.py] killed after {timeout_s:.0f} s\n")
    return {
        "tag": tag,
        "files": [str(p.relative_to(common.REPO_ROOT)) for p in files],
        "exit_code": code,
        "wall_s": round(time.perf_counter() - start, 2),
        "log": str(log.relative_to(out)),
    }


def _suite_of(nodeid_or_classname: str) -> str:
    match = re.search(r"bench_([A-Za-z0-9_]+?)(?:\.py)?(?:::|$|\.)", nodeid_or_classname)
    return match.group(1) if match else nodeid_or_classname


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _first(mapping: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def _peak_memory(extra: dict) -> int | None:
    for key, value in extra.items():
        lower = key.lower()
        if "peak" in lower and ("mem" in lower or "bytes" in lower) and isinstance(value, (int, float)):
            return int(value * 2**20) if lower.endswith(("_mb", "mib")) else int(value)
    return None


def normalise_benchmark(entry: dict) -> dict[str, Any]:
    """One pytest-benchmark entry -> the suite's result record (times in ms, throughput in items/s)."""
    stats = entry["stats"]
    params = _jsonable(entry.get("params") or {})
    extra = _jsonable(entry.get("extra_info") or {})
    merged = {**extra, **params}
    batch = _first(merged, BATCH_KEYS)
    median_s = stats["median"]
    record = {
        "suite": _suite_of(entry.get("fullname", "")),
        "test": entry["name"].split("[", 1)[0],
        "name": entry["name"],
        "group": entry.get("group"),
        "params": params,
        "variant": _first(merged, VARIANT_KEYS),
        "device": merged.get("device"),
        "median_ms": median_s * 1e3,
        "min_ms": stats["min"] * 1e3,
        "max_ms": stats["max"] * 1e3,
        "iqr_ms": stats["iqr"] * 1e3,
        "mean_ms": stats["mean"] * 1e3,
        "rounds": stats["rounds"],
        "items_per_s": batch / median_s if isinstance(batch, (int, float)) and median_s > 0 else None,
        "peak_memory_bytes": _peak_memory(extra),
        "extra": extra,
    }
    return record


def parse_junit(path: Path) -> tuple[list[dict], list[dict], int]:
    """(skipped cases with reasons, failed/errored cases with messages, number of passed cases) from JUnit XML."""
    skipped, failed, passed = [], [], 0
    if not path.exists():
        return skipped, failed, passed
    for case in ET.parse(path).getroot().iter("testcase"):
        where = case.get("classname", "") or case.get("file", "")
        base = {"suite": _suite_of(where), "name": case.get("name", "")}
        skip = case.find("skipped")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failed.append({**base, "message": (problem.get("message") or "")[:500]})
        elif skip is not None:
            reason = skip.get("message") or ""
            skipped.append({**base, "reason": re.sub(r"^[^:]*Skipped: ", "", reason)})
        else:
            passed += 1
    return skipped, failed, passed


def _suite_rows(out: Path) -> dict[str, list[dict]]:
    """Per suite, the per-case rows a benchmark file wrote into its own JSON (a list under "records" or "results")."""
    rows: dict[str, list[dict]] = {}
    for path in sorted((out / "suites").rglob("*.json")) if (out / "suites").exists() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        found = data.get("records", data.get("results"))
        if isinstance(found, list):
            file_device = data.get("device_type")
            rows.setdefault(str(data.get("benchmark", path.stem)), []).extend(
                {"device_type": file_device, **r} for r in found if isinstance(r, dict)
            )
    return rows


def enrich(record: dict, rows: list[dict]) -> None:
    """Copy the sizes a benchmark file recorded in its own JSON (shape, bytes, flops, dtype) into the record's
    extra, from the row whose fields equal all of the record's parameters; pytest-benchmark alone often carries
    only a case name, and plots need the sizes."""
    params = {k: str(v) for k, v in record["params"].items() if k != "device"}
    if not params:
        return
    for row in rows:
        device = record["params"].get("device")
        if device is not None and row.get("device_type") not in (None, str(device)):
            continue
        if all(k in row and str(row[k]) == v for k, v in params.items()):
            flat = {**row, **(row.get("shape") if isinstance(row.get("shape"), dict) else {})}
            for key, value in flat.items():
                if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                    record["extra"].setdefault(key, value)
            return


def collect(out: Path, runs: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Normalised results, skipped cases and failures from the raw files of this run's pytest processes."""
    results, skipped, failures = [], [], []
    tags = {run["tag"] for run in runs}
    for bench_json in sorted(p for p in (out / "raw").glob("*.benchmark.json") if p.name.split(".")[0] in tags):
        data = json.loads(bench_json.read_text())
        results += [normalise_benchmark(b) for b in data.get("benchmarks", [])]
    rows = _suite_rows(out)
    for record in results:
        enrich(record, rows.get(record["suite"], []))
    for junit in sorted(p for p in (out / "raw").glob("*.junit.xml") if p.name.split(".")[0] in tags):
        s, f, _ = parse_junit(junit)
        skipped += s
        failures += f
    for run in runs:
        if run["exit_code"] not in (0, 5) and not any(f["suite"] in map(suite_name, run["files"]) for f in failures):
            # crashed, timed out or failed to collect without a test-level record: say so
            failures.append(
                {
                    "suite": ",".join(map(suite_name, run["files"])),
                    "name": "(whole file)",
                    "message": f"pytest exit code {run['exit_code']}; see {run['log']}",
                }
            )
    return results, skipped, failures


def _clear(out: Path, files: list[Path] | None) -> None:
    """Remove an earlier run's raw files, logs and plots (only the given suites' raw files and logs with --only),
    so results of different runs never mix."""
    if files is None:
        stale = [*(out / "raw").glob("*"), *(out / "logs").glob("*"), *out.glob("plot_*.png")]
        stale += [p for p in (out / "suites").rglob("*") if p.is_file()]
    else:
        tags = {suite_name(f) for f in files}
        stale = [p for p in [*(out / "raw").glob("*"), *(out / "logs").glob("*")] if p.name.split(".")[0] in tags]
    for path in stale:
        path.unlink()


def _previous_results(out: Path, rerun: set[str]) -> dict[str, list[dict]]:
    """With --only: the earlier run's records of the suites not re-run, kept so the report stays complete."""
    path = out / "results.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    return {key: [r for r in old.get(key, []) if r["suite"] not in rerun] for key in ("results", "skipped", "failures")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode",
        choices=common.MODES,
        default="full",
        help="quick: tiny shapes and one round (CI); full: every shape feasible on this device",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: benchmarks/results/<device slug> in full mode, "
        "build/bench-quick/<device slug> in quick mode)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device to measure (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SUITE",
        default=None,
        help="run only suites whose name contains one of these (e.g. diff_attention peers)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds allowed per pytest process (default: 600 quick, 3600 full)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device:
        os.environ[common.ENV_DEVICE] = args.device
    device = common.bench_device()
    # quick results mean nothing: by default they go to the git-ignored build/ folder, never over real results
    default_root = common.DEFAULT_RESULTS_ROOT if args.mode == "full" else common.REPO_ROOT / "build" / "bench-quick"
    out = (args.out or default_root / common.device_slug(device)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = discover(args.only)
    kept = _previous_results(out, {suite_name(f) for f in files}) if args.only else {}
    _clear(out, files if args.only else None)
    started = time.perf_counter()
    environment = common.environment_info(device)
    print(f"[bench] {args.mode} mode on {environment['device']} -> {out}", flush=True)
    floors = common.measure_floors(device, quick=args.mode == "quick")
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU's memory to the benchmark processes
    print(
        f"[bench] floors: {floors['bandwidth_GBps']:.1f} GB/s copy, "
        + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in floors["matmul_TFLOPs"].items()),
        flush=True,
    )

    timeout = args.timeout or (600 if args.mode == "quick" else 3600)
    batches = [files] if args.mode == "quick" else [[f] for f in files]
    runs = []
    for batch in batches:
        if not batch:
            continue
        tag = "all" if len(batch) > 1 else suite_name(batch[0])
        run = run_pytest(batch, tag, args.mode, device, out, timeout)
        runs.append(run)
        print(f"[bench] {tag}: exit {run['exit_code']} in {run['wall_s']:.1f} s (log: {out / run['log']})", flush=True)

    results, skipped, failures = collect(out, runs)
    results, skipped, failures = (
        kept.get(k, []) + v for k, v in (("results", results), ("skipped", skipped), ("failures", failures))
    )
    payload = {
        "schema": common.SCHEMA,
        "mode": args.mode,
        "command": "python benchmarks/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "environment": environment,
        "floors": floors,
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 2),
        "results": results,
        "skipped": skipped,
        "failures": failures,
    }
    common.write_json(out / "results.json", payload)
    import report  # matplotlib is imported only once there is something to plot

    written = report.build_report(out)
    print(
        f"[bench] {len(results)} results, {len(skipped)} skipped, {len(failures)} failed; wrote "
        + ", ".join(str(p.relative_to(out)) for p in written),
        flush=True,
    )
    for failure in failures:
        print(f"[bench] FAILED {failure['suite']} {failure['name']}: {failure['message']}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
