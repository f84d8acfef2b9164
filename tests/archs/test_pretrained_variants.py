"""The trained variants of each model (``drexperts-koniq``, ``exiqa-tid``, ...): one table gives their pyiqa
metrics, weights files, protocols and cache installation."""

from __future__ import annotations

import pyiqa
import pytest
import torch

from iqa_plugins.archs.drexperts_arch import DEFAULT_WEIGHTS, DRExperts, save_pretrained
from iqa_plugins.archs.pretrained_cfgs import DREXPERTS, EXIQA
from iqa_plugins.metric_factory import create_metric
from iqa_plugins.train.runner import install_to_cache
from iqa_plugins.weights import WeightsNotFoundError

SMALL = {"base": "small", "img_size": 32}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = tmp_path / "torch_home" / "hub" / "pyiqa"
    folder.mkdir(parents=True)
    return folder


def test_every_variant_is_a_pyiqa_metric_loading_its_own_file():
    listed = pyiqa.list_models(metric_mode="NR")
    expected = {
        "drexperts-koniq": "DRExperts_koniq10k.pth", "drexperts-livec": "DRExperts_livec.pth",
        "drexperts-spaq": "DRExperts_spaq.pth", "drexperts-flive": "DRExperts_livefb.pth",
        "drexperts-bid": "DRExperts_bid.pth", "exiqa-kadid": "ExIQA_kadid10k.pth", "exiqa-tid": "ExIQA_tid2013.pth",
        "exiqa-csiq": "ExIQA_csiq.pth", "exiqa-live": "ExIQA_live.pth",
    }
    for metric, filename in expected.items():
        assert metric in listed
        model, tag = metric.split("-")
        table = DREXPERTS if model == "drexperts" else EXIQA
        assert table.variants[tag].weights.filename == filename
    assert DEFAULT_WEIGHTS.filename == "DRExperts_koniq10k.pth" == DREXPERTS.variant().weights.filename


@pytest.mark.parametrize(("metric", "filename", "how"), [
    ("drexperts-bid", "DRExperts_bid.pth", "--dataset bid"),
    ("drexperts-flive", "DRExperts_livefb.pth", "--dataset livefb"),
    ("exiqa-tid", "ExIQA_tid2013.pth", "--preset tid2013"),
])
def test_a_missing_variant_names_its_file_and_how_to_make_it(cache, metric, filename, how):
    with pytest.raises(WeightsNotFoundError, match=rf"{filename}.*{how}"):
        pyiqa.create_metric(metric, device="cpu")


def test_variant_loads_its_weights_and_protocol_while_the_default_stays_missing(cache):
    torch.manual_seed(0)
    model = DRExperts(pretrained=False, config=SMALL).eval()
    protocol = {**DREXPERTS.variant("livec").protocol, "num_crops": 2, "dataset": "livec", "lower_better": False}
    save_pretrained(model, cache / "DRExperts_livec.pth", protocol=protocol)
    x = torch.rand(1, 3, 40, 48)
    direct = DRExperts(pretrained="livec", config=SMALL).eval()  # the arch option the metric passes
    for metric in (pyiqa.create_metric("drexperts-livec", device="cpu"), create_metric("drexperts-livec", "cpu")):
        assert metric.net.protocol == protocol and metric.net.num_crops == 2 and metric.net.resize is None
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in metric.net.state_dict().items())
        with torch.no_grad():
            torch.testing.assert_close(metric(x), direct(x))
    with pytest.raises(WeightsNotFoundError, match="DRExperts_koniq10k.pth"):
        pyiqa.create_metric("drexperts", device="cpu")  # the default is another file


def test_variants_are_named_by_tag_or_data_set_and_unknown_names_are_refused():
    assert DREXPERTS.variant("flive") is DREXPERTS.variant("livefb")
    assert DREXPERTS.variant("koniq").protocol == {"resize": [512, 384], "num_crops": 15, "mos_range": [0.0, 100.0]}
    assert DREXPERTS.variant("bid").score_range == "~0, ~5"
    with pytest.raises(ValueError, match=r"'koniq11k'.*koniq10k \(drexperts-koniq\)"):
        DRExperts(pretrained="koniq11k", config=SMALL)


def test_install_to_cache_replaces_the_trained_variants_file(cache, tmp_path):
    trained = save_pretrained(DRExperts(pretrained=False, config=SMALL), tmp_path / "drexperts.pth")
    assert install_to_cache(trained, "DRExperts", "flive") == cache / "DRExperts_livefb.pth"
    assert install_to_cache(trained, "DRExperts") == cache / "DRExperts_koniq10k.pth"
    assert (cache / "DRExperts_livefb.pth").read_bytes() == trained.read_bytes()
    with pytest.raises(ValueError, match="no trained variant 'kadid10k'"):
        install_to_cache(trained, "DRExperts", "kadid10k")
