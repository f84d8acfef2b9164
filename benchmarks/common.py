"""Helpers shared by the benchmark files and the suite driver (`benchmarks/run.py`).

What lives here, so that every `bench_*.py` file records results the same way:
- the suite's switches, read from the environment the driver sets (`bench_mode`, `bench_device`, `results_dir`);
- what machine a number came from (`device_name`, `device_slug`, `environment_info`);
- timing (`time_callable`: `triton.testing.do_bench` on CUDA, a synchronised wall clock on CPU) and peak memory
  (`peak_memory_bytes`: the CUDA caching allocator's peak, or the process's peak RSS on Linux CPUs);
- the machine's own ceilings (`measure_floors`: a large copy for GB/s, a large matmul for FLOP/s) and the time floor
  they put under a kernel (`floor_seconds`);
- an atomic JSON writer (`write_json`).
Benchmarks are pytest-benchmark files; `benchmarks/conftest.py` adds the `bench_mode` fixture and the quick-mode
selection. Nothing here imports pyiqa or the models, so the helpers cost nothing to import.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SCHEMA = "iqa_plugins.bench/1"
MODES = ("quick", "full")
ENV_MODE = "IQA_BENCH_MODE"  # quick | full (default full)
ENV_OUT = "IQA_BENCH_OUT"  # directory a benchmark file may write its own JSON into
ENV_DEVICE = "IQA_BENCH_DEVICE"  # cpu | cuda (default: cuda when available)
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_ROOT = REPO_ROOT / "benchmarks" / "results"
# The image size every end-to-end benchmark feeds (TID2013's 512x384, the photos pyiqa ships), so metrics and
# peers are timed on the same inputs.
IMAGE_HW = (384, 512)
QUICK_IMAGE_HW = (224, 224)


def bench_mode() -> str:
    """`quick` (CI: tiny shapes, 1-2 repetitions) or `full`, from $IQA_BENCH_MODE."""
    mode = os.environ.get(ENV_MODE, "full")
    if mode not in MODES:
        raise ValueError(f"${ENV_MODE} must be one of {MODES}, got {mode!r}")
    return mode


def bench_device() -> torch.device:
    """The device the suite measures: $IQA_BENCH_DEVICE, else CUDA when available, else CPU."""
    name = os.environ.get(ENV_DEVICE) or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"${ENV_DEVICE}={name!r} but torch sees no CUDA device")
    return device


def results_dir() -> Path | None:
    """Where a benchmark file may write extra JSON ($IQA_BENCH_OUT), or None when run outside the driver."""
    out = os.environ.get(ENV_OUT)
    return Path(out) if out else None


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """Human-readable name: the GPU's name, or the CPU model for CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def device_slug(device: torch.device | str) -> str:
    """Folder name for results: `cpu` for any CPU, the lower-cased GPU name otherwise (`nvidia-h100-80gb-hbm3`)."""
    device = torch.device(device)
    if device.type == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or device.type


def _version(distribution: str) -> str | None:
    # package metadata, not an import: importing pyiqa alone takes seconds
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_info(device: torch.device | str) -> dict[str, Any]:
    """Everything a reader needs to trust or reproduce a number: device, versions, threads, date, commit."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": device_name(device),
        "device_slug": device_slug(device),
        "device_type": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "pyiqa": _version("pyiqa"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        # other processes sharing the machine slow CPU figures down: record how busy it was
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_bytes"] = props.total_memory
        info["gpu_sm_count"] = props.multi_processor_count
    return info


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work (a no-op on CPU) so a wall clock measures the work, not the launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def random_images(batch: int, mode: str, device: torch.device | str) -> tuple[torch.Tensor, int, int]:
    """A batch of random RGB images in [0, 1] of the benchmarks' size (smaller in quick mode), and that size."""
    height, width = QUICK_IMAGE_HW if mode == "quick" else IMAGE_HW
    return torch.rand(batch, 3, height, width, device=device), height, width


def pedantic_images(benchmark: Any, fn: Callable[[], Any], rounds: int, device: torch.device | str, batch: int,
                    **fields: Any) -> dict[str, Any]:
    """Time ``fn`` (one call scores ``batch`` images) in ``rounds`` pytest-benchmark rounds; the figures (device,
    batch, ``fields``, median seconds, images/s, rounds) go into the benchmark's extra_info and are returned."""
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    info = {"device": device_name(device), "batch": batch, **fields, "median_s": median,
            "images_per_s": batch / median, "rounds": benchmark.stats.stats.rounds}
    benchmark.extra_info.update(info)
    return info


def summarize_times(seconds: list[float]) -> dict[str, float | int]:
    """Median, spread and count of repeated timings (in seconds)."""
    if not seconds:
        raise ValueError("summarize_times needs at least one timing")
    ordered = sorted(seconds)
    q1, q3 = (statistics.quantiles(ordered, n=4)[i] for i in (0, 2)) if len(ordered) > 1 else (ordered[0],) * 2
    return {
        "median_s": statistics.median(ordered),
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "iqr_s": q3 - q1,
        "rounds": len(ordered),
    }


def time_callable(
    fn: Callable[[], Any], device: torch.device | str, *, warmup: int = 1, reps: int = 5
) -> dict[str, float | int]:
    """Time fn: `triton.testing.do_bench` on CUDA (CUDA events, L2 flushed between runs), else a wall clock.

    `reps` is a count of calls on CPU; on CUDA do_bench picks its own count within ~100 ms of repetitions.
    """
    if warmup < 0 or reps < 1:
        raise ValueError(f"need warmup >= 0 and reps >= 1, got warmup={warmup}, reps={reps}")
    device = torch.device(device)
    if device.type == "cuda":
        from triton.testing import do_bench

        times_ms = do_bench(fn, warmup=25, rep=100, return_mode="all")
        return summarize_times([t / 1e3 for t in times_ms])
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return summarize_times(seconds)


def _proc_status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim): glibc keeps memory freed by an earlier call
    resident, and reusing it would not raise the peak RSS, hiding the call's real footprint."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement may undercount
        pass


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str) -> int | None:
    """Extra memory fn needs at its peak, over what was allocated before the call.

    CUDA: the caching allocator's peak of allocated bytes. CPU: the process's peak resident set (VmHWM, reset
    through /proc/self/clear_refs, after returning freed heap pages to the OS) minus the resident set before; it
    includes allocator slack, and is None where /proc is unavailable (non-Linux). Run fn once before measuring so lazy initialisation is not counted.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    _release_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _proc_status_bytes("VmRSS")
    fn()
    peak = _proc_status_bytes("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before)


def measure_floors(device: torch.device | str, *, quick: bool | None = None) -> dict[str, Any]:
    """Measured ceilings of this device: copy bandwidth (GB/s, read + write) and matmul rate (TFLOP/s per dtype).

    Kernel plots draw `floor_seconds` from these: a kernel cannot beat bytes / bandwidth or flops / matmul rate.
    `quick` (small sizes, seconds) defaults to whether the suite runs in quick mode.
    """
    device = torch.device(device)
    if quick is None:
        quick = bench_mode() == "quick"
    gpu = device.type == "cuda"
    copy_mb = 32 if quick else (1024 if gpu else 128)
    # CPUs without bf16 matrix instructions run bf16 matmuls ~50x slower than fp32: a smaller one suffices there
    matmul_n = {
        torch.float32: 512 if quick else (8192 if gpu else 1024),
        torch.bfloat16: 128 if quick else (8192 if gpu else 256),
    }
    reps = 2 if quick else 5
    src = torch.rand(copy_mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    copy = time_callable(lambda: dst.copy_(src), device, warmup=1, reps=reps)
    floors: dict[str, Any] = {
        "copy_bytes": 2 * src.numel() * src.element_size(),
        "bandwidth_GBps": 2 * src.numel() * src.element_size() / copy["median_s"] / 1e9,
        "matmul_n": {str(k).removeprefix("torch."): v for k, v in matmul_n.items()},
        "matmul_TFLOPs": {},
        "tf32_matmul": bool(gpu and torch.backends.cuda.matmul.allow_tf32),
    }
    for dtype, n in matmul_n.items():
        a = torch.rand(n, n, device=device, dtype=dtype)
        b = torch.rand(n, n, device=device, dtype=dtype)
        mm = time_callable(lambda a=a, b=b: torch.mm(a, b), device, warmup=1, reps=reps)
        floors["matmul_TFLOPs"][str(dtype).removeprefix("torch.")] = 2 * n**3 / mm["median_s"] / 1e12
    return floors


def floor_seconds(bytes_moved: float, flops: float, floors: dict[str, Any], dtype: str = "float32") -> float:
    """The time no kernel can beat on this device: the larger of bytes / bandwidth and flops / matmul rate."""
    rates = floors["matmul_TFLOPs"]
    rate = rates.get(dtype, rates.get("float32"))
    return max(bytes_moved / (floors["bandwidth_GBps"] * 1e9), flops / (rate * 1e12))


def write_json(path: Path | str, payload: Any) -> Path:
    """Write payload as indented JSON atomically (a reader never sees half a file); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
