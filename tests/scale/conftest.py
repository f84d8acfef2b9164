"""Fixtures of the scale-out tests: small DR.Experts weights saved as a user's checkpoint, and photo folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory) -> Path:
    """A compact DR.Experts checkpoint of the small config (random weights: scoring does not depend on training)."""
    import torch

    from iqa_plugins.archs.drexperts_arch import DRExperts, save_pretrained

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "DRExperts_small.pth"
    save_pretrained(DRExperts(pretrained=False, config="small"), path, source="test: random small config")
    return path


def _write_photos(folder: Path, sizes: list[tuple[int, int]], first: int = 0) -> list[Path]:
    rng = np.random.default_rng()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, size in enumerate(sizes, start=first):
        path = folder / f"img{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def write_photos():
    """``write_photos(folder, [(h, w), ...], first=0)``: random RGB PNGs img<first>.png...; returns their paths."""
    return _write_photos
