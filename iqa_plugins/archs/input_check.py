"""The tensor-API check of the plugin's metrics: what an image batch must be, with errors that say why.

pyiqa's own check (``InferenceModel.is_valid_input``) reduces the batch before anything else, so an empty
or ``meta`` batch crashes inside it, compares fp16 values against ``1 + 1e-6`` in fp16 (where that is
1.0, so a valid 1.0 is refused) and checks nothing when the metric is a loss. The plugin's archs check
with :func:`check_image_batch` instead (``registration`` routes pyiqa's check to the arch's
``check_input``), so those cases get a clear error or pass as they should.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Inputs to a loss may leave [0, 1] (an unclamped generator output), but a batch reaching this is
# almost surely 0-255 pixel values: standard-normal noise of 1e15 values stays below 9.
LOSS_INPUT_LIMIT = 10.0
RANGE_TOLERANCE = 1e-6

__all__ = ["LOSS_INPUT_LIMIT", "check_image_batch"]


def check_image_batch(x: object, who: str, *, value_range: bool = False, as_loss: bool = False) -> Tensor:
    """Check ``x`` is a non-empty (N, 1|3, H, W) float batch with values; return it with 3 channels.

    ``value_range``: also require values in [0, 1] (computed in float64, so fp16/bf16 1.0 passes);
    ``as_loss``: values may leave [0, 1], but not beyond ``LOSS_INPUT_LIMIT`` (0-255 input).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: x must be a float tensor with values in [0, 1], got dtype {x.dtype} "
                        "(convert uint8 images with x.float() / 255)")
    if x.dim() != 4:
        raise ValueError(f"{who}: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{who}: x must have 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.numel() == 0:
        raise ValueError(f"{who}: x is an empty batch, shape {tuple(x.shape)}")
    if x.is_meta:
        raise ValueError(f"{who}: x is on the 'meta' device and holds no values to score; "
                         "move it to a real device (cpu, cuda)")
    if value_range or as_loss:
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{who}: x contains NaN or infinite values")
        if as_loss and max(abs(lo), abs(hi)) > LOSS_INPUT_LIMIT:
            raise ValueError(f"{who}: x ranges over [{lo:.4g}, {hi:.4g}], which looks like 0-255 pixel values; "
                             "the metric expects [0, 1] (divide by 255)")
        if value_range and not as_loss and (lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE):
            raise ValueError(f"{who}: x must lie in [0, 1], got min {lo:.4g}, max {hi:.4g}"
                             + (" (0-255 values? divide by 255)" if hi > 2 else ""))
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
