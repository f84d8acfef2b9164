"""Fixtures of the bad-input and fault battery: small image sets and a tiny DR.Experts checkpoint in the
real compact format (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from robust_helpers import run_cli, save_random_png

from iqa_plugins.scoring_output import normalise_path


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def good_images(tmp_path):
    """Three small, valid images in tmp/imgs; returns (folder, their normalised paths)."""
    root = tmp_path / "imgs"
    paths = [save_random_png(root / name, seed=i) for i, name in enumerate(("a.png", "b.png", "sub/c.png"))]
    return root, sorted(normalise_path(p) for p in paths)


@pytest.fixture(scope="session")
def drexperts_checkpoint(tmp_path_factory) -> Path:
    """A small DR.Experts with random weights, saved in the compact checkpoint format."""
    import torch

    from iqa_plugins.archs.drexperts_arch import DRExperts
    from iqa_plugins.archs.drexperts_arch import save_pretrained

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "drexperts_small.pth"
    save_pretrained(DRExperts(pretrained=False, config="small").eval(), path)
    return path
