"""DR.Experts (paper config, random weights): the fast path against the authors' literal computation.

    .venv/bin/python -m pytest benchmarks/bench_drexperts.py --benchmark-enable -q     (or benchmarks/run.py)

Both paths score the same ImageNet-normalised 384x384 crops (`score_crops`, one crop per image, so the test-time
protocol's crop count does not multiply the numbers). `literal` runs the authors' forward as written: 577 query
rows per expert, materialised 577x577 attention matrices, the CLIP text tower encoding the 10 prompts every call,
all 12 controller zero-modules; `fast` computes the CLS row only through the fused `diff_attention` op with
folded projections and cached text features. bf16 = `torch.autocast` on the device. Peak memory is
`common.peak_memory_bytes`: on CPU the process's peak RSS (VmHWM, reset before the call) minus the RSS before it,
on CUDA the allocator's peak over what was allocated before. Batches: 1 and 64 on GPU; on a CPU, 1 and 4 (64
crops through the literal path takes minutes per round on 2 cores); CPU cases time one round after a warm-up
and the memory run, GPU cases ten. The module writes a self-describing
`drexperts.json` (environment, protocol, images/s, peak memory, fast/literal ratios) into the results folder.

Host work of the expert stage (`test_expert_stage_host_time`, `drexperts_host.json`): the fast path after the
backbone and the controller (attention of the ten experts, W_v, FFN, DDWM, score), with the ten experts as the
heads of one `diff_attention` call (`experts_as_heads`, the model's code) against one call per expert
(`per_expert_calls`, the design it replaced, kept here as the baseline). What is timed:
- CPU, with the launcher: the whole stage through the public API (the op's argument checks, custom-op dispatch
  and autograd layers, then the op's Triton launcher function and Triton's launch path on the host), with
  `offline_triton.offline_launches`: a stand-in sm_90 driver (132 multiprocessors, as an H100) whose final
  driver call only counts the launch, so no kernel runs. The model keeps the paper's 577 tokens (the key split
  of decode calls depends on it) at 4 features, one thread, batch 1 (at batch 64 the other ops' CPU
  arithmetic would dominate): the time is host work, the residual arithmetic counted in both variants alike.
- CUDA: the time to enqueue the stage on the real model and shapes (Triton's launcher included), with the GPU
  drained before each round and not waited for inside it, so kernel run time is excluded.
Per crop = per call / batch. The attention part alone (`attention/...`: everything up to the experts' attention
rows, the part the stacking changes) is timed the same way, and once more with the op's key split turned off
(`attention/experts_as_heads_unsplit`: one launch instead of the split and its combine, what the combine costs
on the host).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import common
import offline_triton
import pytest
import torch

RESULTS_DIR = Path(__file__).parent / "results"
PATHS = ("literal", "fast")
DTYPES = ("float32", "bfloat16")
_results: dict[str, dict] = {}
_host_results: dict[str, dict] = {}
# CPU host-time model: the paper's structure and 577 tokens at 4 features (arithmetic kept small).
HOST_CPU_CONFIG = {"base": "small", "backbone_kwargs": {"embed_dim": 4, "depth": 1, "num_heads": 1}}


@pytest.fixture(scope="module")
def model(bench_device, bench_mode):
    from iqa_plugins.archs.drexperts_arch import DRExperts

    config = "small" if bench_mode == "quick" else "paper"
    return DRExperts(pretrained=False, config=config, keep_text_tower=True).eval().to(bench_device)


def _write(bench_device: torch.device, bench_mode: str) -> None:
    """(Re)write the results file after every case, so an interrupted CPU run keeps what it measured."""
    ratios = {}
    for key, info in _results.items():
        if key.startswith("fast/") and key.replace("fast/", "literal/", 1) in _results:
            literal = _results[key.replace("fast/", "literal/", 1)]
            ratios[key[len("fast/"):]] = {
                "speedup": info["images_per_s"] / literal["images_per_s"],
                "peak_memory_fraction": (info["peak_memory_bytes"] / literal["peak_memory_bytes"]
                                         if info["peak_memory_bytes"] and literal["peak_memory_bytes"] else None),
            }
    out_dir = common.results_dir() or RESULTS_DIR / common.device_slug(bench_device)
    common.write_json(out_dir / "drexperts.json", {
        "schema": common.SCHEMA,
        "benchmark": "DR.Experts fast path vs the authors' literal computation",
        "mode": bench_mode,
        "environment": common.environment_info(bench_device),
        "config": "small" if bench_mode == "quick" else "paper (DeiT-III ViT-S/16-384 + DA-CLIP ViT-B/32)",
        "weights": "random (timing does not depend on weight values)",
        "input": "ImageNet-normalised 384x384 crops, one per image (score_crops)",
        "peak_memory": "CPU: peak RSS (VmHWM) minus RSS before the call; CUDA: allocator peak over allocated",
        "results": _results,
        "fast_vs_literal": ratios,
    })


@pytest.mark.parametrize("batch", (1, 4, 64))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
def test_drexperts_paths(benchmark, model, bench_device, bench_mode, path: str, dtype: str, batch: int) -> None:
    on_cpu = bench_device.type == "cpu"
    if on_cpu and batch == 64:
        pytest.skip("batch 64 on a shared 2-core CPU takes minutes per round; batch 4 stands in, 64 runs on GPUs")
    if not on_cpu and batch == 4:
        pytest.skip("GPUs run batch 1 and 64")
    size = model.arch_config["img_size"]
    crops = torch.randn(batch, 3, size, size, device=bench_device)

    def run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(bench_device.type, dtype=getattr(torch, dtype),
                                                    enabled=dtype != "float32"):
            out = model.score_crops(crops, path)
        common.synchronize(bench_device)
        return out

    out = run()  # warm-up: lazy initialisation stays out of timings and memory
    assert out.shape == (batch,) and torch.isfinite(out).all()
    peak = common.peak_memory_bytes(run, bench_device)
    rounds = 1 if bench_mode == "quick" or on_cpu else 10
    info = common.pedantic_images(benchmark, run, rounds, bench_device, batch, path=path, dtype=dtype,
                                  peak_memory_bytes=peak)
    _results[f"{path}/{dtype}/batch{batch}"] = info
    _write(bench_device, bench_mode)


def per_expert_attention(model, feats: torch.Tensor, experts: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Baseline: the CLS attention rows (B, E, D) with one H = 1 op call per expert (ten launches per crop)."""
    from iqa_plugins.kernels import diff_attention

    dsdm = model.dsdm
    grid_keys = model.norm3_hidden_feature(model._grid_tokens(hidden))
    expert_keys = model.norm3_hidden_feature(experts)
    q1 = dsdm.W_q1(experts) @ dsdm.W_k1.weight
    rows, current = [], feats
    for i in range(experts.shape[1]):
        current = model.norm_vit(current)
        q2 = dsdm.W_q2(current[:, :1]) @ dsdm.W_k2.weight
        k1 = torch.cat([expert_keys[:, i:i + 1], grid_keys], dim=1).to(q2.dtype)
        values = current.to(q2.dtype)[:, None]
        out = diff_attention(q1[:, i:i + 1, None].to(q2.dtype), k1[:, None], q2[:, None], values, values,
                             dsdm.alpha, scale=1.0 / math.sqrt(model.embed_dim))
        rows.append(out[:, 0, 0])
    return torch.stack(rows, dim=1)


def without_key_split(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """fn with the op's decode-call key split turned off: one launch, no combine (what the combine costs)."""
    from iqa_plugins.kernels.diff_attention import triton_kernels

    def call(model, f: torch.Tensor, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        policy = triton_kernels.num_splits_for
        triton_kernels.num_splits_for = lambda bh, m, n, sm_count: 1
        try:
            return fn(model, f, e, h)
        finally:
            triton_kernels.num_splits_for = policy

    return call


HOST_VARIANTS = {
    "per_expert_calls": lambda model, f, e, h: model._expert_head(f, e, per_expert_attention(model, f, e, h))["score"],
    "experts_as_heads": lambda model, f, e, h: model._expert_stage(f, e, h)["score"],
    # the attention part alone (what the stacking changes; the head after it is the same code in both)
    "attention/per_expert_calls": per_expert_attention,
    "attention/experts_as_heads": lambda model, f, e, h: model._expert_attention(f, e, h)[0],
    "attention/experts_as_heads_unsplit": without_key_split(lambda model, f, e, h: model._expert_attention(f, e, h)[0]),
}


@pytest.fixture(scope="module")
def host_model(bench_device):
    from iqa_plugins.archs.drexperts_arch import DRExperts

    config = HOST_CPU_CONFIG if bench_device.type == "cpu" else "paper"
    model = DRExperts(pretrained=False, config=config).eval().to(bench_device)
    with torch.no_grad():
        model.dsdm.alpha.fill_(0.7)  # any non-trivial alpha; the timing does not depend on it
    return model


def _write_host(bench_device: torch.device) -> None:
    out_dir = common.results_dir() or RESULTS_DIR / common.device_slug(bench_device)
    common.write_json(out_dir / "drexperts_host.json", {
        "schema": common.SCHEMA,
        "benchmark": "DR.Experts expert stage: host work per crop, one op call with the experts as heads vs one "
                     "call per expert",
        "environment": common.environment_info(bench_device),
        "method": ("Host work = CPU time of the calling thread (time.thread_time: time the thread is descheduled on "
                   "a busy machine is not counted), the variants interleaved round by round; median and min over "
                   "rounds of `iterations` calls. CPU: public API on a model of 577 tokens x 4 features, one "
                   "thread, the op's Triton launcher and Triton's host launch path run against a stand-in sm_90 "
                   "driver with 132 multiprocessors whose driver call only counts launches (no kernel runs). "
                   "CUDA: the real model and shapes and launches (the GPU drained before each round, not waited "
                   "for inside it)."),
        "results": _host_results,
    })


def _thread_seconds(fn, iterations: int, device: torch.device) -> float:
    """CPU time of this thread for `iterations` calls of fn, the device drained before (not inside)."""
    common.synchronize(device)
    start = time.thread_time()
    for _ in range(iterations):
        fn()
    return time.thread_time() - start


@pytest.mark.parametrize("batch", (1, 64))
def test_expert_stage_host_time(benchmark, monkeypatch, host_model, bench_device, batch: int) -> None:
    on_cpu = bench_device.type == "cpu"
    if on_cpu and batch == 64:
        pytest.skip("at batch 64 the CPU arithmetic of the other ops would dominate; GPUs run it")
    model = host_model
    tokens = 1 + math.prod(model.backbone.patch_embed.grid_size)
    width = model.controller.transformer.transformer.width
    grid = model.controller.grid_size
    gen = torch.Generator().manual_seed(batch)
    feats, experts, hidden = (torch.randn(*shape, generator=gen).to(bench_device) for shape in (
        (batch, tokens, model.embed_dim), (batch, 10, model.embed_dim), (batch, 1 + grid[0] * grid[1], width)))
    calls = {name: (lambda fn=fn: fn(model, feats, experts, hidden)) for name, fn in HOST_VARIANTS.items()}
    iterations, rounds = 20, 15
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    launches: dict[str, float] = {}
    with contextlib.ExitStack() as stack, torch.inference_mode():
        # The baseline is genuine: it computes the model's own score.
        torch.testing.assert_close(calls["per_expert_calls"](), calls["experts_as_heads"](), rtol=1e-4, atol=1e-5)
        for name in ("attention/experts_as_heads", "attention/experts_as_heads_unsplit"):
            torch.testing.assert_close(calls["attention/per_expert_calls"](), calls[name](), rtol=1e-4, atol=1e-5)
        counter = None
        if on_cpu:
            from iqa_plugins.kernels.diff_attention import reference, triton_kernels

            # CPU tensors take the Triton launcher (not the reference) on a stand-in H100
            monkeypatch.setattr(reference, "forward_with_stats", triton_kernels.forward)
            h100 = triton_kernels.Target(triton_kernels.SMEM_LIMITS[(9, 0)],
                                         offline_triton.H100_PROPERTIES["multiprocessor_count"], hopper=True)
            monkeypatch.setattr(triton_kernels.Target, "of", staticmethod(lambda device: h100))
            cache = common.REPO_ROOT / "build" / "triton-offline-cache"
            counter = stack.enter_context(offline_triton.offline_launches(cache))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # host work is single-threaded; a busy machine's thread wake-ups are not
            stack.callback(torch.set_num_threads, threads)
        for name, fn in calls.items():  # warm-up (Triton compiles and autotunes on first use)
            before = counter.launches if counter else 0
            _thread_seconds(fn, 2, bench_device)
            if counter:
                launches[name] = (counter.launches - before) / 2
        for _ in range(rounds):
            for name, fn in calls.items():
                seconds[name].append(_thread_seconds(fn, iterations, bench_device) / iterations)
        benchmark.pedantic(lambda: _thread_seconds(calls["experts_as_heads"], iterations, bench_device),
                           rounds=rounds, iterations=1)
    common.synchronize(bench_device)
    info = {"device": common.device_name(bench_device), "batch": batch, "rounds": rounds, "iterations": iterations}
    for name, values in seconds.items():
        info[name] = {"host_s_per_call_median": statistics.median(values), "host_s_per_call_min": min(values),
                      "host_s_per_crop_median": statistics.median(values) / batch}
        if name in launches:
            info[name]["triton_launches_per_call"] = launches[name]
    for part in ("", "attention/"):
        for stat in ("median", "min"):
            info[f"{part}ratio_per_expert_over_heads_{stat}"] = (
                info[f"{part}per_expert_calls"][f"host_s_per_call_{stat}"]
                / info[f"{part}experts_as_heads"][f"host_s_per_call_{stat}"])
    for stat in ("median", "min"):
        info[f"attention/ratio_per_expert_over_heads_unsplit_{stat}"] = (
            info["attention/per_expert_calls"][f"host_s_per_call_{stat}"]
            / info["attention/experts_as_heads_unsplit"][f"host_s_per_call_{stat}"])
    benchmark.extra_info.update({"ratio_per_expert_over_heads": info["ratio_per_expert_over_heads_median"]})
    _host_results[f"batch{batch}"] = info
    _write_host(bench_device)
