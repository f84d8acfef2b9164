"""Benchmark of fused differential attention against the eager, two-SDPA and torch.compile baselines.

Run all (GPU cases skip cleanly on CPU machines; the `cpu_*` cases run everywhere):
    .venv/bin/python -m pytest benchmarks/bench_diff_attention.py --benchmark-enable -q
CPU-sized variant only:  add `-k cpu_`;  GPU cases only:  add `-k "not cpu_"`.
Writes benchmarks/results/<device-slug>/diff_attention.json: one self-describing record per measured case
(device, versions, date, shape, dtype, impl, mode, median ms, GB/s, TFLOP/s, fraction of the time floor).

Implementations:
  fused              iqa_plugins.kernels.diff_attention (Triton on CUDA; the op's reference path on CPU)
  literal_reference  both softmax matrices materialised (the authors' formulation)
  two_sdpa           two F.scaled_dot_product_attention calls, o1 - alpha * o2
  torch_compile      torch.compile of literal_reference (GPU only: inductor on a 2-core CPU takes minutes)
Traffic and FLOPs are the op's minimum (read Q1, Q2, K1, K2, V once, write O once; FLOPs from
`iqa_plugins.kernels.diff_attention.flops.useful_flops`), identical for every impl, so GB/s and TFLOP/s compare
like for like. Backward records also carry what the fused backward executes relative to two FlashAttention-2
backwards (`fused_bwd_vs_two_fa2`, the same module's model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import common
from iqa_plugins.kernels import diff_attention, diff_attention_reference, diff_attention_sdpa
from iqa_plugins.kernels.diff_attention import flops as flop_model

RESULTS_DIR = Path(__file__).parent / "results"
HAS_CUDA = torch.cuda.is_available()

# name: (B, H, M, N, d, dv). GPU cases are the shapes the project targets: ViT shapes (64 images x 10 experts, 12 heads),
# DR.Experts' exact decode-style path (M = 1) and its literal path (M = N = 577, d = 384), 64 x 10 slices.
GPU_CASES = {
    "vit_n197_d64": (640, 12, 197, 197, 64, 64),
    "vit_n577_d64": (640, 12, 577, 577, 64, 64),
    "drexperts_m1_n577_d384": (64, 10, 1, 577, 384, 384),
    "literal_n577_d384": (64, 10, 577, 577, 384, 384),
}
CPU_CASES = {
    "cpu_vit_n197_d64": (1, 4, 197, 197, 64, 64),
    "cpu_drexperts_m1_n577_d384": (4, 10, 1, 577, 384, 384),
    "cpu_literal_n577_d384": (1, 2, 577, 577, 384, 384),
}
IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "fused": diff_attention,
    "literal_reference": diff_attention_reference,
    "two_sdpa": diff_attention_sdpa,
    "torch_compile": torch.compile(diff_attention_reference, dynamic=False),
}
_records: list[dict[str, Any]] = []
_floors: dict[str, dict[str, Any]] = {}
_env: dict[str, dict[str, Any]] = {}


def _env_for(device: torch.device) -> dict[str, Any]:
    if device.type not in _env:
        _env[device.type] = common.environment_info(device)
    return _env[device.type]


def traffic_and_flops(shape: tuple[int, ...], elem_bytes: int, mode: str) -> tuple[float, float]:
    """Minimum bytes moved and useful FLOPs of the op (forward, or forward + backward)."""
    B, H, M, N, d, dv = shape
    s = B * H
    fwd_bytes = elem_bytes * s * (2 * M * d + 2 * N * d + N * dv + M * dv)
    fwd_flops, bwd_flops = flop_model.useful_flops(shape)
    if mode == "fwd":
        return fwd_bytes, fwd_flops
    # backward reads inputs, O and dO and writes five gradients
    bwd_bytes = elem_bytes * s * 2 * (2 * M * d + 2 * N * d + N * dv + M * dv)
    return fwd_bytes + bwd_bytes, fwd_flops + bwd_flops


def write_results(records: list[dict[str, Any]], results_dir: Path, device: torch.device) -> Path:
    """Write the module's records (with the machine's metadata and measured ceilings) as one JSON file."""
    payload = {
        "schema": common.SCHEMA,
        "benchmark": "diff_attention",
        "environment": _env_for(device),
        "floors": _floors.get(device.type),
        "records": records,
    }
    return common.write_json(results_dir / common.device_slug(device) / "diff_attention.json", payload)


@pytest.fixture(scope="module", autouse=True)
def _flush_records():
    yield
    for dev_type in sorted({r["device_type"] for r in _records}):
        mine = [r for r in _records if r["device_type"] == dev_type]
        write_results(mine, RESULTS_DIR, torch.device(dev_type))
    _records.clear()


def _floors_for(device: torch.device) -> dict[str, Any]:
    if device.type not in _floors:
        _floors[device.type] = common.measure_floors(device)
    return _floors[device.type]


def _make(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, grad: bool):
    B, H, M, N, d, dv = shape
    tensors = [torch.randn(B, H, rows, feat, device=device, dtype=dtype)
               for rows, feat in ((M, d), (N, d), (M, d), (N, d), (N, dv))]
    alpha = torch.full((B, H), 0.5, device=device)
    if grad:
        for t in (*tensors, alpha):
            t.requires_grad_()
    return tensors, alpha


def _run_case(benchmark, case: str, shape, impl: str, dtype_name: str, mode: str, device: torch.device) -> None:
    dtype = getattr(torch, dtype_name)
    fn_impl = IMPLS[impl]
    inputs, alpha = _make(shape, dtype, device, grad=mode == "fwd_bwd")
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return fn_impl(*inputs, alpha)
    else:
        grad_out = torch.randn(*shape[:3], shape[5], device=device, dtype=dtype)

        def fn():
            out = fn_impl(*inputs, alpha)
            return torch.autograd.grad(out, (*inputs, alpha), grad_out)

    fn()  # compile / autotune outside the timings
    common.synchronize(device)
    if device.type == "cuda":
        stats = common.time_callable(fn, device)  # triton.testing.do_bench: CUDA events, L2 flushed
        benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=5, warmup_rounds=1)
    else:
        benchmark(fn)
        if not benchmark.enabled:  # a smoke run (benchmarks disabled): nothing to record
            return
        st = benchmark.stats.stats
        stats = {"median_s": st.median, "q1_s": st.q1, "q3_s": st.q3, "min_s": st.min, "n": st.rounds}
    bytes_moved, flops = traffic_and_flops(shape, inputs[0].element_size(), mode)
    floors = _floors_for(device)
    floor_s = common.floor_seconds(bytes_moved, flops, floors, dtype_name)
    median = stats["median_s"]
    B, H, M, N, d, dv = shape
    env = _env_for(device)
    _records.append({
        "device": env["device"],
        "device_type": device.type,
        "torch": env["torch"],
        "triton": env["triton"],
        "date": env["date"],
        "case": case,
        "shape": {"B": B, "H": H, "M": M, "N": N, "d": d, "dv": dv},
        "dtype": dtype_name,
        "impl": impl,
        "mode": mode,
        "median_ms": median * 1e3,
        "timing": dict(stats),
        "bytes": bytes_moved,
        "flops": flops,
        "GBps": bytes_moved / median / 1e9,
        "TFLOPs": flops / median / 1e12,
        "floor_ms": floor_s * 1e3,
        "floor_fraction": floor_s / median,
        "bound": "memory" if bytes_moved / floors["bandwidth_GBps"] / 1e9 >= floor_s * 0.999 else "compute",
    })
    if mode == "fwd_bwd" and impl == "fused":
        _records[-1]["fused_bwd_vs_two_fa2"] = (
            flop_model.fused_backward_flops(shape) / flop_model.flash2_backward_flops(shape)
        )
    benchmark.extra_info.update({k: _records[-1][k] for k in ("median_ms", "GBps", "TFLOPs", "floor_fraction")})


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="GPU shapes need a CUDA device (not measured on CPU machines)")
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_gpu_diff_attention(benchmark, case, impl, dtype, mode):
    _run_case(benchmark, case, GPU_CASES[case], impl, dtype, mode, torch.device("cuda"))


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl", ["fused", "literal_reference", "two_sdpa"])
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_diff_attention(benchmark, case, impl, mode):
    """CPU-sized variant (fp32): checks the benchmark code and records reference vs SDPA on the CPU."""
    _run_case(benchmark, case, CPU_CASES[case], impl, "float32", mode, torch.device("cpu"))
