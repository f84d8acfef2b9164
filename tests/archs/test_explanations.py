"""The explain() contract shared by DR.Experts and ExIQA, its output columns, and the metrics' score scales."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iqa_plugins.archs.daclip import DISTORTION_PROMPTS
from iqa_plugins.archs.drexperts_arch import DRExperts
from iqa_plugins.archs.drexperts_arch import save_pretrained as save_drexperts
from iqa_plugins.archs.exiqa_arch import ExIQA
from iqa_plugins.archs.exiqa_arch import save_pretrained as save_exiqa
from iqa_plugins.explanations import ABSENT_THRESHOLD, explanation_columns, parse_score_range, score_scale

SHARED_KEYS = {"score", "scale", "distortion_names", "per_distortion", "top_indices", "top_distortions"}


@pytest.fixture(scope="module")
def exiqa() -> ExIQA:
    return ExIQA(pretrained=False, config="small").eval()


@pytest.fixture(scope="module")
def drexperts() -> DRExperts:
    return DRExperts(pretrained=False, config={"base": "small", "img_size": 64}).eval()


def test_both_models_share_the_contract(exiqa, drexperts):
    x = torch.rand(2, 3, 80, 96)
    with torch.no_grad():
        outs = {"exiqa": exiqa.explain(x, top_k=4), "drexperts": drexperts.explain(x, top_k=4)}
    for name, out in outs.items():
        assert SHARED_KEYS <= set(out), name
        assert out["score"].shape == (2,) and out["top_indices"].shape == (2, 4)
        assert list(out["per_distortion"]) == out["distortion_names"]
        values = torch.stack([out["per_distortion"][n] for n in out["distortion_names"]], 1)
        assert torch.equal(out["top_indices"], values.topk(4, dim=1).indices)
        for b in range(2):  # the listed values are the ranked ones, largest first
            listed = [v for _, v in out["top_distortions"][b]]
            assert listed == sorted(listed, reverse=True)
            for (label, v), i in zip(out["top_distortions"][b], out["top_indices"][b].tolist()):
                assert label == out["distortion_names"][i] and v == pytest.approx(float(values[b, i]))
        assert set(out["scale"]) == {"score_range", "lower_better", "meaning"}


def test_drexperts_shares_are_the_raw_weights_over_their_sum(drexperts):
    with torch.no_grad():
        out = drexperts.explain(torch.rand(3, 3, 64, 64))
    weights = out["expert_weights"]
    torch.testing.assert_close(out["weight_sum"], weights.sum(1))
    torch.testing.assert_close(out["expert_shares"], weights / weights.sum(1, keepdim=True))
    torch.testing.assert_close(out["expert_shares"].sum(1), torch.ones(3))
    columns = explanation_columns(out)
    assert list(columns) == [f"share:{w}" for w in DISTORTION_PROMPTS] + [f"weight:{w}" for w in DISTORTION_PROMPTS]
    torch.testing.assert_close(columns["weight:hazy"], weights[:, DISTORTION_PROMPTS.index("hazy")])


def _steer(model: ExIQA, image: torch.Tensor, present: list[int]) -> None:
    """Text features that put every attribute of the ``present`` distortions at P ~ 1 and all others at P ~ 0
    for ``image``: the difference vectors point along (or against) its normalised embedding."""
    with torch.no_grad():
        emb = F.normalize(model.encode_image(model.preprocess(image)[0]), dim=-1)[0]
        signs = torch.tensor([1.0 if g in present else -1.0 for g in model.attribute_set.group_index])
        model.text_diff.copy_(signs[:, None] * emb[None] * (30.0 / model.scale))


def test_exiqa_lists_no_distortion_for_a_clean_image_and_only_present_ones_otherwise():
    model = ExIQA(pretrained=False, config="small").eval()
    image = torch.rand(1, 3, 64, 64)
    _steer(model, image, present=[])
    with torch.no_grad():
        clean = model.explain(image, top_k=3)
    assert clean["distortion_probs"].max() < ABSENT_THRESHOLD
    assert clean["top_distortions"] == [[]] and clean["top_attributes"] == [[]]
    assert clean["top_indices"].shape == (1, 3)  # the ranking itself is still there

    _steer(model, image, present=[9, 20])  # JPEG, Pixelate
    with torch.no_grad():
        out = model.explain(image, top_k=3)
    assert sorted(name for name, _ in out["top_distortions"][0]) == ["JPEG", "Pixelate"]
    assert all(p > 0.9 for _, p in out["top_distortions"][0])
    assert len(out["top_attributes"][0]) == 3
    for phrase, distortion, p in out["top_attributes"][0]:
        i = out["attribute_names"].index(phrase)
        assert distortion in ("JPEG", "Pixelate") and out["distortion_names"][out["attribute_distortions"][i]] == distortion
        assert p == pytest.approx(float(out["attribute_probs"][0, i]))
    columns = explanation_columns(out)
    assert len(columns) == 25 + 125
    assert float(columns["p:JPEG"][0]) > 0.9 and float(columns["p:Gaussian blur"][0]) < ABSENT_THRESHOLD
    assert float(columns["attr:" + out["attribute_names"][0]][0]) == pytest.approx(float(out["attribute_probs"][0, 0]))


def test_explanation_columns_reject_other_dicts():
    with pytest.raises(TypeError, match="not a plugin explanation"):
        explanation_columns({"score": torch.zeros(2), "per_distortion": {}})


@pytest.mark.parametrize(("text", "expected"), [
    ("0, 1", [0.0, 1.0]), ("~0, ~100", [0.0, 100.0]), ("~-1, ~0.1", [-1.0, 0.1]), ("1, 5", [1.0, 5.0]),
    ("0, ~", None), ("~0, ~", None), ("0 to 1", None), (None, None), ([0, 10], [0.0, 10.0]),
])
def test_parse_score_range(text, expected):
    assert parse_score_range(text) == expected


def test_checkpoints_state_their_own_scale(tmp_path, drexperts, exiqa):
    drexperts.protocol = {**drexperts.protocol, "mos_range": [0.0, 1.0], "dataset": "demo",
                          "score_meaning": "mean of MS-SSIM, VIF and FSIM"}
    save_drexperts(drexperts, tmp_path / "d.pth")
    loaded = DRExperts(pretrained_model_path=tmp_path / "d.pth")
    assert loaded.score_scale() == {"score_range": [0.0, 1.0], "lower_better": False,
                                     "meaning": "mean of MS-SSIM, VIF and FSIM"}
    assert DRExperts(pretrained=False, config={"base": "small", "img_size": 64}).score_scale()["score_range"] is None

    save_exiqa(exiqa, tmp_path / "e.pth", metadata={"score_meaning": "synthetic labels"})
    assert ExIQA(pretrained_model_path=str(tmp_path / "e.pth")).score_scale() == {
        "score_range": [0.0, 1.0], "lower_better": False, "meaning": "synthetic labels"}


def test_score_scale_of_any_pyiqa_metric_falls_back_to_the_registry(drexperts):
    import pyiqa  # noqa: F401  (registers the plugin)

    class Metric:  # what score_scale reads of a pyiqa InferenceModel
        def __init__(self, name, net, lower_better):
            self.metric_name, self.net, self.lower_better = name, net, lower_better

    assert score_scale(Metric("pi", torch.nn.Identity(), True)) == {
        "score_range": None, "lower_better": True, "meaning": "pyiqa's registered range for pi: ~0, ~"}
    assert score_scale(Metric("topiq_nr", torch.nn.Identity(), False))["score_range"] == [0.0, 1.0]
    assert score_scale(Metric("drexperts", drexperts, False)) == drexperts.score_scale()


def test_registered_ranges_parse_and_hold_for_the_default_weights():
    from iqa_plugins.archs.pretrained_cfgs import DREXPERTS
    from iqa_plugins.registration import METRICS

    # drexperts' default weights are KonIQ-10k's; ExIQA's sigmoid scores lie in (0, 1) whatever the weights
    assert parse_score_range(METRICS["drexperts"]["score_range"]) == DREXPERTS.variant("koniq10k").protocol["mos_range"]
    for tag, cfg in DREXPERTS.variants.items():  # every variant's range is its data set's MOS scale
        assert parse_score_range(METRICS[f"drexperts-{tag}"]["score_range"]) == cfg.protocol["mos_range"]
    assert parse_score_range(METRICS["exiqa"]["score_range"]) == [0.0, 1.0]
    assert not METRICS["drexperts"]["lower_better"] and not METRICS["exiqa"]["lower_better"]
