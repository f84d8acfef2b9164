"""The 25 KADID-10k distortions on real photos: contract, determinism, severity ordering, specific behaviour."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
from data_photos import photo, photo_uint8
from PIL import Image
from skimage.metrics import structural_similarity

from iqa_plugins.data.distortions import (
    DISTORTIONS,
    apply_distortion,
    apply_distortion_uint8,
    apply_distortions,
    get_distortion,
)

NUMBERS = [d.number for d in DISTORTIONS]
RANDOM = [d.number for d in DISTORTIONS if d.random]


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return photo("coffee")


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, channel_axis=2, data_range=1.0)


def ssim_by_level(img: np.ndarray, number: int, seed: int = 0) -> list[float]:
    return [ssim(img, apply_distortion(img, number, lv, seed=seed)) for lv in range(1, 6)]


# ---------------------------------------------------------------------------------------------------------------
# the table and argument checks


def test_table():
    assert [d.number for d in DISTORTIONS] == list(range(1, 26))
    assert len({d.slug for d in DISTORTIONS}) == 25
    assert all(len(d.levels) == 5 for d in DISTORTIONS)
    assert DISTORTIONS[8].levels == (16, 32, 45, 120, 400)  # JPEG2000: not ARNIQA's 170
    assert DISTORTIONS[23].levels == (1, 2, 3, 6, 12)
    assert set(RANDOM) == {3, 5, 11, 12, 13, 14, 15, 19, 20, 23}
    assert {d.number for d in DISTORTIONS if not d.monotone} == {5, 18, 21, 25}
    assert all(d.severity_note for d in DISTORTIONS if not d.monotone)


@pytest.mark.parametrize(
    "key, number",
    [
        (7, 7),
        ("7", 7),
        ("Gaussian blur", 1),
        ("gaussian-blur", 1),
        ("GAUSSIAN_BLUR", 1),
        ("  jpeg 2000 ", 9),
        ("Colour saturation 2", 8),
        ("non eccentricity patch", 20),
        ("White noise in color component", 12),
    ],
)
def test_lookup_is_tolerant(key, number):
    assert get_distortion(key).number == number


def test_bad_arguments_name_the_argument(small):
    with pytest.raises(ValueError, match="distortion"):
        apply_distortion(small, 26, 1)
    with pytest.raises(ValueError, match="distortion"):
        apply_distortion(small, "sharpen blur", 1)
    with pytest.raises(ValueError, match="level"):
        apply_distortion(small, 1, 0)
    with pytest.raises(ValueError, match="level"):
        apply_distortion(small, 1, 2.5)
    with pytest.raises(ValueError, match="image"):
        apply_distortion(small[..., :2], 1, 1)
    with pytest.raises(ValueError, match="image"):
        apply_distortion(small[..., 0], 1, 1)
    with pytest.raises(ValueError, match="image"):
        apply_distortion((small * 255).astype(np.uint8), 1, 1)
    with pytest.raises(ValueError, match=r"image values"):
        apply_distortion(small * 2, 1, 1)
    with pytest.raises(ValueError, match="image"):
        apply_distortion_uint8(small, 1, 1)


# ---------------------------------------------------------------------------------------------------------------
# contract on every distortion and level


@pytest.mark.parametrize("number", NUMBERS)
def test_every_level_keeps_shape_dtype_range(number, small):
    x32 = small.astype(np.float32)
    for level in range(1, 6):
        y = apply_distortion(x32, number, level, seed=level)
        assert y.shape == x32.shape and y.dtype == np.float32
        assert np.isfinite(y).all() and y.min() >= 0.0 and y.max() <= 1.0
        assert y.min() == 0.0 and y.max() == 1.0  # MATLAB's final min-max normalisation
    y64 = apply_distortion(small, number, 3, seed=0)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, apply_distortion(x32, number, 3, seed=0), atol=2e-2)


@pytest.mark.parametrize("number", NUMBERS)
def test_determinism(number, small):
    a = apply_distortion(small, number, 4, seed=123)
    b = apply_distortion(small, number, 4, seed=123)
    np.testing.assert_array_equal(a, b)
    c = apply_distortion(small, number, 4, seed=124)
    if number in RANDOM:
        assert not np.array_equal(a, c), "a random distortion ignored its seed"
    else:
        np.testing.assert_array_equal(a, c)
    # a Generator is accepted and advanced
    rng = np.random.default_rng(5)
    first = apply_distortion(small, number, 4, seed=rng)
    np.testing.assert_array_equal(first, apply_distortion(small, number, 4, seed=np.random.default_rng(5)))


def test_uint8_helper_matches_float_path():
    img = photo_uint8("chelsea", (128, 96))
    out = apply_distortion_uint8(img, "jpeg", 4)
    assert out.dtype == np.uint8 and out.shape == img.shape
    ref = apply_distortion(img / 255.0, "jpeg", 4)
    np.testing.assert_array_equal(out, np.rint(ref * 255).astype(np.uint8))


def test_sequence_shares_one_generator(small):
    steps = [("white noise", 3), (23, 2), ("jitter", 1)]
    rng = np.random.default_rng(9)
    manual = small
    for d, lv in steps:
        manual = apply_distortion(manual, d, lv, seed=rng)
    np.testing.assert_array_equal(apply_distortions(small, steps, seed=9), manual)


def test_distortions_do_not_need_torch(python_cmd):
    code = (
        "import sys; import iqa_plugins.data.distortions, iqa_plugins.data.generator; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([*python_cmd, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------------------------
# severity grows with level


MONOTONE = [d.number for d in DISTORTIONS if d.monotone]
# Distortions placing 16x16 patches, 32x32 blocks or 8-21 grey levels need room to show their level.
NEEDS_SIZE = {20, 22, 23}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((a - b) ** 2), 1e-10)))


@pytest.mark.parametrize("number", MONOTONE)
@pytest.mark.parametrize("name", ["coffee", "astronaut", "chelsea"])
def test_full_reference_quality_falls_with_level(number, name):
    img = photo(name, (256, 192) if number in NEEDS_SIZE else (128, 96))
    # Colour diffusion multiplies chroma by its amount: from level 3 on colours clip and SSIM, blind to the
    # size of the colour error, saturates; PSNR measures it.
    measure = psnr if number == 4 else ssim
    scores = [measure(img, apply_distortion(img, number, lv, seed=3)) for lv in range(1, 6)]
    assert all(a > b for a, b in zip(scores, scores[1:])), f"#{number} on {name}: {measure.__name__} {scores}"


@pytest.mark.parametrize("name", ["coffee", "astronaut"])
def test_mean_shift_severity_follows_absolute_shift(name):
    img = photo(name)
    s = ssim_by_level(img, 18)
    np.testing.assert_array_equal(apply_distortion(img, 18, 3), img)  # shift 0: the identity
    assert s[2] > s[1] > s[0] and s[2] > s[3] > s[4]


@pytest.mark.parametrize("name", ["coffee", "astronaut"])
def test_contrast_change_passes_through_identity_between_levels_3_and_4(name):
    img = photo(name)
    s = ssim_by_level(img, 25)
    assert s[0] < s[1] < s[2] and s[3] > s[4]
    # levels 1-3 raise contrast (spread grows), levels 4-5 lower it
    spread = [apply_distortion(img, 25, lv, normalize=False).std() for lv in range(1, 6)]
    assert spread[0] > spread[1] > spread[2] > img.std() > spread[3] > spread[4]


@pytest.mark.parametrize("name", ["coffee", "astronaut"])
def test_color_shift_grows_then_saturates(name):
    img = photo(name, (256, 192))
    for seed in (0, 1):
        s = ssim_by_level(img, 5, seed=seed)
        assert s[0] > s[1] > s[2], s
        assert max(s[3], s[4]) < s[1] and abs(s[4] - s[2]) < 0.03, s


@pytest.mark.parametrize("name", ["coffee", "astronaut"])
def test_pixelate_resolution_falls_with_level(name):
    img = photo(name, (256, 192))
    s = ssim_by_level(img, 21)
    assert s[4] < min(s[:4])
    distinct_rows = []
    for lv in range(1, 6):
        y = apply_distortion(img, 21, lv)
        distinct_rows.append(1 + int(np.any(np.diff(y, axis=0) != 0, axis=(1, 2)).sum()))
    assert all(a > b for a, b in zip(distinct_rows, distinct_rows[1:])), distinct_rows
    assert distinct_rows[0] == pytest.approx(192 * (0.95 - 0.01**0.6), abs=2)
    assert distinct_rows[4] == pytest.approx(192 * (0.95 - 0.5**0.6), abs=2)


# ---------------------------------------------------------------------------------------------------------------
# behaviour of individual distortions


def test_identity_levels(small):
    np.testing.assert_allclose(apply_distortion(small, "motion blur", 1, seed=1), small, atol=1e-12)
    np.testing.assert_allclose(apply_distortion(small, "gaussian blur", 1), small, atol=1e-9)
    np.testing.assert_allclose(apply_distortion(small, "color saturation 2", 1), small, atol=2e-3)


def test_white_noise_variance():
    flat = np.full((200, 200, 3), 0.5)
    y = apply_distortion(flat, 11, 5, seed=0, normalize=False)
    assert y.std() == pytest.approx(np.sqrt(0.01), rel=0.02)
    y = apply_distortion(flat, 14, 5, seed=0, normalize=False)  # speckle: 0.5 * sqrt(12 v) * U(-.5, .5)
    assert y.std() == pytest.approx(0.5 * np.sqrt(0.05), rel=0.03)
    assert np.abs(y - 0.5).max() <= 0.5 * np.sqrt(12 * 0.05) / 2 + 1e-12  # uniform, bounded


def test_impulse_noise_density_per_sample():
    flat = np.full((200, 200, 3), 0.5)
    y = apply_distortion(flat, 13, 5, seed=0, normalize=False)
    assert (y == 0).mean() == pytest.approx(0.015, abs=0.002)
    assert (y == 1).mean() == pytest.approx(0.015, abs=0.002)
    # per channel, as MATLAB's imnoise on an RGB array: some pixels are hit in one channel only
    hit = (y != 0.5).sum(axis=2)
    assert (hit == 1).sum() > 10 * (hit == 3).sum()


def test_color_quantization_limits_colours(small):
    for lv, n in enumerate((64, 48, 32, 16, 8), start=1):
        y = apply_distortion(small, 6, lv, normalize=False)
        assert len(np.unique(np.rint(y * 255).reshape(-1, 3), axis=0)) <= n


def test_quantization_levels(small):
    for lv, n in enumerate((20, 16, 13, 10, 7), start=1):
        y = apply_distortion(small, 22, lv)
        values = np.unique(y)
        assert len(values) <= n + 1
        # class indices min-max normalised: evenly spaced levels
        np.testing.assert_allclose(values * (len(values) - 1), np.round(values * (len(values) - 1)), atol=1e-9)


def test_color_block_paints_uniform_squares():
    img = photo("astronaut", (256, 192))
    y = apply_distortion(img, 23, 1, seed=4, normalize=False)
    changed = np.any(y != img, axis=2)
    assert 32 * 32 <= changed.sum() <= 2 * 32 * 32
    assert len(np.unique(y[changed].round(12), axis=0)) <= 2


def test_non_eccentricity_moves_patches_locally():
    img = photo("astronaut", (256, 192))
    y = apply_distortion(img, 20, 1, seed=2, normalize=False)
    changed = np.any(y != img, axis=2)
    rows, cols = np.nonzero(changed)
    assert rows.min() >= 16 - 8 and cols.min() >= 16 - 8
    assert rows.max() < 192 - 16 + 8 and cols.max() < 256 - 16 + 8
    assert changed.sum() <= 20 * 16 * 16


def test_saturation_1_level_4_is_grey(small):
    y = apply_distortion(small, 7, 4, normalize=False)
    np.testing.assert_allclose(y[..., 0], y[..., 1], atol=1e-9)
    np.testing.assert_allclose(y[..., 1], y[..., 2], atol=1e-9)


def test_jpeg_matches_pillow(small):
    y = apply_distortion(small, 10, 2, normalize=False)
    buf = io.BytesIO()
    Image.fromarray(np.rint(small * 255).astype(np.uint8)).save(buf, format="JPEG", quality=36)
    ref = np.asarray(Image.open(buf), dtype=np.float64) / 255
    np.testing.assert_array_equal(y, ref)


def test_jpeg2000_rate_grows_with_level():
    img = photo("astronaut", (256, 192))
    errs = [np.abs(apply_distortion(img, 9, lv, normalize=False) - img).mean() for lv in range(1, 6)]
    assert all(a < b for a, b in zip(errs, errs[1:]))


def test_tiny_images_do_not_crash():
    rng = np.random.default_rng()
    tiny = rng.random((20, 24, 3))
    for number in NUMBERS:
        y = apply_distortion(tiny, number, 5, seed=0)
        assert y.shape == tiny.shape and np.isfinite(y).all()
