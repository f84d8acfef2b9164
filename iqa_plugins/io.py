"""Reading images for scoring: every common file variant in, RGB pixels (8-bit, or float in [0,1]) out, or a clear
error.

Handled: EXIF orientation (JPEGs from phones), palette/grey/grey+alpha/RGBA (alpha composited onto
white, as a viewer shows it), CMYK JPEGs, 16-bit greyscale PNG/TIFF (scaled by 65535, not clipped at
255), truncated or non-image files and decompression bombs (headers claiming more pixels than PIL's
``Image.MAX_IMAGE_PIXELS`` limit allows; an error naming the file). Images smaller than ``min_side`` are
refused: a quality score of a few pixels means nothing, and resizing them up would invent content.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".jp2"}
)
DEFAULT_MIN_SIDE = 16

__all__ = [
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "is_image_path",
    "probe_image",
    "read_image",
    "read_pixels",
    "require_readable",
    "to_unit_float",
]


class ImageReadError(ValueError):
    """The file could not be turned into an RGB image usable for scoring."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _rgb_pixels(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> (H,W,3) RGB pixels: uint8 for 8-bit images, float32 in [0,1] for deeper ones."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) greyscale: convert("RGB") would clip everything above 255.
        grey = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or grey.max(initial=0) > 255 else 255.0
        grey = np.clip(grey / peak, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"))


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """Pixels from :func:`read_pixels` as float32 in [0,1] (8-bit values divided by 255)."""
    if pixels.dtype != np.uint8:
        return pixels
    # uint8 first, then one in-place division: np.asarray(img, dtype=float32) is ~10x slower, same values
    array = pixels.astype(np.float32)
    return np.divide(array, 255.0, out=array)


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn whatever PIL raises while opening or decoding ``path`` into an :class:`ImageReadError`.

    A truncated file is an error even where another library has told PIL to accept truncated images
    (importing pyiqa's data sets sets ``ImageFile.LOAD_TRUNCATED_IMAGES`` process-wide): the flag is off while
    decoding here and restored afterwards.
    """
    accept_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    except Image.DecompressionBombError as error:  # not an OSError: a header claiming billions of pixels
        raise ImageReadError(path, f"refused as a possible decompression bomb: {error}") from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode this image") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format (corrupt, or not an image)") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated data, bad headers, decoder errors
        raise ImageReadError(path, f"could not decode image: {error}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = accept_truncated


def read_pixels(path: str | os.PathLike, min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Read ``path`` as RGB pixels (H,W,3), upright per its EXIF orientation: uint8 for 8-bit images,
    float32 in [0,1] for 16-bit and floating-point ones (:func:`to_unit_float` makes either float).

    Raises:
        ImageReadError: missing, unreadable, truncated, not an image, or smaller than ``min_side``.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    with _decoding(path), Image.open(path) as img:
        img = ImageOps.exif_transpose(img)  # also forces the full decode: truncation fails here
        pixels = _rgb_pixels(img)
    height, width = pixels.shape[:2]
    if min(height, width) < min_side:
        raise ImageReadError(
            path, f"image is {width}x{height}, smaller than the minimum {min_side}x{min_side} for scoring"
        )
    return pixels


def read_image(path: str | os.PathLike, min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Read ``path`` as float32 RGB (H,W,3) in [0,1], upright per its EXIF orientation.

    Raises:
        ImageReadError: missing, unreadable, truncated, not an image, or smaller than ``min_side``.
    """
    return to_unit_float(read_pixels(path, min_side))


def probe_image(path: str | os.PathLike) -> None:
    """Cheaply check that ``path`` is a whole, decodable image (for checking a training set up front).

    JPEGs are decoded at 1/8 scale (all of the compressed data is still read, so truncation shows);
    other formats are verified (PNG: every chunk's checksum). Raises :class:`ImageReadError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    with _decoding(path), Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        else:
            img.verify()


def require_readable(paths: list[str | os.PathLike], what: str, *, shown: int = 5) -> None:
    """Raise ``ValueError`` naming the unreadable files among ``paths`` (``what`` says whose they are),
    or saying that there are no readable images at all."""
    bad = []
    for path in paths:
        try:
            probe_image(path)
        except ImageReadError as error:
            bad.append(error)
    if not paths or len(bad) == len(paths):
        example = f"; e.g. {bad[0]}" if bad else ""
        raise ValueError(f"{what}: no readable images ({len(paths)} listed{example})")
    if bad:
        listing = "; ".join(str(e) for e in bad[:shown]) + (f"; and {len(bad) - shown} more" if len(bad) > shown else "")
        raise ValueError(f"{what}: {len(bad)} of {len(paths)} images are unreadable: {listing}")
