"""The shared test-time crop protocol (DR.Experts and ExIQA's crops input)."""

from __future__ import annotations

import pytest
import torch

from iqa_plugins.archs.crops import crop_offsets, upscale_to_min_side


def test_offsets_are_valid_seeded_and_centred_for_one():
    h, w, size = int(torch.randint(40, 90, ())), int(torch.randint(40, 90, ())), 32
    offsets = crop_offsets(h, w, size, 30, seed=3)
    assert len(offsets) == 30 and all(0 <= t <= h - size and 0 <= l <= w - size for t, l in offsets)
    assert offsets == crop_offsets(h, w, size, 30, seed=3) != crop_offsets(h, w, size, 30, seed=4)
    assert crop_offsets(h, w, size, 1, seed=3) == [((h - size) // 2, (w - size) // 2)]
    with pytest.raises(ValueError, match="smaller than the 32x32 crop"):
        crop_offsets(31, 100, size, 2, seed=0)
    with pytest.raises(ValueError, match="num_crops"):
        crop_offsets(h, w, size, 0, seed=0)


def test_upscale_keeps_the_aspect_and_leaves_large_images_alone():
    x = torch.rand(2, 3, 20, 50)
    up = upscale_to_min_side(x, 32)
    assert up.shape == (2, 3, 32, 80)
    big = torch.rand(1, 3, 40, 33)
    assert upscale_to_min_side(big, 32) is big
