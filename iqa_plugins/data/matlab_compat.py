"""Python equivalents of the MATLAB Image Processing Toolbox calls used by KADIS-700k's ``imdist_generator.m``.

Everything works on float64 RGB arrays (H, W, 3) in [0, 1] unless stated. Filtering follows ``imfilter``'s
defaults as the generator calls it: correlation (not convolution) with replicated borders.
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
from scipy.interpolate import CubicSpline
from skimage import color as skcolor

__all__ = [
    "mapmm",
    "fspecial_gaussian_1d",
    "fspecial_disk",
    "fspecial_motion",
    "imfilter_replicate",
    "imgaussfilt",
    "rgb2gray",
    "rgb2ycbcr",
    "ycbcr2rgb",
    "rgb2lab",
    "lab2rgb",
    "spline_curve",
    "imresize_nearest_indices",
    "multithresh_exact",
]

_EPS = float(np.finfo(np.float64).eps)


def mapmm(x: np.ndarray) -> np.ndarray:
    """Min-max normalise the whole array (all channels together) to [0, 1]; constant arrays pass unchanged."""
    lo = float(x.min())
    hi = float(x.max())
    if lo < hi:
        return (x - lo) / (hi - lo)
    return x


def fspecial_gaussian_1d(sigma: float) -> np.ndarray:
    """The separable factor of ``imgaussfilt``'s kernel: size 2*ceil(2*sigma)+1, normalised to sum 1."""
    half = int(math.ceil(2.0 * sigma))
    t = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / k.sum()


def fspecial_disk(radius: float) -> np.ndarray:
    """``fspecial('disk', radius)``: the pillbox whose pixel weights are the exact pixel/disk overlap areas."""
    rad = float(radius)
    crad = int(math.ceil(rad - 0.5))
    y, x = np.mgrid[-crad : crad + 1, -crad : crad + 1].astype(np.float64)
    ax, ay = np.abs(x), np.abs(y)
    maxxy = np.maximum(ax, ay)
    minxy = np.minimum(ax, ay)
    r2 = rad * rad

    def safe_sqrt(v: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(v, 0.0))

    m1 = np.where(
        r2 < (maxxy + 0.5) ** 2 + (minxy - 0.5) ** 2, minxy - 0.5, safe_sqrt(r2 - (maxxy + 0.5) ** 2)
    )
    m2 = np.where(
        r2 > (maxxy - 0.5) ** 2 + (minxy + 0.5) ** 2, minxy + 0.5, safe_sqrt(r2 - (maxxy - 0.5) ** 2)
    )
    a1 = np.arcsin(np.clip(m1 / rad, -1.0, 1.0))
    a2 = np.arcsin(np.clip(m2 / rad, -1.0, 1.0))
    partial = (
        r2 * (0.5 * (a2 - a1) + 0.25 * (np.sin(2 * a2) - np.sin(2 * a1)))
        - (maxxy - 0.5) * (m2 - m1)
        + (m1 - minxy + 0.5)
    )
    on_edge = ((r2 < (maxxy + 0.5) ** 2 + (minxy + 0.5) ** 2) & (r2 > (maxxy - 0.5) ** 2 + (minxy - 0.5) ** 2)) | (
        (minxy == 0) & (maxxy - 0.5 < rad) & (maxxy + 0.5 >= rad)
    )
    sgrid = np.where(on_edge, partial, 0.0)
    sgrid = sgrid + ((maxxy + 0.5) ** 2 + (minxy + 0.5) ** 2 < r2)
    c = crad
    sgrid[c, c] = min(math.pi * r2, math.pi / 2)
    if crad > 0 and rad > crad - 0.5 and r2 < (crad - 0.5) ** 2 + 0.25:
        # The disk just pokes into the outermost row/column: MATLAB moves that sliver explicitly.
        m1s = math.sqrt(r2 - (crad - 0.5) ** 2)
        m1n = m1s / rad
        sg0 = 2 * (r2 * (0.5 * math.asin(m1n) + 0.25 * math.sin(2 * math.asin(m1n))) - m1s * (crad - 0.5))
        n = 2 * crad
        for (i, j) in ((n, c), (c, n), (c, 0), (0, c)):
            sgrid[i, j] = sg0
        for (i, j) in ((n - 1, c), (c, n - 1), (c, 1), (1, c)):
            sgrid[i, j] -= sg0
    sgrid[c, c] = min(sgrid[c, c], 1.0)
    return sgrid / sgrid.sum()


def fspecial_motion(length: float, angle_deg: float) -> np.ndarray:
    """``fspecial('motion', length, angle)``: an anti-aliased line of ``length`` pixels at ``angle_deg``
    degrees counter-clockwise."""
    length = max(1.0, float(length))
    half = (length - 1) / 2
    phi = (angle_deg % 180) / 180 * math.pi
    cosphi, sinphi = math.cos(phi), math.sin(phi)
    xsign = 1 if cosphi >= 0 else -1
    linewdt = 1.0
    sx = math.trunc(half * cosphi + linewdt * xsign - length * _EPS)
    sy = math.trunc(half * sinphi + linewdt - length * _EPS)
    xs = np.arange(0, sx + xsign, xsign, dtype=np.float64)
    ys = np.arange(0, sy + 1, dtype=np.float64)
    x, y = np.meshgrid(xs, ys)
    dist2line = y * cosphi - x * sinphi
    rad = np.sqrt(x * x + y * y)
    last = (rad >= half) & (np.abs(dist2line) <= linewdt)
    x2last = half - np.abs((x[last] + dist2line[last] * sinphi) / cosphi)
    dist2line[last] = np.sqrt(dist2line[last] ** 2 + x2last**2)
    dist2line = linewdt + _EPS - np.abs(dist2line)
    dist2line[dist2line < 0] = 0
    quarter = np.rot90(dist2line, 2)
    r, c = quarter.shape
    h = np.zeros((2 * r - 1, 2 * c - 1))
    h[:r, :c] = quarter
    h[r - 1 :, c - 1 :] = dist2line
    h = h / (h.sum() + _EPS * length * length)
    if cosphi > 0:
        h = np.flipud(h)
    return np.ascontiguousarray(h)


def imfilter_replicate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation of every channel with ``kernel`` (odd sizes), replicated borders, like
    ``imfilter(img, kernel, 'replicate')``."""
    return cv2.filter2D(img, cv2.CV_64F, kernel.astype(np.float64), borderType=cv2.BORDER_REPLICATE)


def imgaussfilt(img: np.ndarray, sigma: float) -> np.ndarray:
    """``imgaussfilt(img, sigma)``: separable Gaussian, size 2*ceil(2*sigma)+1, replicated borders."""
    k = fspecial_gaussian_1d(sigma)
    return cv2.sepFilter2D(img, cv2.CV_64F, k, k, borderType=cv2.BORDER_REPLICATE)


def rgb2gray(img: np.ndarray) -> np.ndarray:
    """``rgb2gray``: Rec. 601 luma with MATLAB's rounded weights."""
    return img @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


# MATLAB rgb2ycbcr for double input: studio range, Y in [16, 235]/255 and Cb, Cr in [16, 240]/255.
_YCBCR_M = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]
) / 255.0
_YCBCR_OFF = np.array([16.0, 128.0, 128.0]) / 255.0
_YCBCR_MINV = np.linalg.inv(_YCBCR_M)


def rgb2ycbcr(img: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` for double images (ITU-R BT.601, studio range)."""
    return img @ _YCBCR_M.T + _YCBCR_OFF


def ycbcr2rgb(img: np.ndarray) -> np.ndarray:
    """MATLAB ``ycbcr2rgb`` for double images (inverse of :func:`rgb2ycbcr`, unclipped)."""
    return (img - _YCBCR_OFF) @ _YCBCR_MINV.T


def rgb2lab(img: np.ndarray) -> np.ndarray:
    """``rgb2lab`` (sRGB, D65 white), same as MATLAB's default."""
    return skcolor.rgb2lab(img, illuminant="D65")


def lab2rgb(lab: np.ndarray) -> np.ndarray:
    """``lab2rgb`` (D65) with out-of-gamut colours clipped to [0, 1]."""
    with warnings.catch_warnings():
        # skimage warns when strongly saturated Lab values fall outside XYZ; clipping is the intent here.
        warnings.simplefilter("ignore", UserWarning)
        return np.clip(skcolor.lab2rgb(lab, illuminant="D65"), 0.0, 1.0)


def spline_curve(knots_x: list[float], knots_y: list[float], values: np.ndarray) -> np.ndarray:
    """A tone curve through the knots with MATLAB ``spline`` (not-a-knot; with three knots the parabola
    through them), evaluated on ``values`` and clipped to [0, 1]."""
    cs = CubicSpline(np.asarray(knots_x, float), np.asarray(knots_y, float), bc_type="not-a-knot")
    return np.clip(cs(values), 0.0, 1.0)


def imresize_nearest_indices(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Source indices that ``imresize(..., 'nearest')`` picks along one axis for ``n_out`` outputs:
    the pixel whose centre is nearest the back-projected output centre, (i + 0.5) / scale - 0.5."""
    centres = (np.arange(n_out) + 0.5) / scale
    return np.clip(np.floor(centres).astype(np.int64), 0, n_in - 1)


def multithresh_exact(values: np.ndarray, n_thresholds: int, bins: int = 256) -> np.ndarray:
    """Multi-level Otsu thresholds of ``values`` (in [0, 1]), computed exactly on a ``bins``-level histogram.

    Otsu's criterion (maximal between-class variance) equals minimal within-class sum of squares, whose
    optimum over contiguous histogram segments dynamic programming finds exactly. MATLAB's ``multithresh``
    optimises the same criterion on a 256-bin histogram by a local search for more than two thresholds, so
    this is at least as close to the criterion. Returns ``n_thresholds`` increasing thresholds; a value
    ``v`` belongs to class ``k`` when ``t[k-1] < v <= t[k]`` (``imquantize``'s rule).
    """
    q = np.clip(np.rint(values.ravel() * (bins - 1)), 0, bins - 1).astype(np.int64)
    hist = np.bincount(q, minlength=bins).astype(np.float64)
    levels = np.arange(bins, dtype=np.float64)
    c0 = np.concatenate([[0.0], np.cumsum(hist)])
    c1 = np.concatenate([[0.0], np.cumsum(hist * levels)])
    c2 = np.concatenate([[0.0], np.cumsum(hist * levels * levels)])
    # cost[i, j]: within-class sum of squares of histogram bins i..j-1 (i < j), inf otherwise.
    i_idx, j_idx = np.meshgrid(np.arange(bins + 1), np.arange(bins + 1), indexing="ij")
    w = c0[j_idx] - c0[i_idx]
    s = c1[j_idx] - c1[i_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (c2[j_idx] - c2[i_idx]) - np.where(w > 0, s * s / w, 0.0)
    cost = np.where(j_idx > i_idx, np.maximum(cost, 0.0), np.inf)
    n_classes = n_thresholds + 1
    best = cost[0].copy()  # best[j]: one class covering bins 0..j-1
    back = np.zeros((n_classes, bins + 1), dtype=np.int64)
    for k in range(1, n_classes):
        total = best[:, None] + cost
        back[k] = np.argmin(total, axis=0)
        best = total[back[k], np.arange(bins + 1)]
    cuts = []
    j = bins
    for k in range(n_classes - 1, 0, -1):
        j = int(back[k, j])
        cuts.append(j)
    cuts = np.array(sorted(cuts), dtype=np.float64)
    # A cut at bin index c means bins < c go below the threshold: place it between bins c-1 and c.
    return (cuts - 0.5) / (bins - 1)
