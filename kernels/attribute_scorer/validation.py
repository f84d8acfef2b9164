"""Argument checks shared by the compiled wrapper and the reference (metadata only, no device syncs)."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


INDEX_DTYPES = (torch.int64, torch.int32)


def _plainly_valid(image_emb, text_pos, text_neg, scale, group_index, weight_logits, num_groups) -> bool:
    """Fast test of the common valid call (per-image latency matters); False sends to the detailed checks."""
    if not (
        isinstance(image_emb, torch.Tensor)
        and isinstance(text_pos, torch.Tensor)
        and isinstance(group_index, torch.Tensor)
        and isinstance(weight_logits, torch.Tensor)
    ):
        return False
    emb_shape, text_shape, dtype, device = image_emb.shape, text_pos.shape, image_emb.dtype, image_emb.device
    if len(emb_shape) != 2 or len(text_shape) != 2 or emb_shape[1] != text_shape[1] or 0 in text_shape:
        return False
    if weight_logits.shape != text_shape[:1] or group_index.shape != text_shape[:1]:
        return False
    if dtype not in FLOAT_DTYPES or text_pos.dtype != dtype or weight_logits.dtype != dtype:
        return False
    if group_index.dtype not in INDEX_DTYPES:
        return False
    if text_pos.device != device or group_index.device != device or weight_logits.device != device:
        return False
    if text_neg is not None and not (
        isinstance(text_neg, torch.Tensor)
        and text_neg.shape == text_shape
        and text_neg.dtype == dtype
        and text_neg.device == device
    ):
        return False
    return (
        type(num_groups) is int
        and num_groups >= 1
        and isinstance(scale, (float, int))
        and not isinstance(scale, bool)
        and math.isfinite(scale)
    )


def check_inputs(
    image_emb: torch.Tensor,
    text_pos: torch.Tensor,
    text_neg: torch.Tensor | None,
    scale: float,
    group_index: torch.Tensor,
    weight_logits: torch.Tensor,
    num_groups: int,
) -> None:
    """Raise ValueError (shape, device, value) or TypeError (dtype) naming the offending argument."""
    if _plainly_valid(image_emb, text_pos, text_neg, scale, group_index, weight_logits, num_groups):
        return
    named = {"image_emb": image_emb, "text_pos": text_pos, "group_index": group_index, "weight_logits": weight_logits}
    if text_neg is not None:
        named["text_neg"] = text_neg
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"attribute_scores: {name} must be a torch.Tensor, got {type(value).__name__}")
    _check_shapes(image_emb, text_pos, text_neg, group_index, weight_logits)
    _check_dtypes_and_devices(named, image_emb, group_index)
    _check_scalars(scale, num_groups)


def _check_shapes(image_emb: torch.Tensor, text_pos: torch.Tensor, text_neg: torch.Tensor | None,
                  group_index: torch.Tensor, weight_logits: torch.Tensor) -> None:
    if image_emb.dim() != 2 or image_emb.shape[1] == 0:
        raise ValueError(f"attribute_scores: image_emb must be (B, D) with D >= 1, got shape {tuple(image_emb.shape)}")
    dim = image_emb.shape[1]
    if text_pos.dim() != 2 or text_pos.shape[1] != dim or text_pos.shape[0] == 0:
        raise ValueError(
            f"attribute_scores: text_pos must be (A, D) with A >= 1 and D = {dim} (from image_emb), "
            f"got shape {tuple(text_pos.shape)}"
        )
    num_attr = text_pos.shape[0]
    if text_neg is not None and text_neg.shape != text_pos.shape:
        raise ValueError(
            f"attribute_scores: text_neg must have the shape of text_pos {tuple(text_pos.shape)}, "
            f"got {tuple(text_neg.shape)}"
        )
    if weight_logits.shape != (num_attr,):
        raise ValueError(
            f"attribute_scores: weight_logits must be (A,) with A = {num_attr}, got shape {tuple(weight_logits.shape)}"
        )
    if group_index.shape != (num_attr,):
        raise ValueError(
            f"attribute_scores: group_index must be (A,) with A = {num_attr}, got shape {tuple(group_index.shape)}"
        )


def _check_dtypes_and_devices(named: dict[str, torch.Tensor], image_emb: torch.Tensor,
                              group_index: torch.Tensor) -> None:
    if image_emb.dtype not in FLOAT_DTYPES:
        raise TypeError(f"attribute_scores: image_emb must be a floating tensor, got {image_emb.dtype}")
    for name in ("text_pos", "text_neg", "weight_logits"):
        if name in named and named[name].dtype != image_emb.dtype:
            raise TypeError(
                f"attribute_scores: {name} dtype {named[name].dtype} differs from image_emb dtype {image_emb.dtype}"
            )
    if group_index.dtype not in INDEX_DTYPES:
        raise TypeError(f"attribute_scores: group_index must be int64 or int32, got {group_index.dtype}")

    for name, value in named.items():
        if value.device != image_emb.device:
            raise ValueError(f"attribute_scores: {name} is on {value.device} but image_emb is on {image_emb.device}")


def _check_scalars(scale: float, num_groups: int) -> None:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"attribute_scores: num_groups must be an int >= 1, got {num_groups!r}")
    if isinstance(scale, torch.Tensor):
        raise TypeError("attribute_scores: scale must be a Python float (a fixed logit scale), got a tensor")
    if not math.isfinite(float(scale)):
        raise ValueError(f"attribute_scores: scale must be finite, got {scale!r}")


def check_group_values(group_index: torch.Tensor, num_groups: int) -> None:
    """Value range of group_index; reads the tensor, so only the reference path calls it."""
    if group_index.numel() and (int(group_index.min()) < 0 or int(group_index.max()) >= num_groups):
        raise ValueError(
            f"attribute_scores: group_index values must lie in [0, num_groups = {num_groups}), "
            f"got range [{int(group_index.min())}, {int(group_index.max())}]"
        )
