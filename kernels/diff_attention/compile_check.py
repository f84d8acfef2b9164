"""Offline compile check of the diff-attention Triton kernels for real GPU targets, on a machine without a GPU.

    python -m iqa_plugins.kernels.diff_attention.compile_check [--targets sm_80,sm_90] [--json-dir DIR]

Triton compiles for any target once its driver answers "which target": a stand-in driver names sm_80
(A100) or sm_90 (H100/H200). For every case of a shape table (DR.Experts' decode calls, its literal 577x577
path, ViT shapes, d = 512), forward and backward, fp32 (IEEE and TF32), bf16 and fp16, the launch plan is
built exactly as on the GPU (`forward_plan`/`backward_plan` with the target's shared memory and SM count) and
every tile config the pruner can select is compiled. Fails when a config exceeds the target's shared memory,
spills registers, addresses memory with 32-bit offsets, does not compile, or a case has no config left.

Compiling stops before ptxas (shared memory, TTIR/TTGIR and PTX only) except for the decode configs
DR.Experts runs, which are assembled by the ptxas inside the triton wheel and read back with its cuobjdump
(registers, spills). `--ptxas all` assembles everything (slow).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TARGETS = {"sm_80": (80, 108), "sm_90": (90, 132)}  # compute capability, SM count (A100 / H100 SXM)
# name: (B, H, M, N, d, dv)
CASES = {
    "drexperts_decode_b1_h1": (1, 1, 1, 577, 384, 384),
    "drexperts_decode_b1_h10": (1, 10, 1, 577, 384, 384),
    "drexperts_decode_b64_h1": (64, 1, 1, 577, 384, 384),
    "drexperts_decode_b64_h10": (64, 10, 1, 577, 384, 384),
    "literal_n577_d384": (1, 10, 577, 577, 384, 384),
    "vit_n197_d64": (64, 12, 197, 197, 64, 64),
    "n256_d512": (1, 8, 256, 256, 512, 512),
}
DTYPES = {"fp32": (torch.float32, False), "fp32_tf32": (torch.float32, True),
          "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False)}
# DR.Experts runs its decode calls in fp32 (its default) or bf16: these are assembled by ptxas in CI.
PTXAS_CASES = {"drexperts_decode_b1_h10", "drexperts_decode_b64_h10"}
PTXAS_DTYPES = {"fp32", "bf16"}
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ADDPTR = re.compile(r"tt\.addptr .*: (.+?), (.+?)(?: loc\(.*\))?$")


@dataclasses.dataclass(frozen=True)
class Job:
    """One kernel compile: a launch of a case's plan, with one tile config (None: the launch's own tiles)."""

    target: str
    case: str
    dtype: str
    direction: str
    launch: int
    config: tuple | None  # (kwargs items, num_warps, num_stages)
    ptxas: bool


def stand_in_driver_class(capability: int) -> type:
    """A Triton driver that reports a CUDA target of `capability` without a GPU or a CUDA driver: it compiles,
    never benchmarks. Subclasses add what else they pretend (e.g. a launcher that only counts)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class StandInDriver(DriverBase):
        @classmethod
        def is_active(cls) -> bool:
            return False

        def map_python_to_cpp_type(self, ty: str) -> str:
            return "void*"

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", capability, 32)

        def get_active_torch_device(self) -> torch.device:
            return torch.device("cpu")

        def get_benchmarker(self):  # noqa: ANN201
            raise RuntimeError("no benchmarking without a GPU")

        def get_current_device(self) -> int:
            # Triton caches the target per device: one pretend device per target, so that a worker process
            # switching targets does not reuse the previous target's compiler
            return capability

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

    return StandInDriver


def _select_target(target: str) -> None:
    """Point Triton's driver at a stand-in that reports `target` (no GPU, no CUDA driver needed)."""
    from triton.runtime.driver import driver

    driver.set_active(stand_in_driver_class(TARGETS[target][0])())


def _plan(case: str, dtype: str, direction: str, target: str):  # noqa: ANN202
    """The launches of one case on `target`, built from meta tensors (shapes and strides only)."""
    from . import triton_kernels as tk

    B, H, M, N, d, dv = CASES[case]
    dt, tf32 = DTYPES[dtype]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    capability, sms = TARGETS[target]
    tgt = tk.Target(tk.SMEM_LIMITS[divmod(capability, 10)], sms, capability == 90)

    def t(*shape: int, dtype: torch.dtype = dt) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=dtype)

    q1, k1, q2, k2, v = t(B, H, M, d), t(B, H, N, d), t(B, H, M, d), t(B, H, N, d), t(B, H, N, dv)
    alpha = t(H, dtype=torch.float32).expand(B, H)  # a per-head parameter, broadcast over the batch
    if direction == "fwd":
        return tgt, tk.forward_plan(q1, k1, q2, k2, v, alpha, d**-0.5, False, tgt)[1]
    o, o2, lse = t(B, H, M, dv), t(B, H, M, dv, dtype=torch.float32), t(B, H, M, dtype=torch.float32)
    return tgt, tk.backward_plan(t(B, H, M, dv), q1, k1, q2, k2, v, alpha, o, o2, lse, lse, d**-0.5)[1]


def _candidates(launch, tgt) -> list[tuple | None]:  # noqa: ANN001
    """Every tile config the pruner can select for a launch (raises NoConfigFits when none is left)."""
    from . import triton_kernels as tk

    if not launch.tuned:
        return [None]
    named = {**dict(zip(launch.kernel.arg_names, launch.args)), **launch.constexprs}
    elem = launch.args[0].element_size()
    configs = tk.select_configs(launch.name, tk.TUNED_CONFIGS[launch.name], named, elem, tgt.smem_limit, tgt.hopper)
    return [(tuple(c.kwargs.items()), c.num_warps, c.num_stages) for c in configs]


def _specialisation(launch) -> tuple:  # noqa: ANN001
    """What Triton specialises a compile on besides constexprs: pointer dtypes, integers equal to 1 or
    divisible by 16 (two cases that differ only in these share one compile)."""
    out = []
    fixed = {p.name for p in launch.kernel.params if p.do_not_specialize}
    for name, a in zip(launch.kernel.arg_names, launch.args):
        if name in fixed:
            out.append(None)
        elif isinstance(a, torch.Tensor):
            out.append(str(a.dtype))
        elif isinstance(a, int):
            out.append(1 if a == 1 else 16 if a % 16 == 0 else 0)
        else:
            out.append(type(a).__name__)
    return tuple(out)


@contextlib.contextmanager
def _without_ptxas(skip: bool):  # noqa: ANN202
    """Stop compiles before ptxas (an empty cubin); shared memory and PTX are known by then."""
    from triton.backends.nvidia.compiler import CUDABackend

    original = CUDABackend.make_cubin
    if skip:
        CUDABackend.make_cubin = lambda self, src, metadata, opt, capability: b""
    try:
        yield
    finally:
        CUDABackend.make_cubin = original


def _resources(cubin: bytes) -> dict[str, int]:
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    m = _RESOURCES.search(out)
    if m is None:
        raise RuntimeError(f"cuobjdump printed no resource usage: {out[:300]}")
    return dict(zip(("regs", "stack", "static_smem", "local"), map(int, m.groups())))


def _tensor_core_path(ttgir: str, ptx: str) -> str:
    if "warp_group_dot" in ttgir or "wgmma" in ptx:
        return "wgmma"
    if "mma.sync" in ptx or "nvidia_mma<{versionMajor = 2" in ttgir:
        return "mma.sync"
    return "fma"


def _i32_addptrs(ttir: str) -> int:
    """Pointer updates whose offset is not 64-bit (a product of 32-bit integers can wrap past 2^31)."""
    count = 0
    for line in ttir.splitlines():
        m = _ADDPTR.search(line.strip())
        if m and not (m.group(2) == "i64" or m.group(2).endswith("xi64>")):
            count += 1
    return count


def compile_job(job: Job) -> dict[str, Any]:
    """Compile one job (in a worker process) and measure it."""
    from . import triton_kernels as tk

    _select_target(job.target)
    tgt, launches = _plan(job.case, job.dtype, job.direction, job.target)
    launch = launches[job.launch]
    constexprs = dict(launch.constexprs)
    if job.config is not None:
        kwargs, warps, stages = job.config
        constexprs.update(dict(kwargs), num_warps=warps, num_stages=stages)
    grid = launch.grid(constexprs)
    record: dict[str, Any] = {
        "target": job.target, "case": job.case, "dtype": job.dtype, "direction": job.direction,
        "kernel": launch.name, "config": _config_label(constexprs), "ptxas": job.ptxas, "grid": grid[0],
        "smem_limit": tgt.smem_limit,
    }
    if launch.name in tk.TUNED_CONFIGS:
        elem = launch.args[0].element_size()
        record["smem_model"] = tk.smem_bytes(launch.name, constexprs, constexprs["D"], constexprs["DV"], elem, tgt.hopper)
    start = time.perf_counter()
    try:
        with _without_ptxas(not job.ptxas):
            kernel = launch.kernel.warmup(*launch.args, grid=grid, **constexprs)
    except Exception as exc:  # noqa: BLE001 (reported as a failure of this config)
        record.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip()[:400]}")
        return record
    record["seconds"] = round(time.perf_counter() - start, 2)
    if kernel.metadata.target.arch != TARGETS[job.target][0]:
        raise RuntimeError(f"compiled for sm_{kernel.metadata.target.arch}, not {job.target}")
    record["smem"] = kernel.metadata.shared
    record["path"] = _tensor_core_path(kernel.asm.get("ttgir", ""), kernel.asm.get("ptx", ""))
    record["i32_addptr"] = _i32_addptrs(kernel.asm.get("ttir", ""))
    if job.ptxas:
        record.update(_resources(kernel.asm["cubin"]))
    record["ok"] = True
    return record


def _config_label(c: dict[str, Any]) -> str:
    blocks = "/".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV") if k in c)
    return f"{blocks} w{c.get('num_warps', 4)} s{c.get('num_stages', 3)}"


def problems(record: dict[str, Any]) -> list[str]:
    """Why a compiled config would fail on its GPU (empty when it is fine)."""
    if not record.get("ok"):
        return [record.get("error", "no config")]
    out = []
    if record["smem"] > record["smem_limit"]:
        out.append(f"shared memory {record['smem']} B > {record['smem_limit']} B")
    spilled = record.get("local", 0) + record.get("stack", 0)  # the kernels have no local arrays
    if spilled > 0:
        out.append(f"{spilled} B of stack/local memory per thread (register spills)")
    if record["i32_addptr"]:
        out.append(f"{record['i32_addptr']} pointer offsets in 32-bit arithmetic")
    return out


def _no_config(target: str, entry: tuple[str, str, str], kernel: str, error: Exception) -> dict[str, Any]:
    case, dtype, direction = entry
    return {"target": target, "case": case, "dtype": dtype, "direction": direction, "kernel": kernel, "ok": False,
            "error": str(error)}


def _add_job(jobs: dict[tuple, Job], covers: dict[Job, list[tuple]], key: tuple, job: Job, entry: tuple) -> None:
    """Let ``job`` stand for table ``entry``: a job already planned under ``key`` covers it instead, unless
    ``job`` is assembled by ptxas and that one is not (an assembled compile supersedes a shared-memory-only one)."""
    planned = jobs.get(key)
    if planned is not None and (planned.ptxas or not job.ptxas):
        covers[planned].append(entry)
        return
    covers[job] = covers.pop(planned) if planned is not None else []
    covers[job].append(entry)
    jobs[key] = job


def plan_jobs(targets: list[str], ptxas: str) -> tuple[list[Job], list[dict[str, Any]], dict[Job, list[tuple]]]:
    """Unique compile jobs over the whole table, the cases left without a config, and which table entries
    each job stands for."""
    from . import triton_kernels as tk

    jobs: dict[tuple, Job] = {}
    covers: dict[Job, list[tuple]] = {}
    empty = []
    for target, case, dtype, direction in itertools.product(targets, CASES, DTYPES, ("fwd", "bwd")):
        entry = (case, dtype, direction)
        try:
            tgt, launches = _plan(case, dtype, direction, target)
        except tk.NoConfigFits as exc:
            empty.append(_no_config(target, entry, direction, exc))
            continue
        full = ptxas == "all" or (ptxas == "drexperts" and case in PTXAS_CASES and dtype in PTXAS_DTYPES
                                  and direction == "fwd")
        for i, launch in enumerate(launches):
            try:
                configs = _candidates(launch, tgt)
            except tk.NoConfigFits as exc:
                empty.append(_no_config(target, entry, launch.name, exc))
                continue
            for cfg in configs:
                key = (target, launch.name, tuple(sorted(launch.constexprs.items())), cfg, _specialisation(launch))
                _add_job(jobs, covers, key, Job(target, case, dtype, direction, i, cfg, full), entry)
    return list(jobs.values()), empty, covers


def print_table(records: list[dict[str, Any]]) -> None:
    cols = ("target", "kernel", "dtype", "case", "config", "smem", "smem_model", "regs", "local", "path", "seconds")
    rows = [[str(r.get(c, "")) for c in cols] + ["; ".join(problems(r)) or "ok"] for r in records]
    header = [*cols, "status"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="sm_80,sm_90", help="comma-separated, from: " + ", ".join(TARGETS))
    parser.add_argument("--ptxas", choices=("drexperts", "all", "none"), default="drexperts",
                        help="which compiles are assembled by ptxas (registers, spills); the rest stop before it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--json-dir", type=Path, help="write compile_check_<target>.json here")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"--targets: unknown target(s) {unknown}; choose from {list(TARGETS)}")
    from . import triton_kernels as tk

    if tk.INTERPRET:
        parser.error("TRITON_INTERPRET=1 is set: unset it to compile for a GPU target")

    started = time.perf_counter()
    jobs, records, covers = plan_jobs(targets, args.ptxas)
    print(f"{len(jobs)} compiles ({sum(j.ptxas for j in jobs)} through ptxas) for {len(targets)} target(s), "
          f"{len(CASES)} shapes x {len(DTYPES)} dtypes x fwd/bwd; {len(records)} launches without a config",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="triton-compile-check-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # a fresh cache: timings are real compiles
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
            futures = {pool.submit(compile_job, job): job for job in jobs}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                record = future.result()
                record["covers"] = [list(c) for c in covers[futures[future]]]
                records.append(record)
                print(f"[{done}/{len(jobs)}] {record['target']} {record['kernel']} {record['dtype']} "
                      f"{record.get('config', '')}: {'; '.join(problems(record)) or 'ok'} "
                      f"({record.get('seconds', '-')} s)", flush=True)
    records.sort(key=lambda r: (r["target"], r["kernel"], r["dtype"], r["case"], r.get("config", "")))
    print_table(records)
    failed = [r for r in records if problems(r)]
    wall = time.perf_counter() - started
    print(f"\n{len(records) - len(failed)} of {len(records)} ok; {wall:.0f} s wall with {args.jobs} worker(s)")
    if args.json_dir is not None:
        args.json_dir.mkdir(parents=True, exist_ok=True)
        import triton

        for target in targets:
            mine = [r for r in records if r["target"] == target]
            payload = {
                "target": target, "triton": triton.__version__, "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
                "jobs": args.jobs, "load_average_1m": round(os.getloadavg()[0], 2), "wall_seconds": round(wall, 1),
                "ptxas": args.ptxas, "records": mine,
            }
            path = args.json_dir / f"compile_check_{target}.json"
            path.write_text(json.dumps(payload, indent=1) + "\n")
            print(f"wrote {path}")
    for r in failed:
        print(f"FAIL {r['target']} {r['kernel']} {r['dtype']} {r['case']} {r.get('config', '')}: "
              + "; ".join(problems(r)), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
