"""The 25 KADID-10k distortions at their 5 levels, after KADIS-700k's MATLAB generator ``imdist_generator.m``.

``apply_distortion(image, distortion, level, seed)`` takes and returns float RGB in [0, 1] (H, W, 3). As in
``imdist_generator.m``, the image is min-max normalised to [0, 1] (over all channels together) before and after
the distortion (``normalize=True``). Needs only numpy, SciPy, scikit-image, OpenCV and Pillow.

Where Python cannot be MATLAB-exact the substitute is documented at the function; the two substitutes the
MATLAB code forces are #15 (MATLAB denoises with the DnCNN network: here OpenCV's non-local means) and #22
(MATLAB's ``multithresh`` search: here the exact multi-level Otsu optimum on the same 256-bin histogram).
Colour conversions that can leave the RGB gamut (HSV/Lab/YCbCr round trips) clip to [0, 1] before the final
normalisation. Random distortions draw from one ``numpy.random.Generator`` made from ``seed``.

Levels are not always ordered by severity: see ``Distortion.monotone`` and ``Distortion.severity_note``.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import cv2
import numpy as np
from PIL import Image
from skimage import color as skcolor

from iqa_plugins.data import matlab_compat as mc

__all__ = [
    "Distortion",
    "DISTORTIONS",
    "NUM_DISTORTIONS",
    "NUM_LEVELS",
    "SeedLike",
    "get_distortion",
    "apply_distortion",
    "apply_distortion_uint8",
    "apply_distortions",
    "to_float",
    "to_uint8",
]

NUM_DISTORTIONS = 25
NUM_LEVELS = 5

SeedLike = Union[int, np.random.Generator, np.random.SeedSequence, None]


@dataclass(frozen=True)
class Distortion:
    """One KADID-10k distortion type.

    Attributes:
        number: KADID-10k number, 1-25.
        name: KADID-10k name, e.g. ``"Gaussian blur"``.
        slug: identifier used for CSV columns, e.g. ``"gaussian_blur"``.
        parameter: what the level values are (e.g. ``"sigma"``).
        levels: the parameter at levels 1..5, as in ``imdist_generator.m``.
        random: whether the output depends on the seed.
        monotone: whether severity grows with level (a full-reference measure falls with level).
        severity_note: how severity depends on level when it is not monotone.
    """

    number: int
    name: str
    slug: str
    parameter: str
    levels: tuple[float, float, float, float, float]
    random: bool
    monotone: bool = True
    severity_note: str = ""


# ----------------------------------------------------------------------------------------------------------------
# the distortions; x is float64 (H, W, 3) in [0, 1] after the input normalisation; each returns float64


def gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """#1 ``imgaussfilt(x, sigma)``: kernel size 2*ceil(2*sigma)+1, replicated borders."""
    return mc.imgaussfilt(x, sigma)


def lens_blur(x: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """#2 ``imfilter(x, fspecial('disk', radius), 'replicate')``."""
    return mc.imfilter_replicate(x, mc.fspecial_disk(radius))


def motion_blur(x: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """#3 ``fspecial('motion', length, angle)`` with a random angle in [0, 180) degrees, replicated borders."""
    angle = rng.uniform(0.0, 180.0)
    return mc.imfilter_replicate(x, mc.fspecial_motion(length, angle))


def color_diffusion(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#4 In Lab, blur a and b with sigma = 1.5*amount + 2 and scale them by ``amount``; L is kept."""
    lab = mc.rgb2lab(x)
    ab = mc.imgaussfilt(np.ascontiguousarray(lab[..., 1:]), 1.5 * amount + 2.0)
    lab[..., 1:] = ab * amount
    return mc.lab2rgb(lab)


def _percentile_clip_edges(e: np.ndarray, percent: float = 1.0) -> np.ndarray:
    lo = np.percentile(e, percent)
    hi = np.percentile(e, 100.0 - percent)
    return mc.mapmm(np.clip(e, lo, hi))


def color_shift(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#5 Shift the green channel by ``round(amount * a/|a|)`` pixels, ``a = rand(1, 2)``, and blend it in
    where the image has edges: weight = gradient magnitude of the grey image, Gaussian-smoothed (sigma 4),
    min-max normalised and clipped at its 1st/99th percentiles."""
    gy, gx = np.gradient(mc.rgb2gray(x))
    e = mc.mapmm(mc.imgaussfilt(np.hypot(gx, gy), 4.0))
    e = _percentile_clip_edges(e)
    a = rng.random(2)
    dx, dy = np.round(a / np.linalg.norm(a) * amount).astype(int)
    h, w = x.shape[:2]
    # out(i, j) = g(i - dy, j - dx) with replicated borders
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    g = x[..., 1]
    shifted = g[rows][:, cols]
    y = x.copy()
    y[..., 1] = shifted * e + g * (1.0 - e)
    return y


def color_quantization(x: np.ndarray, n_colors: float, rng: np.random.Generator) -> np.ndarray:
    """#6 ``rgb2ind`` with ``n_colors``: a palette built without dithering, then the image mapped onto it with
    Floyd-Steinberg dithering. Pillow's median cut stands in for MATLAB's minimum-variance palette."""
    img = Image.fromarray(to_uint8(x))
    palette = img.quantize(colors=int(n_colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = img.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).convert("RGB")
    return np.asarray(out, dtype=np.float64) / 255.0


def color_saturation_1(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """#7 Multiply HSV saturation by ``factor`` (0 gives grey, negative values invert the hue's chroma)."""
    hsv = skcolor.rgb2hsv(x)
    hsv[..., 1] *= factor
    return np.clip(skcolor.hsv2rgb(hsv), 0.0, 1.0)


def color_saturation_2(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """#8 Multiply Lab a and b by ``factor``."""
    lab = mc.rgb2lab(x)
    lab[..., 1:] *= factor
    return mc.lab2rgb(lab)


def jpeg2000(x: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """#9 JPEG 2000 at compression ratio ``ratio`` (MATLAB ``imwrite(..., 'CompressionRatio', ratio)``):
    OpenJPEG through Pillow, irreversible 9/7 wavelet, one quality layer at that rate."""
    img = Image.fromarray(to_uint8(x))
    # OpenJPEG needs each side to be at least 2^(resolutions-1) pixels.
    resolutions = max(1, min(6, int(math.floor(math.log2(max(1, min(x.shape[:2]))))) + 1))
    buf = io.BytesIO()
    img.save(
        buf,
        format="JPEG2000",
        quality_mode="rates",
        quality_layers=[float(ratio)],
        irreversible=True,
        num_resolutions=resolutions,
    )
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"), dtype=np.float64) / 255.0


def jpeg(x: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """#10 JPEG at ``quality`` (IJG scale, as MATLAB's ``imwrite``), through Pillow's libjpeg (4:2:0)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"), dtype=np.float64) / 255.0


def white_noise(x: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """#11 ``imnoise(x, 'gaussian', 0, var)``: additive Gaussian noise, clipped."""
    return np.clip(x + rng.normal(0.0, math.sqrt(var), x.shape), 0.0, 1.0)


def white_noise_color_component(x: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """#12 ``ycbcr2rgb(imnoise(rgb2ycbcr(x), 'gaussian', 0, var))``: Gaussian noise on Y, Cb and Cr
    (studio-range YCbCr as MATLAB's), clipped in YCbCr like ``imnoise``, back to RGB."""
    ycc = np.clip(mc.rgb2ycbcr(x) + rng.normal(0.0, math.sqrt(var), x.shape), 0.0, 1.0)
    return np.clip(mc.ycbcr2rgb(ycc), 0.0, 1.0)


def impulse_noise(x: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """#13 ``imnoise(x, 'salt & pepper', density)``: every sample (each channel separately) becomes 0 with
    probability density/2 and 1 with probability density/2."""
    u = rng.random(x.shape)
    y = x.copy()
    y[u < density / 2] = 0.0
    y[(u >= density / 2) & (u < density)] = 1.0
    return y


def multiplicative_noise(x: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """#14 ``imnoise(x, 'speckle', var)``: x + sqrt(12 var) x (U - 0.5), U uniform in [0, 1), clipped."""
    return np.clip(x + math.sqrt(12.0 * var) * x * (rng.random(x.shape) - 0.5), 0.0, 1.0)


# Non-local-means strength per unit of noise standard deviation (8-bit scale) and search window: of
# h/sigma in {0.5, 0.75, 1, 1.25} and windows {11, 21}, this pair restored two 512x384 photos best (mean PSNR
# over the #15 variances .01/.05/.15: 22.75 dB vs 22.10 dB for the 21x21 window) at a third of the time: the
# role DnCNN plays in the MATLAB generator, a good denoiser.
_NLM_H_PER_SIGMA = 0.75
_NLM_SEARCH = 11


def denoise(x: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """#15 Add Gaussian noise of variance ``var`` (clipped), then denoise it.

    Substitute: MATLAB uses the DnCNN network (``denoiseImage``); here OpenCV's
    ``fastNlMeansDenoisingColored`` (non-local means in Lab, 7x7 patches, 11x11 search) with a strength
    proportional to the noise level. Like DnCNN at these strong noise levels it leaves a smoothed,
    texture-less image with residual blotches, growing with the noise level.
    """
    noisy = np.clip(x + rng.normal(0.0, math.sqrt(var), x.shape), 0.0, 1.0)
    sigma255 = math.sqrt(var) * 255.0
    strength = _NLM_H_PER_SIGMA * sigma255
    out = cv2.fastNlMeansDenoisingColored(to_uint8(noisy), None, strength, strength, 7, _NLM_SEARCH)
    return out.astype(np.float64) / 255.0


def brighten(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#16 Tone curve through (0, 0), (0.5, 0.5 + amount/2), (1, 1) (MATLAB ``spline``: a parabola) applied
    to Lab L and to RGB; result = (2 * RGB-curved + Lab-curved) / 3."""
    knots_x, knots_y = [0.0, 0.5, 1.0], [0.0, 0.5 + amount / 2, 1.0]
    lab = mc.rgb2lab(x)
    lab[..., 0] = mc.spline_curve(knots_x, knots_y, lab[..., 0] / 100.0) * 100.0
    rgb_curved = mc.spline_curve(knots_x, knots_y, x)
    return (2.0 * rgb_curved + mc.lab2rgb(lab)) / 3.0


def darken(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#17 RGB tone curve through (0, 0), (0.5, 0.5 - amount/2), (1, 1) (parabola), clipped."""
    return mc.spline_curve([0.0, 0.5, 1.0], [0.0, 0.5 - amount / 2, 1.0], x)


def mean_shift(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#18 Add ``amount`` to every sample, clipped. (The final min-max normalisation then turns the shift into
    a gain with clipped highlights or shadows, as in the MATLAB generator.)"""
    return np.clip(x + amount, 0.0, 1.0)


def jitter(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#19 Five rounds of random per-pixel displacement: each pixel samples the previous image at its
    position minus a shift drawn from N(0, amount^2) per axis, bilinear, replicated borders."""
    h, w = x.shape[:2]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    y = x
    for _ in range(5):
        shifts = rng.standard_normal((2, h, w)).astype(np.float32) * np.float32(amount)
        y = cv2.remap(y, gx - shifts[1], gy - shifts[0], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return y


def _random_start(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(round(rng.random() * (hi - lo))) + lo


def non_eccentricity_patch(x: np.ndarray, n_patches: float, rng: np.random.Generator) -> np.ndarray:
    """#20 ``n_patches`` times: copy a random 16x16 patch (at least 16 px from the border) to a position moved
    by up to +-8 px in each direction. Images too small for that margin use the largest one that fits."""
    patch, radius = 16, 16
    h, w = x.shape[:2]
    y = x.copy()
    if h < patch or w < patch:
        return y
    h_lo, w_lo = min(radius, h - patch), min(radius, w - patch)
    h_hi, w_hi = max(h_lo, h - patch - radius), max(w_lo, w - patch - radius)
    for _ in range(int(n_patches)):
        ws = _random_start(rng, w_lo, w_hi)
        hs = _random_start(rng, h_lo, h_hi)
        src = y[hs : hs + patch, ws : ws + patch].copy()
        wd = min(max(int(round((rng.random() - 0.5) * radius + ws)), 0), w - patch)
        hd = min(max(int(round((rng.random() - 0.5) * radius + hs)), 0), h - patch)
        y[hd : hd + patch, wd : wd + patch] = src
    return y


def pixelate(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """#21 ``imresize`` by z = 0.95 - strength^0.6 with nearest neighbour, then back to the original size
    with nearest neighbour."""
    z = 0.95 - strength**0.6
    h, w = x.shape[:2]
    hs, ws = max(1, math.ceil(z * h)), max(1, math.ceil(z * w))
    small = x[mc.imresize_nearest_indices(h, hs, z)][:, mc.imresize_nearest_indices(w, ws, z)]
    return small[mc.imresize_nearest_indices(hs, h, h / hs)][:, mc.imresize_nearest_indices(ws, w, w / ws)]


def quantization(x: np.ndarray, n_thresholds: float, rng: np.random.Generator) -> np.ndarray:
    """#22 ``imquantize(x, multithresh(x, n))`` over all RGB samples, the class indices min-max normalised
    (so the n+1 classes become evenly spaced grey levels per channel).

    Substitute for ``multithresh``: the exact multi-level Otsu optimum on a 256-bin histogram
    (:func:`matlab_compat.multithresh_exact`); skimage's ``threshold_multiotsu`` is exact too but
    impractically slow beyond a few classes, and these levels need 8 to 21.
    """
    thresholds = mc.multithresh_exact(x, int(n_thresholds))
    labels = np.searchsorted(thresholds, x, side="left").astype(np.float64)
    return mc.mapmm(labels)


def color_block(x: np.ndarray, n_blocks: float, rng: np.random.Generator) -> np.ndarray:
    """#23 ``n_blocks`` 32x32 squares of a uniformly random colour at uniformly random positions."""
    size = 32
    h, w = x.shape[:2]
    y = x.copy()
    for _ in range(int(n_blocks)):
        colour = rng.random(3)
        px = int(math.floor(rng.random() * max(w - size, 0)))
        py = int(math.floor(rng.random() * max(h - size, 0)))
        y[py : py + size, px : px + size] = colour
    return y


def high_sharpen(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#24 ``imsharpen(x, 'Radius', 3, 'Amount', amount)``: unsharp mask of Lab L with a Gaussian of sigma 3
    (kernel 13x13, replicated borders), L clipped to [0, 100]."""
    lab = mc.rgb2lab(x)
    lum = lab[..., 0]
    lab[..., 0] = np.clip(lum + amount * (lum - mc.imgaussfilt(lum, 3.0)), 0.0, 100.0)
    return mc.lab2rgb(lab)


def contrast_change(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """#25 Tone curve (MATLAB ``spline``, not-a-knot) through x = [0 .3 .5 .7 1],
    y = [0, .25 - amount/4, .5, .75 + amount/4, 1], clipped. Identity would be amount = -0.2."""
    return mc.spline_curve([0.0, 0.3, 0.5, 0.7, 1.0], [0.0, 0.25 - amount / 4, 0.5, 0.75 + amount / 4, 1.0], x)


_Fn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

_TABLE: list[tuple[Distortion, _Fn]] = [
    (Distortion(1, "Gaussian blur", "gaussian_blur", "sigma", (0.1, 0.5, 1, 2, 5), False), gaussian_blur),
    (Distortion(2, "Lens blur", "lens_blur", "radius", (1, 2, 4, 6, 8), False), lens_blur),
    (Distortion(3, "Motion blur", "motion_blur", "length", (1, 2, 4, 6, 10), True), motion_blur),
    (Distortion(4, "Color diffusion", "color_diffusion", "amount", (1, 3, 6, 8, 12), False), color_diffusion),
    (
        Distortion(
            5,
            "Color shift",
            "color_shift",
            "amount (pixels)",
            (1, 3, 6, 8, 12),
            True,
            monotone=False,
            severity_note="the shift grows with level, but once it exceeds the width of the edges (about 6 px, "
            "level 3) the misplaced green no longer correlates with anything and full-reference measures "
            "saturate: levels 3-5 score about the same",
        ),
        color_shift,
    ),
    (
        Distortion(6, "Color quantization", "color_quantization", "colours", (64, 48, 32, 16, 8), False),
        color_quantization,
    ),
    (
        Distortion(
            7,
            "Color saturation 1",
            "color_saturation_1",
            "HSV saturation factor",
            (0.4, 0.2, 0.1, 0, -0.4),
            False,
            severity_note="ordered by |1 - factor| = .6, .8, .9, 1, 1.4: monotone although level 5 is negative",
        ),
        color_saturation_1,
    ),
    (
        Distortion(
            8,
            "Color saturation 2",
            "color_saturation_2",
            "Lab a,b factor",
            (1, 2, 3, 6, 9),
            False,
            severity_note="level 1 (factor 1) is the identity up to the Lab round trip",
        ),
        color_saturation_2,
    ),
    (Distortion(9, "JPEG2000", "jpeg2000", "compression ratio", (16, 32, 45, 120, 400), False), jpeg2000),
    (Distortion(10, "JPEG", "jpeg", "quality", (43, 36, 24, 7, 4), False), jpeg),
    (Distortion(11, "White noise", "white_noise", "variance", (0.001, 0.002, 0.003, 0.005, 0.01), True), white_noise),
    (
        Distortion(
            12,
            "White noise in color component",
            "white_noise_color_component",
            "variance (YCbCr)",
            (0.0001, 0.0005, 0.001, 0.002, 0.003),
            True,
        ),
        white_noise_color_component,
    ),
    (Distortion(13, "Impulse noise", "impulse_noise", "density", (0.001, 0.005, 0.01, 0.02, 0.03), True), impulse_noise),
    (
        Distortion(
            14, "Multiplicative noise", "multiplicative_noise", "variance", (0.001, 0.005, 0.01, 0.02, 0.05), True
        ),
        multiplicative_noise,
    ),
    (Distortion(15, "Denoise", "denoise", "noise variance", (0.01, 0.03, 0.05, 0.1, 0.15), True), denoise),
    (Distortion(16, "Brighten", "brighten", "amount", (0.1, 0.2, 0.4, 0.7, 1.1), False), brighten),
    (Distortion(17, "Darken", "darken", "amount", (0.05, 0.1, 0.2, 0.4, 0.8), False), darken),
    (
        Distortion(
            18,
            "Mean shift",
            "mean_shift",
            "shift",
            (0.15, 0.08, 0, -0.08, -0.15),
            False,
            monotone=False,
            severity_note="levels run through 0: level 3 is the identity, severity grows with |shift| "
            "(levels 2 and 4 milder than 1 and 5)",
        ),
        mean_shift,
    ),
    (Distortion(19, "Jitter", "jitter", "shift std (pixels)", (0.05, 0.1, 0.2, 0.5, 1), True), jitter),
    (
        Distortion(
            20, "Non-eccentricity patch", "non_eccentricity_patch", "patches", (20, 40, 60, 80, 100), True
        ),
        non_eccentricity_patch,
    ),
    (
        Distortion(
            21,
            "Pixelate",
            "pixelate",
            "strength",
            (0.01, 0.05, 0.1, 0.2, 0.5),
            False,
            monotone=False,
            severity_note="the intermediate resolution (0.89 to 0.29 of the original) falls with level, but at "
            "levels 1-4 full-reference measures are dominated by the up-to-one-pixel displacements that "
            "nearest-neighbour resampling by a non-integer factor causes at any level, so they are not "
            "ordered there; level 5 is clearly the worst",
        ),
        pixelate,
    ),
    (Distortion(22, "Quantization", "quantization", "thresholds", (20, 16, 13, 10, 7), False), quantization),
    (Distortion(23, "Color block", "color_block", "blocks", (2, 4, 6, 8, 10), True), color_block),
    (Distortion(24, "High sharpen", "high_sharpen", "amount", (1, 2, 3, 6, 12), False), high_sharpen),
    (
        Distortion(
            25,
            "Contrast change",
            "contrast_change",
            "curve amount",
            (0.3, 0.15, 0, -0.4, -0.6),
            False,
            monotone=False,
            severity_note="the curve is the identity at amount -0.2, between levels 3 and 4: levels 1-3 "
            "raise contrast less and less, levels 4-5 lower it more and more; 3 and 4 are equally far "
            "from the identity in opposite directions",
        ),
        contrast_change,
    ),
]

DISTORTIONS: tuple[Distortion, ...] = tuple(d for d, _ in _TABLE)
_FUNCTIONS: dict[int, _Fn] = {d.number: fn for d, fn in _TABLE}


def _lookup_key(text: str) -> str:
    key = text.strip().lower().replace("colour", "color")
    return re.sub(r"[^a-z0-9]", "", key)


_BY_KEY: dict[str, Distortion] = {}
for _d in DISTORTIONS:
    _BY_KEY[_lookup_key(_d.name)] = _d
    _BY_KEY[_lookup_key(_d.slug)] = _d


def get_distortion(distortion: int | str | Distortion) -> Distortion:
    """The table entry for a KADID number (1-25), a name or slug (case, spaces, hyphens, underscores and
    'colour'/'color' do not matter), or a :class:`Distortion`."""
    if isinstance(distortion, Distortion):
        return distortion
    if isinstance(distortion, (int, np.integer)) and not isinstance(distortion, bool):
        if 1 <= int(distortion) <= NUM_DISTORTIONS:
            return DISTORTIONS[int(distortion) - 1]
        raise ValueError(f"distortion must be a KADID number in 1..{NUM_DISTORTIONS}, got {distortion}")
    if isinstance(distortion, str):
        if distortion.strip().isdigit():
            return get_distortion(int(distortion.strip()))
        found = _BY_KEY.get(_lookup_key(distortion))
        if found is None:
            raise ValueError(
                f"distortion {distortion!r} is not a KADID-10k distortion; known slugs: "
                + ", ".join(d.slug for d in DISTORTIONS)
            )
        return found
    raise ValueError(f"distortion must be an int, a str or a Distortion, got {type(distortion).__name__}")


def _check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 1 <= int(level) <= NUM_LEVELS:
        raise ValueError(f"level must be an integer in 1..{NUM_LEVELS}, got {level!r}")
    return int(level)


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float [0, 1] to uint8 with rounding (MATLAB ``im2uint8``)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 to float64 in [0, 1]."""
    return np.asarray(x, dtype=np.float64) / 255.0


def _as_working_float(image: np.ndarray) -> np.ndarray:
    _check_image(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be a float array in [0, 1], got dtype {image.dtype} (use apply_distortion_uint8 for uint8)"
        )
    x = image.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or infinite values")
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise ValueError(f"image values must lie in [0, 1], got [{x.min():.4g}, {x.max():.4g}]")
    return np.clip(x, 0.0, 1.0)


def _apply(x: np.ndarray, dist: Distortion, level: int, rng: np.random.Generator, normalize: bool) -> np.ndarray:
    if normalize:
        x = mc.mapmm(x)
    y = _FUNCTIONS[dist.number](np.ascontiguousarray(x), float(dist.levels[level - 1]), rng)
    if normalize:
        y = mc.mapmm(y)
    return np.clip(y, 0.0, 1.0)


def apply_distortion(
    image: np.ndarray,
    distortion: int | str | Distortion,
    level: int,
    seed: SeedLike = None,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """Apply one KADID-10k distortion.

    Args:
        image: float RGB (H, W, 3) in [0, 1] (float32 or float64; the output has the same dtype).
        distortion: KADID number 1-25, name or slug (see :func:`get_distortion`).
        level: 1-5.
        seed: int, ``SeedSequence`` or ``numpy.random.Generator`` for the random distortions (a Generator is
            used and advanced in place); None draws fresh randomness.
        normalize: min-max normalise the image to [0, 1] before and after, as ``imdist_generator.m`` does.
    """
    dist = get_distortion(distortion)
    level = _check_level(level)
    x = _as_working_float(image)
    rng = np.random.default_rng(seed)
    return _apply(x, dist, level, rng, normalize).astype(image.dtype, copy=False)


def apply_distortion_uint8(
    image: np.ndarray,
    distortion: int | str | Distortion,
    level: int,
    seed: SeedLike = None,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """:func:`apply_distortion` for uint8 RGB (H, W, 3) images; returns uint8 (rounded)."""
    _check_image(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 for apply_distortion_uint8, got dtype {image.dtype}")
    return to_uint8(apply_distortion(to_float(image), distortion, level, seed, normalize=normalize))


def apply_distortions(
    image: np.ndarray,
    steps: Sequence[tuple[int | str | Distortion, int]],
    seed: SeedLike = None,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """Apply several distortions in sequence, ``steps`` = [(distortion, level), ...], drawing all randomness
    from one generator made from ``seed``. Float RGB in [0, 1] in and out, as :func:`apply_distortion`."""
    resolved = [(get_distortion(d), _check_level(lvl)) for d, lvl in steps]
    x = _as_working_float(image)
    rng = np.random.default_rng(seed)
    for dist, level in resolved:
        x = _apply(x, dist, level, rng, normalize)
    return x.astype(image.dtype, copy=False)
