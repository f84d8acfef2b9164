"""Every awkward input a user's folder holds: read correctly, or refused with the file named."""

import numpy as np
import pytest
from PIL import Image

from iqa_plugins.io import ImageReadError, read_image
from iqa_plugins.scoring import collect_images


def _rgb(h=40, w=60, seed=None):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_plain_rgb_png_is_exact(tmp_path):
    pixels = _rgb()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), pixels)


def test_corrupt_file_is_named(tmp_path):
    Image.fromarray(_rgb(200, 200)).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg: could not decode"):
        read_image(tmp_path / "cut.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="notes.jpg: not a recognised image"):
        read_image(tmp_path / "notes.jpg")


def test_one_pixel_image_is_refused(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    with pytest.raises(ImageReadError, match="1x1, smaller than the minimum 16x16"):
        read_image(tmp_path / "dot.png")
    assert read_image(tmp_path / "dot.png", min_side=1).shape == (1, 1, 3)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    grey = _rgb()[..., 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_allclose(out[..., 1], grey / 255.0, atol=1e-6)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:10, :, 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = read_image(tmp_path / "t.png")
    np.testing.assert_allclose(out[0, 0], [1, 0, 0])
    np.testing.assert_allclose(out[-1, -1], [1, 1, 1])


def test_16bit_png_keeps_its_range(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]] * 16, dtype=np.uint16)
    values = np.repeat(values, 4, axis=1)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = read_image(tmp_path / "deep.png")
    np.testing.assert_allclose(out[0, ::4, 0], [0, 0.25, 0.5, 1.0], atol=1e-4)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(tmp_path / "print.jpg")  # pure red in CMYK
    out = read_image(tmp_path / "print.jpg")
    assert out.shape == (24, 32, 3)
    assert out[..., 0].mean() > 0.9 and out[..., 1].mean() < 0.1


def test_exif_rotated_jpeg_is_upright(tmp_path):
    pixels = np.zeros((30, 50, 3), np.uint8)
    pixels[:, :10] = 255  # white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "phone.jpg")
    assert out.shape == (50, 30, 3)  # displayed portrait
    assert out[:10].mean() > 0.9 and out[-10:].mean() < 0.1  # the band is now on top


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


def test_collect_images_walks_globs_and_reports_empty_or_missing(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("a/2.png", "a/b/1.jpg", "a/readme.txt"):
        Image.fromarray(_rgb()).save(tmp_path / name, format="PNG") if name.endswith(("png", "jpg")) else (
            tmp_path / name).write_text("x")
    found, failures = collect_images(
        [str(tmp_path / "a"), str(tmp_path / "a" / "*.png"), str(tmp_path / "empty"),
         str(tmp_path / "missing"), str(tmp_path / "*.webp")]
    )
    assert found == [str(tmp_path / "a" / "2.png"), str(tmp_path / "a" / "b" / "1.jpg")]
    reasons = {f.path: f.reason for f in failures}
    assert reasons[str(tmp_path / "empty")] == "directory contains no image files"
    assert reasons[str(tmp_path / "missing")] == "no such file or directory"
    assert reasons[str(tmp_path / "*.webp")] == "pattern matches no image files"


def test_truncated_file_is_an_error_even_when_pil_was_told_to_accept_them(tmp_path, monkeypatch):
    from PIL import ImageFile

    Image.fromarray(_rgb(200, 200)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what importing pyiqa's data sets does
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
