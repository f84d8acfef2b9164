"""DR.Experts: official checkpoint layouts, conversion, literal vs fast path, explanations.

The official key layout is generated here from the layout rules (the authors'
models/deit.py, models/din.py, DA-CLIP's daclip_model.py), independently of the converter under test, and
a functional re-implementation of the authors' forward (DeiT-repo names, LND CLIP layout) that reads the
official state dict directly serves as the oracle for "a random official checkpoint reproduces the model".
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from iqa_plugins import convert_command
from iqa_plugins.archs.daclip import DISTORTION_PROMPTS
from iqa_plugins.archs.drexperts_arch import CONFIGS, DRExperts, save_pretrained
from iqa_plugins.archs.drexperts_convert import (
    COMPACT_FORMAT,
    CheckpointKeyError,
    convert_official,
    read_checkpoint,
)
from iqa_plugins.weights import load_checkpoint

# Layout dimensions: (backbone dim, depth, heads, grid tokens), (vision width, layers, heads, grid),
# CLIP embed, (text width, layers, heads, context, vocab), DDWM hidden sizes.
SMALL = {"D": 64, "depth": 2, "heads": 2, "G": 576, "Wc": 64, "Lc": 2, "Hc": 2, "gc": 7, "Ec": 64,
         "Wt": 64, "Lt": 2, "Ht": 2, "ctx": 77, "vocab": 49408, "ddwm": (32, 16, 8)}
PAPER = {"D": 384, "depth": 12, "heads": 6, "G": 576, "Wc": 768, "Lc": 12, "Hc": 12, "gc": 7, "Ec": 512,
         "Wt": 512, "Lt": 12, "Ht": 8, "ctx": 77, "vocab": 49408, "ddwm": (384, 32, 16)}


def official_layout(d: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the authors' DR.Experts state dict (870 keys for the paper dims)."""
    D, Wc, Wt, Ec = d["D"], d["Wc"], d["Wt"], d["Ec"]
    s: dict[str, tuple[int, ...]] = {}

    def ln(name, width):
        s[name + ".weight"], s[name + ".bias"] = (width,), (width,)

    def lin(name, out, inp):
        s[name + ".weight"], s[name + ".bias"] = (out, inp), (out,)

    b = "backbone."
    s[b + "cls_token"], s[b + "pos_embed"] = (1, 1, D), (1, d["G"], D)
    s[b + "patch_embed.proj.weight"], s[b + "patch_embed.proj.bias"] = (D, 3, 16, 16), (D,)
    for i in range(d["depth"]):
        p = f"{b}blocks.{i}."
        ln(p + "norm1", D), lin(p + "attn.qkv", 3 * D, D), lin(p + "attn.proj", D, D), ln(p + "norm2", D)
        lin(p + "mlp.fc1", 4 * D, D), lin(p + "mlp.fc2", D, 4 * D)
        s[p + "gamma_1"], s[p + "gamma_2"] = (D,), (D,)
    ln(b + "norm", D), lin(b + "head", 1, D)

    def resblocks(prefix, width, layers):
        for i in range(layers):
            p = f"{prefix}resblocks.{i}."
            ln(p + "ln_1", width)
            s[p + "attn.in_proj_weight"], s[p + "attn.in_proj_bias"] = (3 * width, width), (3 * width,)
            lin(p + "attn.out_proj", width, width), ln(p + "ln_2", width)
            lin(p + "mlp.c_fc", 4 * width, width), lin(p + "mlp.c_proj", width, 4 * width)

    def visual(prefix, transformer):
        s[prefix + "class_embedding"], s[prefix + "positional_embedding"] = (Wc,), (d["gc"] ** 2 + 1, Wc)
        s[prefix + "proj"], s[prefix + "conv1.weight"] = (Wc, Ec), (Wc, 3, 32, 32)
        ln(prefix + "ln_pre", Wc), ln(prefix + "ln_post", Wc)
        resblocks(prefix + transformer, Wc, d["Lc"])

    visual("head.clip.visual.", "transformer.")
    visual("head.visual.", "transformer.")
    visual("head.visual_control.", "transformer.transformer.")
    for i in range(d["Lc"]):
        lin(f"head.visual_control.transformer.zero_modules.{i}", Wc, Wc)
    t = "head.clip."
    s[t + "positional_embedding"], s[t + "text_projection"] = (d["ctx"], Wt), (Wt, Ec)
    s[t + "logit_scale"], s[t + "token_embedding.weight"] = (), (d["vocab"], Wt)
    ln(t + "ln_final", Wt), resblocks(t + "transformer.", Wt, d["Lt"])
    s["head.logit_scale"] = ()

    for name in ("W_q1", "W_q2", "W_k1", "W_k2"):
        lin("diff_attention." + name, D, D)
    lin("diff_attention.W_v", D, 2 * D)
    s["diff_attention.alpha"], s["lamda_init"] = (), (1, D)
    ln("attn_norm", D), lin("group_attn_ffn.0", D, D), lin("group_attn_ffn.2", D, D), ln("norm1", Ec)
    lin("L_hidden", D, Wc), lin("score", 1, D), ln("norm_vit", D), ln("norm3_hidden_feature", D)
    for i in range(10):
        lin(f"linears.{i}", D, Ec)
    fc, width = "decoder.AttentionActivate.active_unit.fc.", 3 * D
    for j, size in enumerate(d["ddwm"]):
        lin(f"{fc}{2 * j}", size, width)
        s[f"{fc}{2 * j + 1}.weight"] = (1,)
        width = size
    lin(f"{fc}{2 * len(d['ddwm'])}", 1, width)
    lin("L1", D, Ec), lin("L2", 1, d["G"])
    return s


def random_official_state(d: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random, non-trivial weights in the official layout (zero-init parts perturbed so nothing vanishes)."""
    state = {}
    for name, shape in official_layout(d).items():
        if len(shape) >= 2 and name.endswith(("weight", "proj")) or name.endswith("_weight"):
            fan_in = math.prod(shape[1:]) if name.endswith("weight") else shape[0]
            value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        elif name.endswith(".weight") and any(k in name for k in ("norm", "ln_")):
            value = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            value = 0.2 * torch.randn(shape, generator=generator)
        state[name] = value
    state["diff_attention.alpha"] = torch.tensor(0.7)
    return state


# ---------------------------------------------------------------------------------------------------------
# An independent functional version of the authors' forward, reading the official names.


def _ln(x, sd, name, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _lin(x, sd, name):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def _clip_blocks(x_lnd, sd, prefix, layers, heads, mask=None, zero_prefix=None):
    hiddens = []
    for i in range(layers):
        p = f"{prefix}resblocks.{i}."
        y = _ln(x_lnd, sd, p + "ln_1")
        attn = F.multi_head_attention_forward(
            y, y, y, y.shape[-1], heads, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"], None, None,
            False, 0.0, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"], need_weights=False,
            attn_mask=mask)[0]
        x_lnd = x_lnd + attn
        x_lnd = x_lnd + _lin(F.gelu(_lin(_ln(x_lnd, sd, p + "ln_2"), sd, p + "mlp.c_fc")), sd, p + "mlp.c_proj")
        if zero_prefix is not None:
            hiddens.append(_lin(x_lnd, sd, f"{zero_prefix}{i}"))
    return x_lnd, hiddens


def official_forward(sd: dict, x: torch.Tensor, d: dict) -> torch.Tensor:
    """x: ImageNet-normalised (B, 3, 384, 384) -> (B,), as models/deit.py + models/din.py compute it."""
    B, D = x.shape[0], d["D"]
    b = "backbone."
    t = F.conv2d(x, sd[b + "patch_embed.proj.weight"], sd[b + "patch_embed.proj.bias"], stride=16)
    t = t.flatten(2).transpose(1, 2) + sd[b + "pos_embed"]
    t = torch.cat([sd[b + "cls_token"].expand(B, -1, -1), t], dim=1)
    for i in range(d["depth"]):
        p = f"{b}blocks.{i}."
        y = _ln(t, sd, p + "norm1", 1e-6)
        qkv = _lin(y, sd, p + "attn.qkv").reshape(B, -1, 3, d["heads"], D // d["heads"]).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (D // d["heads"]) ** -0.5, qkv[1], qkv[2]
        o = (torch.softmax(q @ k.transpose(-2, -1), -1) @ v).transpose(1, 2).reshape(B, -1, D)
        t = t + sd[p + "gamma_1"] * _lin(o, sd, p + "attn.proj")
        t = t + sd[p + "gamma_2"] * _lin(F.gelu(_lin(_ln(t, sd, p + "norm2", 1e-6), sd, p + "mlp.fc1")), sd,
                                          p + "mlp.fc2")
    feats = _ln(t, sd, b + "norm", 1e-6)

    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    da = (F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False) - mean) / std
    c = "head.visual_control."
    v = F.conv2d(da, sd[c + "conv1.weight"], stride=32).flatten(2).transpose(1, 2)
    v = torch.cat([sd[c + "class_embedding"].expand(B, 1, -1), v], 1) + sd[c + "positional_embedding"]
    v = _ln(v, sd, c + "ln_pre").permute(1, 0, 2)  # NLD -> LND, as the authors' open_clip fork
    v, hiddens = _clip_blocks(v, sd, c + "transformer.transformer.", d["Lc"], d["Hc"],
                              zero_prefix=c + "transformer.zero_modules.")
    degradation = _ln(v.permute(1, 0, 2)[:, 0], sd, c + "ln_post") @ sd[c + "proj"]

    tokens = open_clip.get_tokenizer("ViT-B-32")(list(DISTORTION_PROMPTS))
    tx = (sd["head.clip.token_embedding.weight"][tokens] + sd["head.clip.positional_embedding"]).permute(1, 0, 2)
    mask = torch.full((d["ctx"], d["ctx"]), float("-inf")).triu(1)
    tx, _ = _clip_blocks(tx, sd, "head.clip.transformer.", d["Lt"], d["Ht"], mask=mask)
    tx = _ln(tx.permute(1, 0, 2), sd, "head.clip.ln_final")
    text = tx[torch.arange(len(tokens)), tokens.argmax(-1)] @ sd["head.clip.text_projection"]

    degradation = degradation / degradation.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    mixed = _ln(text[None] * degradation[:, None], sd, "norm1")
    experts = torch.stack([_lin(mixed[:, i], sd, f"linears.{i}") for i in range(10)], 1)
    h = _lin(hiddens[-1].permute(1, 0, 2), sd, "L_hidden")[:, 1:].reshape(B, 7, 7, D).permute(0, 3, 1, 2)
    h = F.interpolate(h, size=(24, 24), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(B, -1, D)
    keys = torch.cat([experts[:, :, None], h[:, None].expand(-1, 10, -1, -1)], 2)
    img, groups = feats, []
    for i in range(10):
        img = _ln(img, sd, "norm_vit")
        hk = _ln(keys[:, i], sd, "norm3_hidden_feature")
        x1 = experts[:, i][:, None].expand(-1, img.shape[1], -1)
        a = "diff_attention."
        s = 1 / math.sqrt(D)
        a1 = torch.softmax((_lin(x1, sd, a + "W_q1") @ _lin(hk, sd, a + "W_k1").transpose(-1, -2)) * s, -1)
        a2 = torch.softmax((_lin(img, sd, a + "W_q2") @ _lin(img, sd, a + "W_k2").transpose(-1, -2)) * s, -1)
        groups.append((a1 - sd[a + "alpha"] * a2) @ _lin(torch.cat([x1, img], -1), sd, a + "W_v"))
    g = torch.stack(groups)
    g = _lin(F.gelu(_lin(_ln(g, sd, "attn_norm"), sd, "group_attn_ffn.0")), sd, "group_attn_ffn.2")
    g = (g * (1 - sd["lamda_init"])).permute(1, 0, 2, 3)
    behaviour = feats[:, None].expand(-1, 10, -1, -1)
    z = torch.cat([g, behaviour, g - behaviour], -1)
    fc = "decoder.AttentionActivate.active_unit.fc."
    n = len(d["ddwm"])
    for j in range(n):
        z = F.prelu(_lin(z, sd, f"{fc}{2 * j}"), sd[f"{fc}{2 * j + 1}.weight"])
    weights = _lin(z, sd, f"{fc}{2 * n}")
    return _lin((behaviour * weights).sum(1)[:, 0], sd, "score").squeeze(-1)


# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    return random_official_state(SMALL, torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()))))


def _save_training_checkpoint(state, path, monkeypatch):
    """The authors' utils.save_checkpoint layout, including a yacs CfgNode config and a numpy max_plcc."""
    yacs, config_module = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config_module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config_module)
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    torch.save({
        "model": state, "optimizer": optimizer.state_dict(),
        "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1).state_dict(), "max_plcc": np.float64(0.95),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "epoch": 4,
        "config": CfgNode({"DATA": CfgNode({"DATASET": "koniq", "CROP_SIZE": 384})}),
    }, path)


def _crops(n=2, size=384):
    x = torch.rand(n, 3, size, size)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_official_layout_rules_count_870_for_paper():
    layout = official_layout(PAPER)
    assert len(layout) == 870
    counts = {p: sum(k.startswith(p) for k in layout) for p in ("backbone.", "head.", "head.clip.", "head.visual.",
                                                               "head.visual_control.")}
    assert counts == {"backbone.": 176, "head.": 631, "head.clip.": 302, "head.visual.": 152,
                      "head.visual_control.": 176}
    # head.visual.* aliases head.clip.visual.* (the same tensors), so the unique parameter count skips it.
    unique = sum(math.prod(s) for k, s in layout.items() if not k.startswith("head.visual."))
    assert unique == pytest.approx(272.1e6, rel=1e-3)


def test_paper_model_key_set_matches_converted_official_layout():
    """The paper model built on the meta device (no memory) has exactly the converted official names/shapes."""
    with torch.device("meta"):
        model = DRExperts(pretrained=False, config="paper", keep_text_tower=True)
    layout = official_layout(PAPER)
    converted = convert_official({k: torch.empty(s, device="meta") for k, s in layout.items()})
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    arch = {k: tuple(v.shape) for k, v in converted.arch.items()}
    text = {"text_encoder." + k: tuple(v.shape) for k, v in converted.text.items()}
    assert {k: v for k, v in ours.items() if k != "text_features"} == {**arch, **text}
    assert ours["text_features"] == (10, 512)
    assert len(converted.unused) == 2 + 4 + 152 + 152 + 1  # backbone.head, L1/L2, two visual towers, logit_scale
    assert len(arch) + len(text) + len(converted.unused) == 870


@pytest.mark.slow
def test_official_checkpoint_reproduces_authors_forward(official_state, tmp_path, monkeypatch):
    path = tmp_path / "ckpt_epoch_4.pth"
    _save_training_checkpoint(official_state, path, monkeypatch)
    monkeypatch.delitem(sys.modules, "yacs.config")  # loading must not need yacs
    with pytest.warns(UserWarning, match="L1"):
        model = DRExperts(pretrained_model_path=str(path), config="small", keep_text_tower=True).eval()
    x = _crops()
    with torch.no_grad():
        expected = official_forward(official_state, x, SMALL)
        literal = model.score_crops(x, "literal")
        fast = model.score_crops(x, "fast")
    torch.testing.assert_close(literal, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
    # Without the text tower the cached features give the same score.
    with pytest.warns(UserWarning):
        compactish = DRExperts(pretrained_model_path=str(path), config="small").eval()
    with torch.no_grad():
        torch.testing.assert_close(compactish.score_crops(x, "literal"), expected, rtol=1e-4, atol=1e-5)


def test_fast_equals_literal_random_weights():
    model = _nontrivial_small_model()
    x = _crops(3)
    with torch.no_grad():
        literal = model.score_crops(x, "literal")
        fast = model.score_crops(x, "fast")
    assert literal.std() > 0 and literal.abs().min() > 1e-3
    torch.testing.assert_close(fast, literal, rtol=1e-5, atol=1e-6)


def _nontrivial_small_model(device="cpu"):
    """Small random model whose zero-initialised parts (zero modules, lamda) are made non-trivial."""
    model = DRExperts(pretrained=False, config="small", keep_text_tower=True).eval().to(device)
    with torch.no_grad():
        for zero in model.controller.transformer.zero_modules:
            zero.weight.normal_(0, 0.2), zero.bias.normal_()
        model.lamda_init.normal_()
        model.dsdm.alpha.fill_(float(torch.rand(())) + 0.2)
    return model


def test_fast_path_is_one_attention_call_with_experts_as_heads(monkeypatch):
    """All ten experts go through one op call (H = 10), alpha passed as the parameter itself (no copy)."""
    from iqa_plugins.archs import drexperts_arch

    model = _nontrivial_small_model()
    real_op, calls = drexperts_arch.diff_attention, []

    def spy(q1, k1, q2, k2, v, alpha, scale=None):
        calls.append((tuple(q1.shape), tuple(k1.shape), tuple(v.shape), alpha))
        return real_op(q1, k1, q2, k2, v, alpha, scale=scale)

    monkeypatch.setattr(drexperts_arch, "diff_attention", spy)
    x = _crops(2)
    with torch.no_grad():
        fast = model.score_crops(x, "fast")
        literal = model.score_crops(x, "literal")
    experts, dim, tokens = len(DISTORTION_PROMPTS), SMALL["D"], SMALL["G"] + 1
    assert len(calls) == 1
    q_shape, k_shape, v_shape, alpha = calls[0]
    assert q_shape == (2, experts, 1, dim) and k_shape == v_shape == (2, experts, tokens, dim)
    assert alpha is model.dsdm.alpha
    torch.testing.assert_close(fast, literal, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fast_equals_literal():
    """On CUDA the fast path runs the Triton kernel (ten experts as heads); fp32 scores match the literal path."""
    torch.manual_seed(0)
    model = _nontrivial_small_model("cuda")
    x = _crops(5).cuda()
    with torch.no_grad():
        literal = model.score_crops(x, "literal")
        fast = model.score_crops(x, "fast")
        explained = model._fast(x, details=True)["attention"]
    assert torch.isfinite(fast).all() and literal.std() > 0
    torch.testing.assert_close(fast, literal, rtol=1e-5, atol=1e-5)
    total = explained.sum(-1)  # rows of softmax1 - alpha softmax2 sum to 1 - alpha
    torch.testing.assert_close(total, torch.full_like(total, 1 - model.dsdm.alpha.item()), rtol=1e-4, atol=1e-5)


def _daclip_state(official_state):
    return {k[len("head."):]: v for k, v in official_state.items() if k.startswith("head.")}


@pytest.mark.parametrize("wrap", ["bare", "module", "state_dict", "module+state_dict"])
def test_daclip_layout_is_recognised(official_state, tmp_path, wrap):
    daclip = _daclip_state(official_state)
    assert len(daclip) == 2 * (8 + 12 * SMALL["Lc"]) + (8 + 14 * SMALL["Lc"]) + 6 + 12 * SMALL["Lt"] + 1
    if "module" in wrap:
        daclip = {"module." + k: v for k, v in daclip.items()}
    torch.save({"epoch": 30, "name": "daclip", "state_dict": daclip} if "state_dict" in wrap else daclip,
               tmp_path / "daclip.pt")
    converted = read_checkpoint(tmp_path / "daclip.pt")
    reference = convert_official(official_state)
    assert converted.kind == "daclip"
    assert converted.arch.keys() == {k for k in reference.arch if k.startswith("controller.")}
    assert all(torch.equal(v, reference.arch[k]) for k, v in converted.arch.items())
    assert converted.text.keys() == reference.text.keys()
    assert len(converted.unused) == 2 * (8 + 12 * SMALL["Lc"]) + 1


@pytest.mark.slow
def test_daclip_file_completes_an_official_checkpoint(official_state, tmp_path):
    """DA-CLIP's file + an official checkpoint without head.* give the full model."""
    torch.save({"state_dict": {"module." + k: v for k, v in _daclip_state(official_state).items()}},
               tmp_path / "daclip.pt")
    torch.save({k: v for k, v in official_state.items() if not k.startswith("head.")}, tmp_path / "rest.pth")
    with pytest.warns(UserWarning):
        model = DRExperts(pretrained_model_path=[tmp_path / "rest.pth", tmp_path / "daclip.pt"], config="small").eval()
    x = _crops(1)
    with torch.no_grad():
        torch.testing.assert_close(model.score_crops(x), official_forward(official_state, x, SMALL),
                                   rtol=1e-4, atol=1e-5)
    # Alone, the DA-CLIP file lacks the rest: the error names what is missing.
    with pytest.raises(CheckpointKeyError, match=r"missing \d+ key\(s\):.*backbone\.cls_token"):
        DRExperts(pretrained_model_path=tmp_path / "daclip.pt", config="small")


@pytest.mark.slow
def test_compact_roundtrip_and_format(official_state, tmp_path):
    torch.save(official_state, tmp_path / "bare.pth")
    with pytest.warns(UserWarning):
        model = DRExperts(pretrained_model_path=tmp_path / "bare.pth", config="small").eval()
    model.protocol = {"resize": [512, 384], "num_crops": 3, "mos_range": [0.0, 100.0], "lower_better": False,
                      "dataset": "koniq10k"}
    save_pretrained(model, tmp_path / "compact.pth", source="bare.pth")
    raw = load_checkpoint(tmp_path / "compact.pth")
    assert raw["format"] == COMPACT_FORMAT and raw["config"] == CONFIGS["small"]
    assert not any(k.startswith("text_encoder.") for k in raw["state_dict"])
    assert raw["state_dict"]["text_features"].shape == (10, 64)
    again = DRExperts(pretrained_model_path=tmp_path / "compact.pth").eval()  # config from the file
    assert again.num_crops == 3 and again.resize == (512, 384)
    x = _crops(2)
    with torch.no_grad():
        torch.testing.assert_close(again.score_crops(x, "literal"), model.score_crops(x, "literal"))
    torch.save({"params": again.state_dict()}, tmp_path / "net_best.pth")
    params = DRExperts(pretrained_model_path=tmp_path / "net_best.pth", config="small").eval()
    with torch.no_grad():
        torch.testing.assert_close(params.score_crops(x), model.score_crops(x))


def test_convert_command_writes_compact(official_state, tmp_path, capsys):
    import argparse

    torch.save({"model": official_state}, tmp_path / "ckpt_epoch_1.pth")
    parser = argparse.ArgumentParser()
    convert_command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "ckpt_epoch_1.pth"), "-o", str(tmp_path / "out.pth"), "--dataset",
                              "bid", "--num-crops", "2", "--config", "small"])
    with pytest.warns(UserWarning):
        assert convert_command.main(args) == 0
    raw = load_checkpoint(tmp_path / "out.pth")
    assert raw["protocol"] == {"resize": [512, 512], "num_crops": 2, "mos_range": [0.0, 5.0], "lower_better": False,
                               "dataset": "bid"}
    assert raw["source"] == "ckpt_epoch_1.pth" and "wrote" in capsys.readouterr().out
    model = DRExperts(pretrained_model_path=tmp_path / "out.pth").eval()
    x = _crops(1)
    with torch.no_grad():
        torch.testing.assert_close(model.score_crops(x), official_forward(official_state, x, SMALL),
                                   rtol=1e-4, atol=1e-5)


def test_wrong_keys_are_listed(official_state, tmp_path):
    bad = dict(official_state)
    bad["decoder.extra.weight"] = torch.zeros(1)
    del bad["score.weight"]
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointKeyError, match=r"decoder\.extra\.weight"):
        DRExperts(pretrained_model_path=tmp_path / "bad.pth", config="small")
    del bad["decoder.extra.weight"]
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointKeyError, match=r"missing 1 key\(s\): score\.weight"):
        DRExperts(pretrained_model_path=tmp_path / "bad.pth", config="small")
    with pytest.raises(CheckpointKeyError, match="wrong shapes"):
        DRExperts(pretrained_model_path=tmp_path / "bad.pth", config={"base": "small", "ddwm_dims": [16, 8, 4]})


def test_explain_names_distortions_and_maps():
    model = DRExperts(pretrained=False, config="small", num_crops=2).eval()
    x = torch.rand(2, 3, 384, 420)
    out = model.explain(x)
    assert out["distortion_names"] == list(DISTORTION_PROMPTS) and set(out["per_distortion"]) == set(DISTORTION_PROMPTS)
    torch.testing.assert_close(out["score"][:, None], model(x))
    # per crop (2), per top expert (3), over the 24 x 24 patch grid
    assert out["attention_maps"].shape == (2, 2, 3, 24, 24)
    assert len(out["attention_crops"]) == 2 and out["attention_image_size"] == (384, 420)
    # The refined attention rows sum to 1 - alpha over the 577 keys.
    total = out["attention_maps"].sum((-1, -2)) + out["attention_cls"]
    torch.testing.assert_close(total, torch.full_like(total, 1 - model.dsdm.alpha.item()), rtol=1e-4, atol=1e-5)
    shares = torch.stack([out["per_distortion"][n] for n in DISTORTION_PROMPTS], 1)
    torch.testing.assert_close(shares, out["expert_weights"] / out["expert_weights"].sum(1, keepdim=True))
    assert torch.equal(out["top_indices"], shares.topk(3, dim=1).indices)


@pytest.mark.slow
def test_paper_config_forward_cpu():
    model = DRExperts(pretrained=False, config="paper").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 384, 384))
    assert out.shape == (1, 1) and torch.isfinite(out).all()
