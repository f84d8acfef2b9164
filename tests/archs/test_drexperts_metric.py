"""The `drexperts` pyiqa metric: creation through pyiqa, test-time protocol, gradients, input errors."""

from __future__ import annotations

import pyiqa
import pytest
import torch

from iqa_plugins.archs.drexperts_arch import DRExperts
from iqa_plugins.weights import WeightsNotFoundError


@pytest.fixture(scope="module")
def model() -> DRExperts:
    return DRExperts(pretrained=False, config="small").eval()


def test_create_metric_through_pyiqa():
    assert "drexperts" in pyiqa.list_models(metric_mode="NR")
    metric = pyiqa.create_metric("drexperts", pretrained=False, config="small", device="cpu")
    assert not metric.lower_better
    score = metric(torch.rand(2, 3, 200, 260))
    assert score.shape == (2, 1) and torch.isfinite(score).all() and score[0] != score[1]


@pytest.mark.slow
def test_as_loss_gradients_flow():
    metric = pyiqa.create_metric("drexperts", as_loss=True, pretrained=False, config="small", device="cpu",
                                 num_crops=2)
    x = torch.randn(2, 3, 384, 400, requires_grad=True)  # outside [0, 1], as pyiqa's own tests do
    metric(x).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    net = metric.net
    assert net.dsdm.alpha.grad is not None and torch.isfinite(net.dsdm.alpha.grad)
    assert net.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # trainable as in the authors' training
    assert all(p.grad is None for p in net.controller.parameters())  # DA-CLIP frozen


def test_single_crop_of_crop_sized_input_is_the_model_output(model):
    x = torch.rand(2, 3, 384, 384)
    with torch.no_grad():
        expected = model.score_crops(model._crop(x, (0, 0)))
        torch.testing.assert_close(model(x)[:, 0], expected)


@pytest.mark.slow
def test_protocol_is_deterministic_and_averages_crops():
    model = DRExperts(pretrained=False, config="small", num_crops=3, crop_seed=5).eval()
    x = torch.rand(1, 3, 390, 450)
    with torch.no_grad():
        first, second = model(x), model(x)
        image, offsets = model._prepared(x)
        manual = torch.stack([model.score_crops(model._crop(image, o)) for o in offsets]).mean()
    assert torch.equal(first, second) and len(set(offsets)) > 1
    torch.testing.assert_close(first[0, 0], manual)


def test_as_given_scores_one_view_without_the_protocol():
    model = DRExperts(pretrained=False, config={"base": "small", "img_size": 32}, num_crops=3,
                      resize=(48, 40)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        given = model(x, as_given=True)
        expected = model.score_crops(model._crop(x, (0, 0)))  # the image itself, normalised, no resize
        protocol = model(x)
    torch.testing.assert_close(given[:, 0], expected)
    assert not torch.allclose(given, protocol)  # the protocol resizes to 48 x 40 and averages three crops
    assert model.num_crops == 3 and model.resize == (48, 40)  # the arch's own protocol is left as it was


def test_small_and_grey_images(model):
    with torch.no_grad():
        small = model(torch.rand(1, 3, 100, 150))  # upscaled to a 384 short side, aspect kept
        grey = torch.rand(1, 1, 384, 384)
        torch.testing.assert_close(model(grey), model(grey.expand(-1, 3, -1, -1)))
    assert small.shape == (1, 1) and torch.isfinite(small).all()


def test_resize_from_protocol():
    model = DRExperts(pretrained=False, config="small", resize=(400, 384)).eval()
    image, offsets = model._prepared(torch.rand(1, 3, 1000, 700))
    assert tuple(image.shape[-2:]) == (400, 384) and offsets == [(8, 0)]


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.rand(3, 384, 384), ValueError, r"\(N, C, H, W\)"),
        (torch.rand(1, 4, 384, 384), ValueError, "1 or 3 channels"),
        (torch.randint(0, 255, (1, 3, 384, 384), dtype=torch.uint8), TypeError, "float"),
        ([[0.5]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(model, bad, error, match):
    with pytest.raises(error, match=match):
        model(bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="config"):
        DRExperts(pretrained=False, config="huge")
    with pytest.raises(ValueError, match="path"):
        DRExperts(pretrained=False, config="small", path="quick").score_crops(torch.zeros(1, 3, 384, 384))
    with pytest.raises(ValueError, match="num_crops"):
        DRExperts(pretrained=False, config="small", num_crops=0)


def test_missing_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsNotFoundError, match=r"DRExperts_koniq10k\.pth.*torch_home.*iqa-plugins convert"):
        pyiqa.create_metric("drexperts", device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        DRExperts(pretrained_model_path=tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pth"):
        DRExperts(pretrained_model_path=tmp_path / "junk.pth")
