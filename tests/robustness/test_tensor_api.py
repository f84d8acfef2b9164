"""The plugin metrics' tensor API through pyiqa.create_metric: bad batches get the metric's own clear error
before pyiqa's generic check can crash on them; every float precision and fp16 1.0 are accepted."""

from __future__ import annotations

import pytest
import torch

NAMES = ["drexperts", "exiqa"]
WHO = {"drexperts": "DR.Experts", "exiqa": "ExIQA"}


@pytest.fixture(scope="module")
def metrics():
    import pyiqa

    torch.manual_seed(0)
    built = {}
    for name in NAMES:
        built[name] = pyiqa.create_metric(name, pretrained=False, config="small", device="cpu")
        built[f"{name}-loss"] = pyiqa.create_metric(name, pretrained=False, config="small", device="cpu",
                                                    as_loss=True)
    return built


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: torch.rand(0, 3, 64, 64), ValueError, "empty batch"),
        (lambda: torch.rand(2, 3, 0, 64), ValueError, "empty batch"),
        (lambda: torch.rand(1, 3, 64, 64, device="meta"), ValueError, "'meta' device"),
        (lambda: torch.rand(1, 3, 64, 64) * 255, ValueError, "divide by 255"),
        (lambda: torch.rand(1, 3, 64, 64) - 0.5, ValueError, "must lie in [0, 1]"),
        (lambda: torch.full((1, 3, 64, 64), float("nan")), ValueError, "NaN or infinite"),
        (lambda: torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), TypeError, "float tensor"),
        (lambda: torch.rand(1, 4, 64, 64), ValueError, "1 or 3 channels"),
    ],
)
def test_bad_batches_get_the_metrics_own_error(metrics, name, make, error, message):
    with pytest.raises(error, match=f"{WHO[name]}: .*{message}".replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        metrics[name](make())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_precision_scores_like_fp32(metrics, name, dtype):
    x = torch.rand(2, 3, 64, 72)
    x[0, :, 0, 0] = 1.0  # exactly 1.0, representable in every precision
    low = x.to(dtype)
    want = metrics[name](low.float())
    got = metrics[name](low)
    assert got.shape == (2, 1) and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_loss_rejects_0_255_but_takes_values_just_outside_0_1(metrics, name):
    loss = metrics[f"{name}-loss"]
    with pytest.raises(ValueError, match="looks like 0-255 pixel values"):
        loss(torch.rand(1, 3, 64, 64) * 255)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)  # pyiqa's own loss test input
    loss(x).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_other_metrics_keep_pyiqas_check():
    import pyiqa

    with pytest.raises(AssertionError, match="normalized to"):
        pyiqa.create_metric("piqe", device="cpu")(torch.rand(1, 3, 64, 64) * 2)
