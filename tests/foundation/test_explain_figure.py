"""`iqa-plugins explain`: the figures show what the models computed, where they computed it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_plugins.archs.drexperts_arch import DRExperts
from iqa_plugins.archs.drexperts_arch import save_pretrained as save_drexperts
from iqa_plugins.archs.exiqa_arch import ExIQA
from iqa_plugins.archs.exiqa_arch import save_pretrained as save_exiqa
from iqa_plugins.explain_figure import attention_heatmap, explanation_figure

# A dark photo with one bright square (a "colour block", KADID-10k distortion #23).
HEIGHT, WIDTH = 96, 128
SQUARE = (slice(56, 80), slice(16, 40))  # rows, columns


def _blocked_image() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 0.15, dtype=np.float32)
    image[SQUARE] = 0.95
    return image


def _attending_drexperts(num_crops: int) -> DRExperts:
    """A small DR.Experts whose weights make every expert attend to bright patches.

    Backbone blocks switched off (layer scale 0) and no position embedding, so each patch token is the
    normalised patch embedding: dark and bright patches point in nearly opposite directions. The second
    softmax's query is the bright-patch token itself, the first softmax is uniform, and alpha = -1 adds the
    two, so the refined attention peaks on the bright patches.
    """
    config = {"base": "small", "img_size": 64,
              "backbone_kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8}}
    model = DRExperts(pretrained=False, config=config, num_crops=num_crops, resize=None).eval()
    backbone, dsdm = model.backbone, model.dsdm
    with torch.no_grad():
        backbone.pos_embed.zero_()
        backbone.patch_embed.proj.bias.zero_()
        for block in backbone.blocks:
            block.ls1.gamma.zero_()
            block.ls2.gamma.zero_()
        bright = model._crop(torch.full((1, 3, 64, 64), 0.95), (0, 0))
        direction = model.norm_vit(backbone.forward_features(bright))[0, 1]
        dsdm.W_q1.weight.zero_()
        dsdm.W_q1.bias.zero_()
        dsdm.W_q2.weight.zero_()
        dsdm.W_q2.bias.copy_(direction)
        dsdm.W_k2.weight.copy_(torch.eye(64))
        dsdm.W_k2.bias.zero_()
        dsdm.alpha.fill_(-1.0)
    return model


def _overlays(fig):
    return [im for ax in fig.axes for im in ax.get_images() if (im.get_gid() or "").startswith("attention:")]


def _peak_in_image(overlay) -> tuple[float, float]:
    """(row, column) of the overlay's hottest pixel, in the image's pixel coordinates (from its extent)."""
    data = np.ma.filled(np.ma.masked_invalid(overlay.get_array()), -np.inf)
    row, col = np.unravel_index(np.argmax(data), data.shape)
    left, right, bottom, top = overlay.get_extent()
    return top + (row + 0.5) * (bottom - top) / data.shape[0], left + (col + 0.5) * (right - left) / data.shape[1]


@pytest.mark.parametrize("num_crops", [1, 4])
def test_heat_map_peaks_on_the_local_distortion(num_crops):
    model = _attending_drexperts(num_crops)
    image = _blocked_image()
    x = torch.from_numpy(image.transpose(2, 0, 1))[None]
    with torch.no_grad():
        explanation = model.explain(x, top_k=2)
    if num_crops == 1:  # the centre crop (rows 16..80, columns 32..96) holds only part of the square
        assert explanation["attention_crops"] == [(16, 32, 64)]
    fig = explanation_figure(image, explanation, 0, "drexperts", "blocked.png")
    overlays = _overlays(fig)
    assert len(overlays) == 2
    for overlay in overlays:
        row, col = _peak_in_image(overlay)
        assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop, (row, col)
    # The same model on the image without the square attends evenly: no peak to find.
    flat = torch.full_like(x, 0.15)
    with torch.no_grad():
        even = attention_heatmap(model.explain(flat, top_k=1), 0, 0)
    covered = even[np.isfinite(even)]
    assert covered.max() - covered.min() < 1e-6 * covered.max()


def test_drexperts_figure_bars_and_title_show_the_explanation(tmp_path):
    model = DRExperts(pretrained=False, config={"base": "small", "img_size": 64}).eval()
    model.protocol = {**model.protocol, "mos_range": [0.0, 1.0], "dataset": "demo"}
    image = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    with torch.no_grad():
        explanation = model.explain(torch.from_numpy(image.transpose(2, 0, 1))[None], top_k=3)
    fig = explanation_figure(image, explanation, 0, "drexperts", "noise.png")
    bars = next(c for ax in fig.axes for c in ax.containers if c.get_label() == "_shares")
    heights = sorted((b.get_height() for b in bars), reverse=True)
    np.testing.assert_allclose(heights, sorted(explanation["expert_shares"][0].tolist(), reverse=True), rtol=1e-6)
    title = fig._suptitle.get_text()
    assert f"score {float(explanation['score'][0]):.3f}" in title and "range 0 to 1, higher is better" in title
    fig.savefig(tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as png:
        assert png.size[0] > 800 and png.size[1] > 500


def test_exiqa_figure_shows_all_distortions_and_the_top_attributes():
    model = ExIQA(pretrained=False, config="small").eval()
    image = np.random.default_rng(1).random((64, 64, 3), dtype=np.float32)
    with torch.no_grad():
        explanation = model.explain(torch.from_numpy(image.transpose(2, 0, 1))[None])
    fig = explanation_figure(image, explanation, 0, "exiqa", "x.png", attributes=8)
    containers = {c.get_label().lstrip("_"): c for ax in fig.axes for c in ax.containers}
    probs = explanation["distortion_probs"][0]
    widths = {label.get_text(): bar.get_width() for bar, label in
              zip(containers["distortion_probs"], next(ax for ax in fig.axes if containers["distortion_probs"] in ax.containers).get_yticklabels())}
    assert len(widths) == 25
    for i, name in enumerate(explanation["distortion_names"]):
        assert widths[name] == pytest.approx(float(probs[i]))
    attr_widths = sorted((b.get_width() for b in containers["attribute_probs"]), reverse=True)
    np.testing.assert_allclose(attr_widths, explanation["attribute_probs"][0].sort(descending=True).values[:8].tolist(),
                               rtol=1e-6)
    assert "range 0 to 1, higher is better" in fig._suptitle.get_text()


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["drexperts", "exiqa"])
def test_explain_command_writes_one_png_per_image_and_skips_bad_files(fresh, console_script, metric, tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray((_blocked_image() * 255).astype(np.uint8)).save(photos / "a.png")
    Image.fromarray((_blocked_image()[::-1] * 255).astype(np.uint8)).save(photos / "sub" / "a.png")
    (photos / "broken.png").write_bytes(b"not an image")
    weights = tmp_path / "w.pth"
    if metric == "drexperts":
        save_drexperts(DRExperts(pretrained=False, config={"base": "small", "img_size": 64}).eval(), weights)
    else:
        save_exiqa(ExIQA(pretrained=False, config="small").eval(), weights)
    out = tmp_path / "figures"
    result = fresh([console_script("iqa-plugins"), "explain", str(photos), "--metric", metric,
                    "--metric-opt", f"pretrained_model_path={weights}", "--device", "cpu", "-o", str(out)])
    assert result.returncode == 1, result.stderr  # one bad file
    assert "broken.png" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_2.png"]
    assert result.stdout.count("score ") == 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--top-k", "0"], "--top-k must be >= 1"),
    (["--metric-opt", "no_value"], "--metric-opt expects KEY=VALUE"),
])
def test_explain_command_names_bad_arguments(tmp_path, capsys, extra, message):
    import argparse

    from iqa_plugins import explain_figure

    parser = argparse.ArgumentParser()
    explain_figure.add_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--metric", "exiqa", "-o", str(tmp_path / "out"), *extra])
    assert explain_figure.main(args) == 2
    assert message in capsys.readouterr().err
