"""ExIQA arch: attribute set, probabilities (Eqs. 6-7), text cache, prompt tokens, checkpoints, pyiqa use."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from iqa_plugins.archs import exiqa_arch
from iqa_plugins.archs.crops import crop_offsets
from iqa_plugins.archs.exiqa_arch import (
    ATTRIBUTES_FILE,
    ExIQA,
    clip_fingerprint,
    load_attribute_set,
    resolve_config,
    save_pretrained,
)
from iqa_plugins.data.distortions import DISTORTIONS
from iqa_plugins.weights import WeightsNotFoundError, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def model() -> ExIQA:
    m = ExIQA(pretrained=False, config="small").eval()
    with torch.no_grad():  # non-uniform convex weights, so the weighting is actually exercised
        m.weight_logits.copy_(torch.randn_like(m.weight_logits) * 2)
    return m


def test_attribute_file_is_25_kadid_distortions_with_5_effects_each():
    data = json.loads(ATTRIBUTES_FILE.read_text())
    assert data["templates"] == {"positive": "There is {a} in the photo.", "negative": "There is not {a} in the photo."}
    entries = data["distortions"]
    assert [(e["number"], e["name"], e["slug"]) for e in entries] == [(d.number, d.name, d.slug) for d in DISTORTIONS]
    phrases = [p for e in entries for p in e["attributes"]]
    assert all(len(e["attributes"]) == 5 for e in entries) and len(set(phrases)) == 125
    for e in entries:  # effects, not names: no phrase names its own distortion
        assert all(e["name"].lower() not in p.lower() for p in e["attributes"]), e["name"]
    attrs = load_attribute_set()
    pos, neg = attrs.prompts()
    assert pos[0] == f"There is {entries[0]['attributes'][0]} in the photo."
    assert neg[-1] == f"There is not {entries[-1]['attributes'][-1]} in the photo."
    assert attrs.group_index == tuple(g for g in range(25) for _ in range(5))


def test_bad_attribute_file_and_config_are_named(tmp_path):
    bad = tmp_path / "attrs.json"
    bad.write_text(json.dumps({"templates": {"positive": "no slot", "negative": "x {a}"}, "distortions": []}))
    with pytest.raises(ValueError, match="attrs.json"):
        load_attribute_set(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_config({"base": "small", "hiddden": 3})
    with pytest.raises(ValueError, match="config='huge'"):
        resolve_config("huge")


def test_probabilities_follow_equations_6_and_7(model):
    x = torch.rand(3, 3, 70, 90)
    with torch.no_grad():
        out = model.explain(x)
        emb = F.normalize(model.encode_image(model.preprocess(x)[0]), dim=-1)
    attr, dist = out["attribute_probs"], out["distortion_probs"]
    assert attr.shape == (3, 125) and dist.shape == (3, 25) and out["score"].shape == (3,)
    # Eq. 6 from scratch: 2-way softmax of the similarities to the positive and the negative prompt.
    sims = model.scale * torch.stack([emb @ model.text_pos.T, emb @ model.text_neg.T], dim=-1)
    torch.testing.assert_close(attr, sims.softmax(-1)[..., 0], atol=1e-5, rtol=1e-4)
    # Eq. 7 from scratch, distortion by distortion.
    logits = model.weight_logits.detach()
    for g in range(25):
        members = torch.arange(5 * g, 5 * g + 5)
        w = logits[members].softmax(0)
        torch.testing.assert_close(dist[:, g], attr[:, members] @ w, atol=1e-6, rtol=1e-5)
        assert torch.all(dist[:, g] >= attr[:, members].min(1).values - 1e-6)
        assert torch.all(dist[:, g] <= attr[:, members].max(1).values + 1e-6)
        torch.testing.assert_close(out["attribute_weights"][members], w)
    assert out["distortion_names"] == [d.name for d in DISTORTIONS] and len(out["attribute_names"]) == 125
    assert set(out["per_distortion"]) == set(out["distortion_names"])
    torch.testing.assert_close(out["per_distortion"]["JPEG"], dist[:, 9])
    top = dist.topk(3, dim=1)
    assert [name for name, _ in out["top_distortions"][1]] == [out["distortion_names"][i] for i in top.indices[1]]
    torch.testing.assert_close(out["score"], model(x).squeeze(1))
    assert torch.all((out["score"] > 0) & (out["score"] < 1))


def test_cached_text_features_match_a_fresh_stock_encoding(model):
    tokenizer = exiqa_arch.open_clip.get_tokenizer("ViT-B-32-quickgelu")
    pos, neg = model.attribute_set.prompts()
    with torch.no_grad():  # open_clip's own full-length encode_text, not the truncated path
        fresh_pos = model.clip.encode_text(tokenizer(pos), normalize=True)
        fresh_neg = model.clip.encode_text(tokenizer(neg), normalize=True)
    torch.testing.assert_close(model.text_pos, fresh_pos, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(model.text_neg, fresh_neg, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(model.text_diff, model.text_pos - model.text_neg)
    assert model.text_meta["clip_sha256"] == clip_fingerprint(model.clip)
    assert model.text_meta["prompts_sha256"] == model.attribute_set.sha256()


def test_zero_prompt_tokens_is_stock_clip_and_prompts_change_it():
    plain = ExIQA(pretrained=False, config="small", num_prompts=0).eval()
    assert plain.prompt_tokens is None
    pixels = plain.preprocess(torch.rand(2, 3, 64, 64))[0]
    with torch.no_grad():
        assert torch.equal(plain.encode_image(pixels), plain.clip.encode_image(pixels))
    prompted = ExIQA(pretrained=False, config={"base": "small", "num_prompts": 3}).eval()
    prompted.clip.load_state_dict(plain.clip.state_dict())
    with torch.no_grad():
        assert prompted.prompt_tokens.shape == (3, 64)
        assert not torch.allclose(prompted.encode_image(pixels), plain.clip.encode_image(pixels), atol=1e-4)


def test_input_handling(model):
    with torch.no_grad():
        grey = model(torch.rand(2, 1, 50, 120))
        same = model(torch.rand(2, 3, 33, 31))
        assert grey.shape == (2, 1) and same.shape == (2, 1)
        # short side resize + centre crop: a square image at the model size is used as is
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(model.preprocess(x), ((x - model.pixel_mean) / model.pixel_std)[None])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        model(torch.rand(2, 4, 64, 64))


def test_crops_input_protocol_averages_the_crops_attribute_probabilities(tmp_path):
    cfg = {"base": "small", "image_size": 32, "input": "crops", "num_crops": 5,
           "clip_model_cfg": {**exiqa_arch.CONFIGS["small"]["clip_model_cfg"],
                              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                             "head_width": 16}}}
    model = ExIQA(pretrained=False, config=cfg).eval()
    with torch.no_grad():
        model.weight_logits.copy_(torch.randn_like(model.weight_logits))
        x = torch.rand(2, 3, 45, 70)
        attr, dist = model.attribute_outputs(x)
        offsets = crop_offsets(45, 70, 32, 5, seed=0)
        assert len(set(offsets)) > 1  # really different crops
        per_crop = [model.attribute_outputs(x[..., t:t + 32, l:l + 32]) for t, l in offsets]
        torch.testing.assert_close(attr, torch.stack([a for a, _ in per_crop]).mean(0), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(dist, torch.stack([d for _, d in per_crop]).mean(0), atol=1e-6, rtol=1e-5)
        # An image of exactly the crop size is its own single view; a smaller one is upscaled, not rejected.
        assert model.preprocess(torch.rand(3, 3, 40, 33)).shape == (5, 3, 3, 32, 32)
        crop = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(model.preprocess(crop), ((crop - model.pixel_mean) / model.pixel_std)[None])
        assert model(torch.rand(1, 3, 20, 40)).shape == (1, 1)
        # the protocol is part of the checkpoint
        path = save_pretrained(model, tmp_path / "crops.pth")
        again = ExIQA(pretrained=False, pretrained_model_path=str(path)).eval()
        assert again.config["input"] == "crops" and again.config["num_crops"] == 5
        torch.testing.assert_close(again(x), model(x))
    with pytest.raises(ValueError, match="input='tiles'"):
        resolve_config({"base": "small", "input": "tiles"})
    with pytest.raises(ValueError, match="num_crops"):
        resolve_config({"base": "small", "num_crops": 0})
    with pytest.raises(ValueError, match="vision_cfg.image_size=64"):
        resolve_config({"base": "small", "image_size": 32})


def test_checkpoint_round_trip_through_pyiqa(model, tmp_path):
    import pyiqa

    path = save_pretrained(model, tmp_path / "exiqa_small.pth", metadata={"note": "test"})
    saved = load_checkpoint(path)
    assert saved["format"] == "iqa_plugins.exiqa/1" and "clip_state_dict" in saved  # random CLIP: stored
    assert saved["text_features"]["difference"].shape == (125, 64)
    metric = pyiqa.create_metric("exiqa", pretrained_model_path=str(path), device="cpu")
    x = torch.rand(2, 3, 72, 80)
    with torch.no_grad():
        torch.testing.assert_close(metric(x).reshape(-1), model(x).reshape(-1), atol=0, rtol=0)
    # pyiqa's own training output {"params": state_dict}
    params = tmp_path / "net_best.pth"
    save_checkpoint({"params": model.state_dict()}, params)
    again = ExIQA(pretrained=False, pretrained_model_path=str(params), config="small").eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # an explicit config that disagrees with the checkpoint is refused
    with pytest.raises(ValueError, match="differs"):
        ExIQA(pretrained_model_path=str(path), config="paper")


def test_checkpoint_text_features_are_tied_to_their_clip(model, tmp_path):
    ckpt = load_checkpoint(save_pretrained(model, tmp_path / "a.pth"))
    ckpt["clip_state_dict"]["ln_final.weight"] = ckpt["clip_state_dict"]["ln_final.weight"] + 0.5
    save_checkpoint(ckpt, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="other CLIP weights"):
        ExIQA(pretrained_model_path=str(tmp_path / "b.pth"))


def test_missing_weights_give_actionable_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="ExIQA_kadid10k.pth.*iqa-plugins train exiqa"):
        ExIQA(config="small")

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(exiqa_arch.open_clip, "create_model", offline)
    with pytest.raises(WeightsNotFoundError, match="clip_weights_path"):
        ExIQA(pretrained=False, clip_pretrained="openai")
    with pytest.raises(FileNotFoundError, match="clip_weights_path"):
        ExIQA(pretrained=False, config="small", clip_weights_path=str(tmp_path / "none.pt"))


def test_local_clip_weights_file(model, tmp_path):
    clip_file = tmp_path / "clip.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.clip.state_dict().items()}}, clip_file)
    local = ExIQA(pretrained=False, config="small", clip_weights_path=str(clip_file), clip_pretrained="tag")
    assert clip_fingerprint(local.clip) == clip_fingerprint(model.clip)
    torch.testing.assert_close(local.text_diff, model.text_diff)
    # CLIP untouched since loading from named weights: a checkpoint need not carry it
    assert local.clip_is_as_loaded()
    assert "clip_state_dict" not in load_checkpoint(save_pretrained(local, tmp_path / "c.pth"))


def test_as_loss_gradients_through_pyiqa():
    import pyiqa

    metric = pyiqa.create_metric("exiqa", pretrained=False, as_loss=True, config="small", device="cpu")
    x = torch.randn(2, 3, 96, 80, requires_grad=True)  # outside [0, 1], as pyiqa's own test
    metric(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
