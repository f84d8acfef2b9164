"""Benchmark of the ExIQA attribute scorer: compiled op vs eager and torch.compile formulations.

Run:  .venv/bin/python -m pytest benchmarks/bench_attribute_scorer.py --benchmark-enable -q
Writes benchmarks/results/<cpu|cuda>/attribute_scorer_threads<N>.json (medians and ratios to the
compiled wrapper). IQA_BENCH_THREADS=N sets torch's intra-op threads (default: torch's own); on a
shared, loaded machine one thread gives the stable comparison, since OpenMP teams that spin while
another process holds a core inflate every multi-threaded op unevenly.

Implementations, all with L2-normalised image embeddings (as ExIQA uses CLIP features):
  literal_reference   the paper's literal form (concatenated prompts, pairwise softmax, weighted sums)
  best_eager          one scaled difference matrix, one matmul, sigmoid, grouped sum as a matmul with a
                      precomputed (A, G) weight matrix (both constants built outside the timed call)
  torch_compile       torch.compile of best_eager
  compiled_wrapper    iqa_plugins.kernels.attribute_scores (public wrapper: checks + C++ op)
  compiled_op         torch.ops.iqa_plugins.attribute_scores called directly (no Python checks)
"""

from __future__ import annotations

import os
from pathlib import Path

import common
import pytest
import torch
import torch.nn.functional as F
from iqa_plugins.kernels import attribute_scores, attribute_scores_reference
from iqa_plugins.kernels.attribute_scorer import op as scorer_op
from iqa_plugins.kernels.attribute_scorer.reference import group_weight_matrix

RESULTS_DIR = Path(__file__).parent / "results"
if os.environ.get("IQA_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["IQA_BENCH_THREADS"]))
NUM_ATTR, DIM, NUM_GROUPS, SCALE = 125, 512, 25, 100.0
BATCHES = (1, 64, 1024)
IMPLS = ("literal_reference", "best_eager", "torch_compile", "compiled_wrapper", "compiled_op")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]),
]

_medians: dict[str, dict[tuple[int, str], dict]] = {}


def _best_eager(emb: torch.Tensor, scaled_diff_t: torch.Tensor, weight_matrix: torch.Tensor):
    attr = torch.sigmoid(F.normalize(emb, dim=-1) @ scaled_diff_t)
    return attr, attr @ weight_matrix


_best_eager_compiled = torch.compile(_best_eager, dynamic=False)


def _make_inputs(batch: int, device: str) -> dict:
    group = torch.randint(0, NUM_GROUPS, (NUM_ATTR,))
    group[:NUM_GROUPS] = torch.arange(NUM_GROUPS)  # every distortion owns at least one attribute
    text = F.normalize(torch.randn(2, NUM_ATTR, DIM), dim=-1)
    return {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in {
            "image_emb": torch.randn(batch, DIM),
            "text_pos": text[0],
            "text_neg": text[1],
            "group_index": group[torch.randperm(NUM_ATTR)],
            "weight_logits": torch.randn(NUM_ATTR),
        }.items()
    }


def _callable(impl: str, x: dict):
    diff = x["text_pos"] - x["text_neg"]
    if impl == "literal_reference":
        return lambda: attribute_scores_reference(
            x["image_emb"], x["text_pos"], x["text_neg"], SCALE, x["group_index"], x["weight_logits"], NUM_GROUPS, True
        )
    if impl in ("best_eager", "torch_compile"):
        scaled_diff_t = (SCALE * diff).t().contiguous()
        weight_matrix = group_weight_matrix(x["group_index"], x["weight_logits"], NUM_GROUPS)
        fn = _best_eager if impl == "best_eager" else _best_eager_compiled
        return lambda: fn(x["image_emb"], scaled_diff_t, weight_matrix)
    if impl == "compiled_wrapper":
        return lambda: attribute_scores(
            x["image_emb"], diff, None, SCALE, x["group_index"], x["weight_logits"], NUM_GROUPS, True
        )
    op = torch.ops.iqa_plugins.attribute_scores
    return lambda: op(x["image_emb"], diff, x["group_index"], x["weight_logits"], SCALE, NUM_GROUPS, True)


@pytest.fixture(scope="module", autouse=True)
def _write_results():
    yield
    for device, rows in _medians.items():
        by_batch: dict[int, dict[str, float]] = {}
        for (batch, impl), row in rows.items():
            by_batch.setdefault(batch, {})[impl] = row["median_s"]
        for (batch, impl), row in rows.items():
            ref = by_batch[batch].get("compiled_wrapper")
            row["speedup_of_compiled_wrapper_over_this"] = None if ref is None else row["median_s"] / ref
        out = {
            "benchmark": "attribute_scorer",
            **common.environment_info(device),  # device, versions, threads, load average, date
            "shape": {"A": NUM_ATTR, "D": DIM, "G": NUM_GROUPS, "dtype": "float32", "normalize": True},
            "results": [dict(batch=b, impl=i, **r) for (b, i), r in sorted(rows.items())],
        }
        slug = common.device_slug(device)
        common.write_json(RESULTS_DIR / slug / f"attribute_scorer_threads{torch.get_num_threads()}.json", out)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("device", DEVICES)
def test_attribute_scorer_speed(benchmark, device: str, batch: int, impl: str) -> None:
    if impl.startswith("compiled") and not scorer_op._has_kernel_for(device):
        pytest.skip(f"attribute_scorer extension has no {device} kernel (run `make build`)")
    x = _make_inputs(batch, device)
    fn = _callable(impl, x)
    with torch.inference_mode():
        attr, dist = fn()
        attr_ref, dist_ref = attribute_scores_reference(
            x["image_emb"], x["text_pos"], x["text_neg"], SCALE, x["group_index"], x["weight_logits"], NUM_GROUPS, True
        )
        # Same numbers as the reference (a correctness gate, not a timing assertion).
        torch.testing.assert_close(attr, attr_ref, rtol=0, atol=2e-5)
        torch.testing.assert_close(dist, dist_ref, rtol=0, atol=2e-5)
        if device == "cuda":
            benchmark(lambda: (fn(), torch.cuda.synchronize()))
        else:
            benchmark(fn)
    benchmark.extra_info.update(device=common.device_name(device), batch=batch, impl=impl, torch=torch.__version__)
    if benchmark.stats is not None and not benchmark.disabled:
        stats = benchmark.stats.stats
        _medians.setdefault(device, {})[(batch, impl)] = {
            "median_s": stats.median,
            "iqr_s": stats.iqr,
            "rounds": stats.rounds,
        }
