"""DR.Experts (Fu et al., AAAI 2026) as a pyiqa no-reference metric, exact to the authors' code.

The network, as the authors' ``models/deit.py`` / ``models/din.py`` compute it (quirks kept, the trained
weights depend on them):

1. ``F = DeiT-III ViT-S/16-384(x)``: all 577 tokens after the final LayerNorm (timm ``deit3_small_patch16_384``).
2. DA-CLIP controller on ``clip_normalise(resize_224(x))`` where x is *already ImageNet-normalised*
   (double normalisation): pooled degradation feature ``E_dis`` (L2-normalised) and the last block's
   zero-module output ``H``.
3. ``E_T``: L2-normalised CLIP text features of the ten distortion words (a constant of the frozen weights).
4. ``F_D^i = linears[i](norm1(E_dis * E_T[i]))`` (ten Linear(512, D), one shared LayerNorm).
5. Key tokens ``K_i = norm3_hidden_feature([F_D^i ; upsample_7x7->24x24(L_hidden(H)[1:])])``.
6. One DSDM shared by the experts, single head, scale 1/sqrt(D):
   ``D_i = (softmax(W_q1(F_D^i) W_k1(K_i)^T s) - alpha softmax(W_q2(F_i) W_k2(F_i)^T s)) W_v([F_D^i ; F_i])``
   with ``F_D^i`` broadcast to every row and ``F_i = norm_vit`` applied i+1 times to F (the authors' loop
   reassigns it).
7. ``G_i = (1 - lamda_init) * group_attn_ffn(attn_norm(D_i))`` (no residual).
8. DDWM weights ``W_i = MLP([G_i, F, G_i - F])`` with PReLUs, not normalised; ``score = Linear(sum_i W_i F)[CLS]``.

Two paths give the same score. ``literal`` runs the above as written (all 577 query rows, materialised
attention matrices, the text tower per call when it is present). ``fast`` (default) computes only what
reaches the score: the CLS row of every expert (M=1 query against 577 keys) in one call of the fused
``iqa_plugins.kernels.diff_attention`` op with the ten experts stacked as its heads (host work per crop is
one launch, not ten), the key projections folded into the queries (``q.(W k + b) = (W^T q).k + q.b`` and
softmax ignores the per-row constant ``q.b``), the value projection applied after the attention (the
attention rows sum to ``1 - alpha``), the shared grid keys normalised once, the precomputed text features,
and only row 0 of the FFN and of the weight generator.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa_plugins.archs.configs import resolve_named_config
from iqa_plugins.archs.crops import crop_offsets, upscale_to_min_side
from iqa_plugins.archs.daclip import (
    CLIP_MEAN,
    CLIP_STD,
    DISTORTION_PROMPTS,
    DAClipController,
    build_clip,
    encode_prompts,
    text_tower,
    tokenize_prompts,
)
from iqa_plugins.archs.drexperts_convert import (
    COMPACT_FORMAT,
    CheckpointKeyError,
    Converted,
    read_checkpoint,
)
from iqa_plugins.archs.input_check import check_image_batch
from iqa_plugins.archs.pretrained_cfgs import DREXPERTS
from iqa_plugins.kernels import diff_attention
from iqa_plugins.weights import WeightsSpec, resolve_weights, save_checkpoint

__all__ = ["CONFIGS", "DEFAULT_WEIGHTS", "DRExperts", "resolve_config", "save_pretrained"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The trained variants (KonIQ-10k by default, LIVEC, SPAQ, FLIVE, BID) are rows of archs.pretrained_cfgs.DREXPERTS.
DEFAULT_WEIGHTS: WeightsSpec = DREXPERTS.variant().weights

# Named sizes of the same code. "paper": DeiT-III ViT-S/16 at 384 + DA-CLIP ViT-B/32. "small": a tiny ViT
# of the same structure (layer scale, no pos-embed on CLS) and a tiny CLIP, for tests and demos.
CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {
        "backbone": "deit3_small_patch16_384",
        "backbone_kwargs": {},
        "img_size": 384,
        "clip": "ViT-B-32",
        "ddwm_dims": [384, 32, 16],
    },
    "small": {
        "backbone": "deit3_small_patch16_384",
        "backbone_kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2},
        "img_size": 384,
        "clip": {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 64, "layers": 2, "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
        "ddwm_dims": [32, 16, 8],
    },
}


def resolve_config(config: str | dict[str, Any]) -> dict[str, Any]:
    """A config name, or a dict of overrides on ``config["base"]`` (default "paper"), as a full config dict."""
    return resolve_named_config(config, CONFIGS, "DR.Experts")


class DSDM(nn.Module):
    """The differential attention shared by all experts (official ``diff_attention`` module)."""

    def __init__(self, dim: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.dim = dim
        self.W_q1 = nn.Linear(dim, dim)
        self.W_q2 = nn.Linear(dim, dim)
        self.W_k1 = nn.Linear(dim, dim)
        self.W_k2 = nn.Linear(dim, dim)
        self.W_v = nn.Linear(2 * dim, dim)
        self.alpha = nn.Parameter(torch.tensor(alpha))
        # A key bias adds the same q.b to every logit of a query row, which softmax cancels: these two
        # biases get an exactly zero gradient (the fast path leaves them out). The authors' recipe puts no
        # weight decay on biases, so their training never changes them; frozen here they stay in the state
        # dict (checkpoints keep the official layout and the literal path still adds them) and DDP does not
        # wait for gradients that never come.
        self.W_k1.bias.requires_grad_(False)
        self.W_k2.bias.requires_grad_(False)

    def literal(self, expert_token: Tensor, feats: Tensor, keys: Tensor) -> Tensor:
        """All rows, as the authors compute them: (B, D), (B, N, D), (B, N, D) -> (B, N, D)."""
        x1 = expert_token[:, None].expand(-1, feats.shape[1], -1)
        v = self.W_v(torch.cat([x1, feats], dim=-1))
        s = 1.0 / math.sqrt(self.dim)
        a1 = torch.softmax((self.W_q1(x1) @ self.W_k1(keys).transpose(-1, -2)) * s, dim=-1)
        a2 = torch.softmax((self.W_q2(feats) @ self.W_k2(feats).transpose(-1, -2)) * s, dim=-1)
        return (a1 - self.alpha * a2) @ v


class DDWM(nn.Module):
    """Dynamic expert weighting (the authors' DIN activation unit): MLP([G, F, G - F]) -> one weight per token."""

    def __init__(self, dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3 * dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.PReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.fc = nn.Sequential(*layers)

    def forward(self, refined: Tensor, feats: Tensor) -> Tensor:
        return self.fc(torch.cat([refined, feats, refined - feats], dim=-1))


class DRExperts(nn.Module):
    """DR.Experts no-reference IQA metric.

    Args:
        pretrained: load weights (True: the default KonIQ-10k variant; a data set name such as "livec" or a
            variant tag such as "flive": that variant's file, see ``archs.pretrained_cfgs.DREXPERTS``) or keep a
            random initialisation on purpose (False).
        pretrained_model_path: a checkpoint path, or a list of paths merged in order (later files override
            earlier ones): the project's compact file, pyiqa's ``{"params": ...}``, an official
            ``ckpt_epoch_N.pth`` or its bare state dict, a DA-CLIP ``daclip_ViT-B-32.pt`` (controller and text
            tower only: combine it with a file holding the rest). None: the variant's file (default
            ``DRExperts_koniq10k.pth``) in pyiqa's cache (no download exists; the error says how to make it).
        config: "paper" or "small", or a dict of overrides with an optional "base". Default: the compact
            checkpoint's own config, else "paper".
        num_crops: crops averaged per image. Default: the checkpoint's test protocol (e.g. 15 for KonIQ), 1
            without one.
        resize: (h, w) resize before cropping, None for none, or "checkpoint" (default) for the checkpoint's
            protocol (KonIQ: (512, 384), as the authors' torchvision ``Resize((512, 384))``).
        path: "fast" (default) or "literal"; both return the same score.
        keep_text_tower: keep the CLIP text tower so that the literal path encodes the prompts every call, as
            the authors' code does (needs a checkpoint that has it, or pretrained=False).
        crop_seed: seed of the crop positions when num_crops > 1.

    Test-time protocol (the authors': resize, n random crops of the model's size, mean score), made
    deterministic: one crop is the centre crop; n > 1 crops are drawn uniformly over the valid offsets from
    a generator seeded with ``crop_seed`` (the same offsets every call). The authors' random test-time flips
    are not applied. An image whose shorter side is below the crop size after resizing (torchvision's
    RandomCrop would raise) is first upscaled bilinearly so that its shorter side equals the crop size,
    keeping its aspect ratio. So a (crop x crop) input with num_crops=1 is scored exactly as given.
    Inputs: RGB (or grey, repeated) float tensors in [0, 1], (N, C, H, W), any size; output (N, 1).
    """

    def __init__(
        self,
        pretrained: bool | str = True,
        pretrained_model_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        config: str | dict[str, Any] | None = None,
        num_crops: int | None = None,
        resize: Sequence[int] | None | str = "checkpoint",
        path: str = "fast",
        keep_text_tower: bool = False,
        crop_seed: int = 0,
    ) -> None:
        super().__init__()
        loaded = self._read(pretrained_model_path, DREXPERTS.variant(pretrained).weights) if pretrained else []
        stored = [c for c in loaded if c.config is not None]
        cfg = resolve_config(config if config is not None else (stored[0].config if stored else "paper"))
        for c in stored:
            if resolve_config(c.config) != cfg:
                raise ValueError(f"config={config!r} differs from the checkpoint's own config {c.config!r}")
        self.arch_config = cfg
        self.path = path
        self.crop_seed = int(crop_seed)

        has_text = any(c.text for c in loaded)
        if keep_text_tower and pretrained and not has_text:
            raise ValueError("keep_text_tower=True needs a checkpoint with the CLIP text tower (official or DA-CLIP);"
                             " compact checkpoints store only the precomputed text features")
        self._build(cfg, with_text=has_text or not pretrained)
        if pretrained:
            self._load(loaded)
        else:
            with torch.no_grad():
                self.text_features.copy_(encode_prompts(self.text_encoder, self.prompt_tokens))
        if not keep_text_tower:
            self.text_encoder = None

        protocols = [c.protocol for c in loaded if c.protocol is not None]
        self.protocol: dict[str, Any] = dict(protocols[-1]) if protocols else {
            "resize": None, "num_crops": 1, "mos_range": None, "lower_better": False, "dataset": None,
        }
        self.num_crops = int(self.protocol["num_crops"] if num_crops is None else num_crops)
        if self.num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        resize = self.protocol["resize"] if isinstance(resize, str) and resize == "checkpoint" else resize
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise ValueError(f"resize must be (height, width), None or 'checkpoint', got {resize!r}")
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))

    # ------------------------------------------------------------------------------------------------------
    # construction and loading

    @staticmethod
    def _read(path: Any, weights: WeightsSpec) -> list[Converted]:
        if path is None:
            return [read_checkpoint(resolve_weights(weights))]
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths:
            raise ValueError("pretrained_model_path is an empty list")
        return [read_checkpoint(resolve_weights(weights, p)) for p in paths]

    def _build(self, cfg: dict[str, Any], with_text: bool) -> None:
        self.backbone = timm.create_model(
            cfg["backbone"], pretrained=False, num_classes=0, img_size=cfg["img_size"], **cfg["backbone_kwargs"]
        )
        dim = self.backbone.embed_dim
        self.embed_dim = dim
        clip = build_clip(cfg["clip"], device=torch.get_default_device())
        clip_dim = clip.text_projection.shape[1]
        self.controller = DAClipController(clip.visual)
        self.text_encoder = text_tower(clip) if with_text else None
        for module in (self.controller, self.text_encoder):
            if module is not None:
                module.requires_grad_(False)  # DA-CLIP is frozen in the authors' training
        self.register_buffer("text_features", torch.zeros(len(DISTORTION_PROMPTS), clip_dim))
        if with_text:  # the tokenizer costs a third of a second at start-up; without a text tower it is unused
            self.register_buffer("prompt_tokens", tokenize_prompts(), persistent=False)
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

        experts = len(DISTORTION_PROMPTS)
        self.norm1 = nn.LayerNorm(clip_dim)
        self.linears = nn.ModuleList(nn.Linear(clip_dim, dim) for _ in range(experts))
        self.L_hidden = nn.Linear(self.controller.transformer.transformer.width, dim)
        self.norm3_hidden_feature = nn.LayerNorm(dim)
        self.norm_vit = nn.LayerNorm(dim)
        self.dsdm = DSDM(dim)
        self.attn_norm = nn.LayerNorm(dim)
        self.group_attn_ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.lamda_init = nn.Parameter(torch.zeros(1, dim))
        self.ddwm = DDWM(dim, cfg["ddwm_dims"])
        self.score = nn.Linear(dim, 1)

    def _load(self, loaded: list[Converted]) -> None:
        arch: dict[str, Tensor] = {}
        text: dict[str, Tensor] = {}
        unused: list[str] = []
        for c in loaded:
            arch.update(c.arch)
            text.update(c.text)
            unused += c.unused
        if text:
            _load_exact(self.text_encoder, text, "the CLIP text tower")
            with torch.no_grad():
                arch["text_features"] = encode_prompts(self.text_encoder, self.prompt_tokens)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("text_encoder.")}
        missing = sorted(set(own) - set(arch))
        unexpected = sorted(set(arch) - set(own))
        wrong = sorted(k for k in set(own) & set(arch) if tuple(own[k].shape) != tuple(arch[k].shape))
        if missing or unexpected or wrong:
            raise CheckpointKeyError(_key_report("DR.Experts", missing, unexpected, wrong, own, arch))
        if unused:
            warnings.warn(
                f"DR.Experts: ignored {len(unused)} checkpoint key(s) the metric does not use (documented: "
                f"backbone.head.*, L1.*, L2.*, the CLIP visual tower and its head.visual.* alias, logit_scale): "
                f"{_summarise(unused)}",
                stacklevel=3,
            )
        self.load_state_dict(arch, strict=False)  # the key sets were checked above; the text tower is loaded

    @torch.no_grad()
    def refresh_text_features(self) -> None:
        """Recompute the cached prompt features from the kept text tower (after changing its weights)."""
        if self.text_encoder is None:
            raise RuntimeError("DR.Experts: no text tower kept (build with keep_text_tower=True)")
        self.text_features.copy_(encode_prompts(self.text_encoder, self.prompt_tokens))

    # ------------------------------------------------------------------------------------------------------
    # the test-time protocol

    def check_input(self, x: Any, *, value_range: bool = True, as_loss: bool = False) -> Tensor:
        """The metric's input check (pyiqa's is routed here): see ``archs.input_check``."""
        return check_image_batch(x, "DR.Experts", value_range=value_range, as_loss=as_loss)

    def _check(self, x: Any) -> Tensor:
        # any float precision in; the model computes in its own (autocast still applies inside)
        return check_image_batch(x, "DR.Experts").to(self.imagenet_mean.dtype)

    def _prepared(self, x: Tensor, as_given: bool = False) -> tuple[Tensor, list[tuple[int, int]]]:
        """Resized (and if needed upscaled) image and the crop offsets of the protocol; ``as_given``: no
        resize and one (centre) crop, whatever the protocol."""
        x = self._check(x)
        resize = None if as_given else self.resize
        if resize is not None and tuple(x.shape[-2:]) != resize:
            x = F.interpolate(x, size=resize, mode="bilinear", align_corners=False, antialias=True)
        size = self.arch_config["img_size"]
        x = upscale_to_min_side(x, size)
        num_crops = 1 if as_given else self.num_crops
        return x, crop_offsets(x.shape[-2], x.shape[-1], size, num_crops, self.crop_seed)

    def _crop(self, x: Tensor, offset: tuple[int, int]) -> Tensor:
        size = self.arch_config["img_size"]
        top, left = offset
        crop = x[..., top:top + size, left:left + size]
        return (crop - self.imagenet_mean.to(crop.dtype)) / self.imagenet_std.to(crop.dtype)

    def forward(self, x: Tensor, as_given: bool = False) -> Tensor:
        """Quality of RGB images in [0, 1], (N, 3, H, W) -> (N, 1), averaged over the protocol's crops.

        ``as_given=True`` scores each image as one view without the test-time resize and crop averaging
        (training: the data set has already cut the crops)."""
        image, offsets = self._prepared(x, as_given)
        scores = [self.score_crops(self._crop(image, offset)) for offset in offsets]
        return torch.stack(scores, dim=1).mean(dim=1, keepdim=True)

    def score_crops(self, crops: Tensor, path: str | None = None) -> Tensor:
        """Model output for ImageNet-normalised crops of the model's size: (B, 3, S, S) -> (B,)."""
        path = self.path if path is None else path
        if path == "fast":
            return self._fast(crops)["score"]
        if path == "literal":
            return self._literal(crops)
        raise ValueError(f"path must be 'fast' or 'literal', got {path!r}")

    # ------------------------------------------------------------------------------------------------------
    # the network

    def _shared(self, crops: Tensor, literal: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Backbone tokens F, expert tokens F_D (B, E, D) and the controller's zero-module outputs (all of
        them on the literal path, the last one on the fast path)."""
        feats = self.backbone.forward_features(crops)
        # The authors resize and CLIP-normalise the already ImageNet-normalised crop (double normalisation).
        da = F.interpolate(crops, size=self.controller.image_size, mode="bilinear", align_corners=False)
        da = (da - self.clip_mean.to(da.dtype)) / self.clip_std.to(da.dtype)
        degradation, hiddens = self.controller(da, all_hiddens=literal)
        degradation = degradation / degradation.norm(dim=-1, keepdim=True)
        if self.text_encoder is not None and literal:
            text = encode_prompts(self.text_encoder, self.prompt_tokens)
        else:
            text = self.text_features
        mixed = self.norm1(text[None].to(degradation.dtype) * degradation[:, None])
        experts = torch.stack([linear(mixed[:, i]) for i, linear in enumerate(self.linears)], dim=1)
        return feats, experts, hiddens

    def _grid_tokens(self, hidden: Tensor) -> Tensor:
        """L_hidden of the controller's patch tokens, bilinearly resized to the backbone's grid: (B, g*g, D)."""
        tokens = self.L_hidden(hidden)[:, 1:]
        gh, gw = self.controller.grid_size
        grid = tokens.reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=tuple(self.backbone.patch_embed.grid_size), mode="bilinear",
                             align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(tokens.shape[0], -1, tokens.shape[-1])

    def _literal(self, crops: Tensor) -> Tensor:
        feats, experts, hiddens = self._shared(crops, literal=True)
        n_experts = experts.shape[1]
        grid = self._grid_tokens(hiddens[-1])
        keys = torch.cat([experts[:, :, None], grid[:, None].expand(-1, n_experts, -1, -1)], dim=2)
        refined, current = [], feats
        for i in range(n_experts):
            current = self.norm_vit(current)  # reassigned in the loop: expert i sees norm_vit applied i+1 times
            refined.append(self.dsdm.literal(experts[:, i], current, self.norm3_hidden_feature(keys[:, i])))
        grouped = self.group_attn_ffn(self.attn_norm(torch.stack(refined, dim=1))) * (1 - self.lamda_init)
        tokens = feats[:, None].expand_as(grouped)
        weights = self.ddwm(grouped, tokens)  # (B, E, N, 1), not normalised
        pooled = (tokens * weights).sum(dim=1)
        return self.score(pooled[:, 0]).squeeze(-1)

    def _fast(self, crops: Tensor, details: bool = False) -> dict[str, Tensor]:
        feats, experts, hiddens = self._shared(crops, literal=False)
        return self._expert_stage(feats, experts, hiddens[-1], details)

    def _expert_stage(self, feats: Tensor, experts: Tensor, hidden: Tensor, details: bool = False) -> dict[str, Tensor]:
        """Fast path after the backbone and the controller: backbone tokens F (B, N, D), expert tokens F_D
        (B, E, D) and the controller's last zero-module output -> "score" (B,), "weights" (B, E) and, with
        details, "attention" (B, E, N): the refined CLS attention (softmax1 - alpha softmax2) per expert."""
        rows, (q1, keys1, q2, values, scale) = self._expert_attention(feats, experts, hidden)
        result = self._expert_head(feats, experts, rows)
        if details:
            p1 = torch.softmax((keys1 @ q1.transpose(-1, -2)).squeeze(-1) * scale, dim=-1)
            p2 = torch.softmax((values @ q2.transpose(-1, -2)).squeeze(-1) * scale, dim=-1)
            result["attention"] = p1 - self.dsdm.alpha * p2
        return result

    def _expert_attention(self, feats: Tensor, experts: Tensor, hidden: Tensor) -> tuple[Tensor, tuple]:
        """CLS rows of the ten DSDM attentions before W_v, (B, E, D), in one op call with the experts as heads;
        also the call's (q1, keys1, q2, values, scale)."""
        dsdm, norm = self.dsdm, self.norm_vit
        n_experts = experts.shape[1]
        grid_keys = self.norm3_hidden_feature(self._grid_tokens(hidden))  # the same for every expert
        expert_keys = self.norm3_hidden_feature(experts)
        # Expert i's values (and second keys) are norm_vit applied i+1 times to F, as the authors' loop
        # reassigns it: the iterates are the heads. The functional call skips ten module dispatches.
        iterates, current = [], feats
        for _ in range(n_experts):
            current = F.layer_norm(current, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            iterates.append(current)
        values = torch.stack(iterates, dim=1)  # (B, E, N, D)
        # Key projections folded into the queries (the dropped q.b term is constant along each softmax row).
        q2 = dsdm.W_q2(values[:, :, :1]) @ dsdm.W_k2.weight  # (B, E, 1, D)
        dtype = q2.dtype  # differs from the features' only under autocast
        q1 = (dsdm.W_q1(experts) @ dsdm.W_k1.weight).to(dtype)[:, :, None]
        values = values.to(dtype)
        # The grid keys are cast before they are broadcast to the ten experts; the concatenation is the one copy.
        keys1 = torch.cat([expert_keys.to(dtype)[:, :, None],
                           grid_keys.to(dtype)[:, None].expand(-1, n_experts, -1, -1)], dim=2)
        scale = 1.0 / math.sqrt(self.embed_dim)
        # alpha stays the 0-d parameter: the op broadcasts it to (B, E) as a view.
        rows = diff_attention(q1, keys1, q2, values, values, dsdm.alpha, scale=scale)[:, :, 0]
        return rows, (q1, keys1, q2, values, scale)

    def _expert_head(self, feats: Tensor, experts: Tensor, rows: Tensor) -> dict[str, Tensor]:
        """W_v, FFN, DDWM and score on the experts' attention rows (B, E, D) (CLS only)."""
        dsdm, dim = self.dsdm, self.embed_dim
        alpha = dsdm.alpha
        w_expert, w_feat = dsdm.W_v.weight.split(dim, dim=1)
        # W_v([F_D ; F]) after attention rows summing to 1 - alpha: the F_D half and the bias scale by 1 - alpha.
        refined = (1 - alpha) * F.linear(experts, w_expert, dsdm.W_v.bias) + rows @ w_feat.t()
        grouped = self.group_attn_ffn(self.attn_norm(refined)) * (1 - self.lamda_init)
        cls = feats[:, 0]
        weights = self.ddwm(grouped, cls[:, None].expand_as(grouped)).squeeze(-1)  # (B, E)
        return {"score": self.score(cls * weights.sum(dim=1, keepdim=True)).squeeze(-1), "weights": weights}

    # ------------------------------------------------------------------------------------------------------
    # explanations

    def score_scale(self) -> dict[str, Any]:
        """Scale of the loaded weights' scores (``iqa_plugins.explanations``): the MOS range of their training
        data, as the checkpoint's protocol states it (None when it does not, e.g. random weights)."""
        mos_range = self.protocol.get("mos_range")
        dataset = self.protocol.get("dataset")
        meaning = self.protocol.get("score_meaning") or (
            f"predicted mean opinion score on the {dataset} scale" if dataset else "predicted quality (scale unknown)")
        return {"score_range": None if mos_range is None else [float(v) for v in mos_range],
                "lower_better": bool(self.protocol.get("lower_better", False)), "meaning": meaning}

    @torch.no_grad()
    def explain(self, x: Tensor, top_k: int = 3) -> dict[str, Any]:
        """Score and its explanation under the forward's protocol (keys shared with ExIQA: see
        ``iqa_plugins.explanations``).

        DR.Experts scores ``score_head(weight_sum * CLS)``: each expert's DDWM weight on the CLS token scales the
        same backbone feature, so an expert's part in the score is its share of the summed weights.

        Returns, besides the shared keys (``score``, ``scale``, ``distortion_names`` = the ten expert words,
        ``per_distortion`` = shares, ``top_indices``, ``top_distortions`` = (word, share)):
        "expert_weights" (B, 10) the raw DDWM weights on the CLS token, averaged over crops; "weight_sum" (B,)
        their sum; "expert_shares" (B, 10) weights / weight_sum (each row sums to 1; 0.1 each is an even split;
        a negative weight gives a negative share); "attention_maps" (B, C, top_k, g, g) the top experts'
        refined CLS attention (softmax1 - alpha softmax2) over the backbone's patch grid in each of the C crops;
        "attention_cls" (B, C, top_k) its weight on token 0 (the expert token); "attention_crops" the C crops'
        (top, left, size) in the resized image; "attention_image_size" (height, width) of that resized image,
        which spans the whole input.
        """
        image, offsets = self._prepared(x)
        scores, weights, maps = [], [], []
        for offset in offsets:
            out = self._fast(self._crop(image, offset), details=True)
            scores.append(out["score"])
            weights.append(out["weights"])
            maps.append(out["attention"])
        score = torch.stack(scores, 1).mean(1)
        mean_weights = torch.stack(weights, 1).mean(1)
        weight_sum = mean_weights.sum(1)
        shares = mean_weights / weight_sum[:, None]
        top_k = max(1, min(int(top_k), shares.shape[1]))
        top = shares.topk(top_k, dim=1).indices
        attention = torch.stack(maps, 1)  # (B, C, E, 1 + g*g)
        attention = attention.gather(2, top[:, None, :, None].expand(-1, attention.shape[1], -1, attention.shape[-1]))
        gh, gw = self.backbone.patch_embed.grid_size
        names = list(DISTORTION_PROMPTS)
        size = self.arch_config["img_size"]
        return {
            "score": score,
            "scale": self.score_scale(),
            "distortion_names": names,
            "per_distortion": {name: shares[:, i] for i, name in enumerate(names)},
            "top_indices": top,
            "top_distortions": [[(names[j], float(shares[b, j])) for j in row] for b, row in enumerate(top.tolist())],
            "expert_weights": mean_weights,
            "weight_sum": weight_sum,
            "expert_shares": shares,
            "attention_maps": attention[..., 1:].reshape(*attention.shape[:3], gh, gw),
            "attention_cls": attention[..., 0],
            "attention_crops": [(top_, left, size) for top_, left in offsets],
            "attention_image_size": tuple(image.shape[-2:]),
        }


def _summarise(keys: list[str], limit: int = 12) -> str:
    """Key list grouped by their first two name parts, so 600 tower keys read as a few lines."""
    groups: dict[str, int] = {}
    for key in keys:
        head = ".".join(key.split(".")[:2])
        groups[head] = groups.get(head, 0) + 1
    items = [f"{head}.* ({n})" if n > 1 else head for head, n in sorted(groups.items())]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more groups)" if len(items) > limit else "")


def _key_report(what: str, missing: list[str], unexpected: list[str], wrong: list[str],
                own: dict[str, Tensor], given: dict[str, Tensor]) -> str:
    """A few lines: key groups (not every key) and, for shape mismatches, how to name the right config."""
    def keys(names: list[str]) -> str:
        return ", ".join(names) if len(names) <= 4 else _summarise(names, 6)

    parts = [f"The checkpoint does not fit {what}"]
    if missing:
        parts.append(f"missing {len(missing)} key(s): {keys(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {keys(unexpected)}")
    if wrong:
        shown = ", ".join(f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        parts.append(f"wrong shapes of {len(wrong)} key(s) ({shown}{', ...' if len(wrong) > 3 else ''}). The checkpoint "
                     "was made with another config: load the compact checkpoint training wrote (it carries "
                     "its config), or give the config: --metric-opt config=small on the command line, "
                     "config='small' in Python")
    return ".\n".join(parts) + "."


def _load_exact(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise CheckpointKeyError(_key_report(what, missing, unexpected, wrong, own, state))
    module.load_state_dict(state)


def save_pretrained(
    model: DRExperts, path: str | os.PathLike, source: str = "", protocol: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` in the compact format ``iqa_plugins.drexperts/1`` (atomically): inference weights (no CLIP
    towers), config, and the test-time protocol: ``protocol`` if given, else the model's own."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("text_encoder.")}
    return save_checkpoint(
        {
            "format": COMPACT_FORMAT,
            "config": dict(model.arch_config),
            "protocol": dict(model.protocol if protocol is None else protocol),
            "state_dict": state,
            "source": source,
        },
        path,
    )
