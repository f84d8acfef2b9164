"""Small real photographs for the data tests (scikit-image's bundled images: no download)."""

from __future__ import annotations

import numpy as np
import skimage.data
from PIL import Image


def photo_uint8(name: str, size: tuple[int, int]) -> np.ndarray:
    """skimage.data photo ``name`` resized to ``size`` = (width, height), uint8 RGB."""
    img = Image.fromarray(getattr(skimage.data, name)())
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)


def photo(name: str, size: tuple[int, int] = (128, 96)) -> np.ndarray:
    """The photo as float64 in [0, 1], min-max normalised so that the generator's input normalisation is the
    identity and full-reference comparisons see the distortion alone."""
    x = photo_uint8(name, size).astype(np.float64) / 255.0
    return (x - x.min()) / (x.max() - x.min())
