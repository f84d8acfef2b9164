"""ExIQA (paper config: CLIP ViT-B/32, 100 prompt tokens, random weights) against pyiqa's `liqe` and `clipiqa`,
images/s on the same device and the same inputs.

    .venv/bin/python -m pytest benchmarks/bench_exiqa.py --benchmark-enable -q     (or benchmarks/run.py)

Protocols differ, and the numbers include that difference: ExIQA resizes the short side to 224 and scores the
central 224x224 crop once (one ViT-B/32 pass with 50 + 100 tokens, then the attribute scorer and a small MLP);
liqe scores 15 random 224x224 patches per image with ViT-B/32 (15 passes of 50 tokens, plus its 495 text
features); clipiqa runs CLIP RN50 on the full image at its native size. Weights are random for all three
(nothing can be downloaded; speed does not depend on weight values): ExIQA via `pretrained=False`, the peers as in
`bench_peers.py` (pyiqa's CLIP class with the published sizes). Besides pytest-benchmark's own output, the module
writes a self-describing `exiqa.json` (environment, protocol, images/s per model) into the results folder.
"""

from __future__ import annotations

from pathlib import Path

import common
import pytest
import torch
from bench_peers import build_peer

RESULTS_DIR = Path(__file__).parent / "results"
MODELS = ("exiqa", "liqe", "clipiqa")
PROTOCOL = {
    "exiqa": "short side -> 224 (bicubic, antialiased), central 224x224 crop, one ViT-B/32 pass (50 patch/CLS + "
    "100 prompt tokens), compiled attribute scorer, MLP",
    "liqe": "15 random 224x224 patches per image, ViT-B/32 per patch, 495 text features",
    "clipiqa": "full image at native resolution, CLIP RN50, 2 antonym prompts",
}
_results: dict[str, dict] = {}


def _build(name: str, device: torch.device) -> torch.nn.Module:
    if name == "exiqa":
        import pyiqa

        from iqa_plugins import registration

        registration.register()
        return pyiqa.create_metric("exiqa", pretrained=False, config="paper", device=device)
    return build_peer(name, device)


@pytest.fixture(scope="module")
def built() -> dict[str, torch.nn.Module]:
    return {}


@pytest.fixture(scope="module", autouse=True)
def record(bench_device, bench_mode):
    yield
    if not _results:
        return
    from iqa_plugins.kernels import attribute_scores_backend

    out_dir = common.results_dir() or RESULTS_DIR / common.device_slug(bench_device)
    common.write_json(
        out_dir / "exiqa.json",
        {
            "schema": common.SCHEMA,
            "benchmark": "exiqa end-to-end images/s vs pyiqa peers",
            "mode": bench_mode,
            "environment": common.environment_info(bench_device),
            "weights": "random for every model (timing does not depend on weight values)",
            "exiqa_config": "paper (open_clip ViT-B-32-quickgelu, 100 prompt tokens, 125 attributes)",
            "attribute_scorer_backend": attribute_scores_backend(bench_device),
            "protocol": PROTOCOL,
            "results": _results,
        },
    )


@pytest.mark.parametrize("batch", (1, 8))
@pytest.mark.parametrize("model", MODELS)
def test_exiqa_vs_peers_speed(benchmark, built, bench_device, bench_mode, model: str, batch: int) -> None:
    if bench_device.type == "cpu" and batch > 1 and bench_mode == "full":
        pytest.skip("batch 8 on a shared 2-core CPU takes too long per round; measured on GPUs")
    if model not in built:
        built[model] = _build(model, bench_device)
    metric = built[model]
    x, height, width = common.random_images(batch, bench_mode, bench_device)

    def score() -> torch.Tensor:
        with torch.inference_mode():
            out = metric(x)
        common.synchronize(bench_device)
        return out

    out = score()  # lazy initialisation (peers' text features) stays out of the timings
    assert out.shape[0] == batch and torch.isfinite(out).all(), f"{model} returned {out}"
    info = common.pedantic_images(benchmark, score, 3 if bench_mode == "full" else 1, bench_device, batch,
                                  height=height, width=width, protocol=PROTOCOL[model], weights="random")
    _results[f"{model}/batch{batch}"] = info
