"""Test-time crop protocol shared by the archs that score fixed-size crops of an image at its own resolution.

One crop is the centre crop; n > 1 crops are drawn uniformly over the valid offsets from a generator seeded
with ``seed``, so the same image always gets the same crops (the authors of DR.Experts draw them at random
every call). An image whose shorter side is below the crop size is first upscaled bilinearly, keeping its
aspect ratio, so that it can be cropped at all (torchvision's RandomCrop would raise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_offsets", "upscale_to_min_side"]


def upscale_to_min_side(x: Tensor, size: int) -> Tensor:
    """(N, C, H, W) upscaled bilinearly, aspect kept, so that min(H, W) >= ``size``; unchanged if it already is."""
    h, w = x.shape[-2:]
    if min(h, w) >= size:
        return x
    scale = size / min(h, w)
    return F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                         align_corners=False)


def crop_offsets(height: int, width: int, size: int, num_crops: int, seed: int) -> list[tuple[int, int]]:
    """(top, left) of ``num_crops`` crops of ``size`` inside a (height, width) image (each side >= size)."""
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    if min(height, width) < size:
        raise ValueError(f"a {height}x{width} image is smaller than the {size}x{size} crop; upscale it first")
    if num_crops == 1:
        return [((height - size) // 2, (width - size) // 2)]
    generator = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, height - size + 1, (num_crops,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (num_crops,), generator=generator).tolist()
    return list(zip(tops, lefts))
