"""pyiqa's own no-reference metrics timed on the same inputs and device as DR.Experts and ExIQA: the peers a user
would otherwise pick (`liqe`, `clipiqa`, `topiq_nr`).

    .venv/bin/python -m pytest benchmarks/bench_peers.py --benchmark-enable -q    (or benchmarks/run.py)

Weights: always random, so the suite never downloads and times the same everywhere; timing does not depend on
weight values. topiq_nr is built with `pretrained=False, backbone_pretrain=False`. liqe and clipiqa load OpenAI
CLIP through pyiqa's `clip_model.load`, which downloads; here their CLIP is built by pyiqa's own `CLIP` class with
the published ViT-B/32 (liqe) and RN50 (clipiqa) hyper-parameters and random initialisation, and liqe's
text-feature cache is redirected to a temporary folder so random features never land in the user's pyiqa cache.
Each case records images/s (batch / median time) and peak memory; bf16 runs under `torch.autocast` (what a pyiqa
user would do: the peers have no bf16 mode of their own).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from unittest import mock

import common
import pytest
import torch

PEERS = ("liqe", "clipiqa", "topiq_nr")
# CI's quick mode checks the path with the cheapest peer: the CLIP peers take ~10 s each to build and run on 2 cores
QUICK_PEERS = ("topiq_nr",)
BATCHES = (1, 64)
DTYPES = ("float32", "bfloat16")
NOTE = "random weights (built offline; timing does not depend on weight values)"
# OpenAI CLIP's published sizes: embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers
CLIP_SIZES = {
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
}


def random_clip(name: str, device: str | torch.device = "cpu", *args, **kwargs) -> torch.nn.Module:
    """Stands in for pyiqa's `clip_model.load`: the same CLIP architecture with random weights, no download."""
    from pyiqa.archs.clip_model import CLIP

    if name not in CLIP_SIZES:
        raise ValueError(f"no offline CLIP size for backbone {name!r}; known: {sorted(CLIP_SIZES)}")
    return CLIP(*CLIP_SIZES[name]).float().eval().to(device)


@contextlib.contextmanager
def _offline_clip() -> Iterator[None]:
    from pyiqa.archs import clipiqa_arch, liqe_arch

    with tempfile.TemporaryDirectory() as cache, contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(liqe_arch, "load", random_clip))
        stack.enter_context(mock.patch.object(clipiqa_arch, "load", random_clip))
        stack.enter_context(mock.patch.object(liqe_arch, "DEFAULT_CACHE_DIR", cache))
        yield


def build_peer(name: str, device: torch.device) -> torch.nn.Module:
    """pyiqa's metric `name` with random weights, ready for inference on device (no network access)."""
    import pyiqa

    kwargs = {"topiq_nr": {"pretrained": False, "backbone_pretrain": False}, "liqe": {"pretrained": False}}
    with _offline_clip():
        return pyiqa.create_metric(name, device=device, **kwargs.get(name, {}))


@pytest.fixture(scope="module")
def peers() -> dict[str, torch.nn.Module]:
    return {}  # built on first use: quick mode runs few of them


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("peer", PEERS)
def test_peer_speed(benchmark, peers, bench_device, bench_mode, peer: str, batch: int, dtype: str) -> None:
    if bench_device.type == "cpu" and batch > 1 and bench_mode == "full":
        pytest.skip("batch 64 on a CPU takes minutes per forward; measured on GPUs")
    if bench_mode == "quick" and peer not in QUICK_PEERS:
        pytest.skip(f"quick mode: only {', '.join(QUICK_PEERS)} runs (building a CLIP peer takes ~10 s on 2 cores)")
    if bench_device.type == "cpu" and dtype == "bfloat16":
        pytest.skip("bf16 on CPUs without bf16 matrix units is slower than fp32; measured on GPUs")
    if peer not in peers:
        peers[peer] = build_peer(peer, bench_device)
    metric = peers[peer]
    x, height, width = common.random_images(batch, bench_mode, bench_device)
    autocast = torch.autocast(bench_device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    outputs: list[torch.Tensor] = []

    def score() -> None:
        with torch.inference_mode(), autocast:
            outputs.append(metric(x))
        common.synchronize(bench_device)

    # the first call measures peak memory and keeps lazy initialisation (cuDNN plans, caches) out of the timings
    peak = common.peak_memory_bytes(score, bench_device)
    out = outputs.pop()
    assert out.shape[0] == batch and torch.isfinite(out).all(), f"{peer} returned {out}"
    # whole-model calls take seconds on a CPU: a fixed, small number of rounds keeps the suite within minutes
    rounds = 1 if bench_mode == "quick" else (3 if bench_device.type == "cpu" else 10)
    benchmark.pedantic(lambda: (score(), outputs.clear()), rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        device=common.device_name(bench_device),
        batch=batch,
        dtype=dtype,
        height=height,
        width=width,
        peak_memory_bytes=peak,
        weights="random",
        note=NOTE,
    )
