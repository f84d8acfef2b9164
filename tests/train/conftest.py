"""Fixtures of the training tests: a tiny image set and the tiny test arch registered in pyiqa."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup, shared with the DDP worker script

from tiny_setup import make_image_set, register_tiny_arch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    """(image folder, meta CSV) of 12 small labelled images."""
    import pyiqa  # noqa: F401

    register_tiny_arch()
    folder = tmp_path_factory.mktemp("tiny_set")
    return folder, make_image_set(folder)
