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
"""

from __future__ import annotations

from pathlib import Path

import common
import pytest
import torch

RESULTS_DIR = Path(__file__).parent / "results"
PATHS = ("literal", "fast")
DTYPES = ("float32", "bfloat16")
_results: dict[str, dict] = {}


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
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    info = {
        "device": common.device_name(bench_device),
        "path": path,
        "dtype": dtype,
        "batch": batch,
        "median_s": median,
        "images_per_s": batch / median,
        "peak_memory_bytes": peak,
        "rounds": benchmark.stats.stats.rounds,
    }
    benchmark.extra_info.update(info)
    _results[f"{path}/{dtype}/batch{batch}"] = info
    _write(bench_device, bench_mode)
