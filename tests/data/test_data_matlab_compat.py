"""The MATLAB equivalents against values MATLAB documents or produces."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import threshold_multiotsu

from iqa_plugins.data import matlab_compat as mc


def test_fspecial_disk_matches_matlab():
    # MATLAB R20xx: fspecial('disk', 1) and fspecial('disk', 2), printed to 4 decimals.
    disk1 = np.array([[0.0251, 0.1453, 0.0251], [0.1453, 0.3183, 0.1453], [0.0251, 0.1453, 0.0251]])
    disk2 = np.array(
        [
            [0, 0.0170, 0.0381, 0.0170, 0],
            [0.0170, 0.0784, 0.0796, 0.0784, 0.0170],
            [0.0381, 0.0796, 0.0796, 0.0796, 0.0381],
            [0.0170, 0.0784, 0.0796, 0.0784, 0.0170],
            [0, 0.0170, 0.0381, 0.0170, 0],
        ]
    )
    np.testing.assert_allclose(mc.fspecial_disk(1), disk1, atol=6e-5)
    np.testing.assert_allclose(mc.fspecial_disk(2), disk2, atol=6e-5)
    for r in (4, 6, 8):
        k = mc.fspecial_disk(r)
        assert k.shape == (2 * r + 1, 2 * r + 1)
        assert k.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(k, k.T)
        np.testing.assert_allclose(k, k[::-1, ::-1])
        # interior pixels are fully covered: weight 1 / (pi r^2)
        assert k[r, r] == pytest.approx(1 / (np.pi * r * r), rel=1e-9)


def test_fspecial_motion_matches_matlab():
    np.testing.assert_allclose(mc.fspecial_motion(5, 0), np.full((1, 5), 0.2), atol=1e-12)
    np.testing.assert_allclose(mc.fspecial_motion(4, 90), np.array([[0.125, 0.25, 0.25, 0.25, 0.125]]).T, atol=1e-12)
    np.testing.assert_allclose(mc.fspecial_motion(1, 37), [[1.0]], atol=1e-12)
    # fspecial('motion', 3, 45): anti-diagonal line (counter-clockwise angle)
    k = mc.fspecial_motion(3, 45)
    expected = np.array([[0, 0.0754, 0.1883], [0.0754, 0.3215, 0.0754], [0.1883, 0.0754, 0]])
    np.testing.assert_allclose(k, expected, atol=6e-5)
    for angle in (0.0, 17.5, 90.0, 133.0, 179.9):
        assert mc.fspecial_motion(10, angle).sum() == pytest.approx(1.0, abs=1e-9)


def test_gaussian_kernel_size_and_replicate_border():
    for sigma, size in ((0.1, 3), (0.5, 3), (1, 5), (2, 9), (5, 21)):
        assert mc.fspecial_gaussian_1d(sigma).size == size
    # replicated borders keep a constant image constant and a step's plateau values
    img = np.zeros((20, 30, 3))
    img[:, 15:] = 1.0
    out = mc.imgaussfilt(img, 2.0)
    np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(out[:, -1], 1.0, atol=1e-12)


def test_ycbcr_studio_range_round_trip():
    rgb = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    ycc = mc.rgb2ycbcr(rgb)
    np.testing.assert_allclose(ycc[0, 0], [16 / 255, 128 / 255, 128 / 255], atol=1e-12)
    np.testing.assert_allclose(ycc[0, 1], [235 / 255, 128 / 255, 128 / 255], atol=1e-3)
    np.testing.assert_allclose(ycc[0, 2] * 255, [81.481, 90.203, 240.0], atol=1e-3)
    x = np.random.default_rng().random((7, 9, 3))
    np.testing.assert_allclose(mc.ycbcr2rgb(mc.rgb2ycbcr(x)), x, atol=1e-12)


def test_spline_curve_is_matlab_spline():
    xs = np.linspace(0, 1, 101)
    # three knots: MATLAB's spline is the parabola through them
    c = 0.8
    np.testing.assert_allclose(
        mc.spline_curve([0, 0.5, 1], [0, c, 1], xs), np.clip((2 - 4 * c) * xs**2 + (4 * c - 1) * xs, 0, 1)
    )
    # five knots: passes through every knot, clipped to [0, 1]
    ys = [0, 0.175, 0.5, 0.825, 1]
    np.testing.assert_allclose(mc.spline_curve([0, 0.3, 0.5, 0.7, 1], ys, np.array([0, 0.3, 0.5, 0.7, 1])), ys)
    out = mc.spline_curve([0, 0.5, 1], [0, 1.05, 1], xs)
    assert out.max() == 1.0 and out.min() == 0.0


def test_imresize_nearest_indices():
    # MATLAB: imresize([1 2 3 4], 0.5, "nearest") = [2 4]
    np.testing.assert_array_equal(mc.imresize_nearest_indices(4, 2, 0.5), [1, 3])
    np.testing.assert_array_equal(mc.imresize_nearest_indices(2, 4, 2.0), [0, 0, 1, 1])
    idx = mc.imresize_nearest_indices(100, 29, 0.29)
    assert idx.min() >= 0 and idx.max() <= 99 and np.all(np.diff(idx) > 0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_multithresh_exact_matches_multiotsu(n):
    rng = np.random.default_rng()
    x = np.concatenate([rng.normal(m, 0.05, 3000) for m in np.linspace(0.15, 0.85, n + 1)]).clip(0, 1)
    ours = mc.multithresh_exact(x, n)
    q = np.rint(x * 255).astype(np.uint8)
    ref = threshold_multiotsu(q, classes=n + 1, nbins=256) / 255.0
    assert ours.shape == (n,)
    np.testing.assert_allclose(ours, ref, atol=1.5 / 255)


def test_multithresh_exact_many_classes_is_optimal_against_lloyd():
    rng = np.random.default_rng()
    x = rng.beta(2, 5, 20000)
    t = mc.multithresh_exact(x, 20)
    assert t.shape == (20,) and np.all(np.diff(t) > 0)

    def within_ss(thresholds):
        labels = np.searchsorted(thresholds, np.rint(x * 255) / 255, side="left")
        q = np.rint(x * 255)
        return sum(((q[labels == k] - q[labels == k].mean()) ** 2).sum() for k in np.unique(labels))

    # uniform thresholds (what ARNIQA uses) are worse than the optimum
    assert within_ss(t) < within_ss(np.linspace(0, 1, 22)[1:-1])


def test_mapmm():
    x = np.array([[2.0, 4.0], [6.0, 3.0]])
    np.testing.assert_allclose(mc.mapmm(x), [[0, 0.5], [1, 0.25]])
    c = np.full((2, 2), 0.3)
    assert mc.mapmm(c) is c
