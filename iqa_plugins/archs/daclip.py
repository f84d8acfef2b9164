"""The DA-CLIP parts DR.Experts uses, built on the released open_clip_torch (no vendored fork).

DA-CLIP (Luo et al., 2024) adds to a CLIP ViT-B/32 a *controller*: a copy of the visual tower whose
transformer passes every block's output through a zero-initialised ``Linear(width, width)`` and collects
those outputs. DR.Experts reads two things from it: the pooled, projected "degradation" feature and the
last block's zero-module output. It also needs the CLIP text features of ten distortion words.

Parameter names follow the official DA-CLIP layout (``visual_control.*`` there, ``controller.*`` here):
``conv1.weight``, ``class_embedding``, ``positional_embedding``, ``ln_pre.*``,
``transformer.transformer.resblocks.{i}.*``, ``transformer.zero_modules.{i}.*``, ``ln_post.*``, ``proj``.
open_clip 3.3 runs its transformer batch-first (N, L, D) where the official code ran L, N, D; the
per-token values are the same, only the layout of the collected hidden states differs (ours: N, L, D).
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from iqa_plugins.archs.clip_towers import create_clip, encode_prompts

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DISTORTION_PROMPTS",
    "ControlTransformer",
    "DAClipController",
    "build_clip",
    "encode_prompts",
    "text_tower",
    "tokenize_prompts",
]

# The ten degradation words of DA-CLIP, in the order DR.Experts' experts use them (no prompt template).
DISTORTION_PROMPTS: tuple[str, ...] = (
    "motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy",
    "raindrop", "rainy", "shadowed", "snowy", "uncompleted",
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_NAME = "ViT-B-32"


def build_clip(clip_config: str | dict[str, Any], device: str | torch.device = "cpu") -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP: a model name (e.g. "ViT-B-32") or a CLIP(**kwargs) dict.

    ``device="meta"`` builds it without allocating weights (to inspect names and shapes).
    """
    model = create_clip(clip_config, pretrained=None, device=device)
    if not isinstance(model, open_clip.CLIP):
        raise TypeError(f"clip config {clip_config!r} builds a {type(model).__name__}, not a plain open_clip CLIP")
    return model


class ControlTransformer(nn.Module):
    """Wraps an open_clip ``Transformer``: runs its blocks and collects a zero-initialised Linear of each
    block's output (DA-CLIP's control signals). Names: ``transformer.resblocks.*``, ``zero_modules.*``."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        width = transformer.width
        self.zero_modules = nn.ModuleList(nn.Linear(width, width) for _ in range(transformer.layers))
        for linear in self.zero_modules:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, all_hiddens: bool = True) -> tuple[Tensor, list[Tensor]]:
        """x: (N, L, D). Returns the last block's output and the zero-module outputs, each (N, L, D).

        ``all_hiddens=False`` computes only the last zero-module output (the one DR.Experts reads).
        """
        batch_first = getattr(self.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        blocks = self.transformer.resblocks
        hiddens = []
        for index, (block, zero) in enumerate(zip(blocks, self.zero_modules)):
            x = block(x)
            if all_hiddens or index == len(blocks) - 1:
                hiddens.append(zero(x))
        if not batch_first:
            x = x.transpose(0, 1)
            hiddens = [h.transpose(0, 1) for h in hiddens]
        return x, hiddens


class DAClipController(nn.Module):
    """DA-CLIP's controller: CLIP's visual tower with a ControlTransformer.

    ``forward(image)`` takes CLIP-normalised images at the tower's resolution and returns the pooled
    degradation feature ``ln_post(x[:, 0]) @ proj`` (N, embed) and the zero-module outputs (N, 1+g*g, width).
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("DA-CLIP's controller needs a CLIP ViT with class-token pooling")
        # Adopt the tower's modules under their own names so the parameter names match DA-CLIP's layout.
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.transformer = ControlTransformer(visual.transformer)
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.image_size = tuple(visual.image_size)
        self.grid_size = tuple(visual.grid_size)

    def forward(self, image: Tensor, all_hiddens: bool = True) -> tuple[Tensor, list[Tensor]]:
        x = self.conv1(image).flatten(2).transpose(1, 2)  # (N, g*g, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x, hiddens = self.transformer(x, all_hiddens=all_hiddens)
        # LayerNorm is per token, so normalising the class token alone equals open_clip's ln_post-then-pool.
        pooled = self.ln_post(x[:, 0]) @ self.proj
        return pooled, hiddens


def tokenize_prompts(prompts: tuple[str, ...] = DISTORTION_PROMPTS) -> Tensor:
    """open_clip's ViT-B-32 tokenizer applied to the bare words, as DR.Experts does: (len(prompts), 77)."""
    return open_clip.get_tokenizer(TOKENIZER_NAME)(list(prompts))


def text_tower(clip: open_clip.CLIP) -> open_clip.CLIP:
    """The CLIP model with its visual tower removed: what ``encode_text`` needs, and nothing else."""
    del clip.visual
    return clip


