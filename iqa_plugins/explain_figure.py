"""``iqa-plugins explain``: one PNG per image showing a plugin metric's score and why.

DR.Experts: the image, the top experts' refined attention over it (averaged where the test crops overlap),
and the ten experts' shares of the summed expert weights. ExIQA: the image, the 25 distortion probabilities
with the "absent" line at 0.1, and the most likely of the 125 attributes. The title gives the score with the
weights' scale and direction. Figures are drawn with matplotlib's object API (no pyplot state), Agg backend.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from iqa_plugins.explanations import ABSENT_THRESHOLD

__all__ = ["attention_heatmap", "explanation_figure", "add_arguments", "main"]

METRICS = ("drexperts", "exiqa")


def attention_heatmap(explanation: dict[str, Any], index: int, rank: int) -> np.ndarray:
    """DR.Experts' attention of its ``rank``-th top expert for image ``index`` over the whole (resized) image:
    each crop's patch-grid map spread over the crop's pixels, averaged where crops overlap, NaN where no crop
    looked. Shape ``attention_image_size``; the resized image spans the input, so it overlays it directly."""
    height, width = explanation["attention_image_size"]
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    maps = explanation["attention_maps"][index, :, rank].float().cpu().numpy()  # (C, g, g)
    for grid, (top, left, size) in zip(maps, explanation["attention_crops"]):
        cell = size // grid.shape[0]
        total[top:top + size, left:left + size] += np.kron(grid, np.ones((cell, cell)))
        count[top:top + size, left:left + size] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def scale_text(scale: dict[str, Any]) -> str:
    """"range 0 to 1, higher is better" from an explanation's ``scale``."""
    rng = scale.get("score_range")
    where = f"range {rng[0]:g} to {rng[1]:g}" if rng else "range not stated by the weights"
    return f"{where}, {'lower' if scale.get('lower_better') else 'higher'} is better"


def _title(metric: str, name: str, explanation: dict[str, Any], index: int) -> str:
    score = float(explanation["score"][index])
    scale = explanation["scale"]
    return f"{name}\n{metric} score {score:.3f} ({scale_text(scale)}): {scale['meaning']}"


def _show_image(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0), interpolation="lanczos")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _drexperts_axes(fig, image: np.ndarray, explanation: dict[str, Any], index: int) -> None:
    top = explanation["top_indices"][index].tolist()
    names = explanation["distortion_names"]
    shares = explanation["expert_shares"][index].float().cpu().numpy()
    weights = explanation["expert_weights"][index].float().cpu().numpy()
    grid = fig.add_gridspec(2, len(top) + 1, height_ratios=[3, 2])
    _show_image(fig.add_subplot(grid[0, 0]), image, "image")
    extent = (0, image.shape[1], image.shape[0], 0)
    for rank, expert in enumerate(top):
        ax = fig.add_subplot(grid[0, rank + 1])
        # The photo in grey underneath, so that the heat map's colours read as attention, not as the photo's.
        ax.imshow(image.mean(axis=2), extent=extent, cmap="gray", vmin=0, vmax=1)
        heat = attention_heatmap(explanation, index, rank)
        overlay = ax.imshow(heat, extent=extent, cmap="inferno", alpha=0.65, interpolation="nearest")
        overlay.set_gid(f"attention:{names[expert]}")
        ax.set_title(f"expert '{names[expert]}' (share {shares[expert]:.3f})\nwhere it attends (blank: no crop)",
                     fontsize=9)
        ax.set_axis_off()
        fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02)
    ax = fig.add_subplot(grid[1, :])
    order = np.argsort(-shares)
    bars = ax.bar([names[i] for i in order], shares[order], color=["C3" if i in top else "C0" for i in order])
    bars.set_label("_shares")  # underscore: kept out of legends
    ax.axhline(1 / len(names), color="grey", linestyle="--", linewidth=1, label="even split")
    for bar, i in zip(bars, order):
        ax.annotate(f"{weights[i]:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7)
    ax.set_ylabel("share of the summed\nexpert weights")
    ax.set_title(f"expert shares (raw weights above the bars; their sum {float(explanation['weight_sum'][index]):.3g} "
                 "scales the feature that is scored)", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_ylim(min(0.0, float(shares.min()) * 1.2), float(shares.max()) * 1.25)  # room for the labels and legend
    ax.legend(fontsize=8, loc="upper right")


def _exiqa_axes(fig, image: np.ndarray, explanation: dict[str, Any], index: int, attributes: int) -> None:
    names = explanation["distortion_names"]
    probs = explanation["distortion_probs"][index].float().cpu().numpy()
    attr = explanation["attribute_probs"][index].float().cpu().numpy()
    grid = fig.add_gridspec(1, 3, width_ratios=[3, 3, 4])
    present = "\n".join(f"{n}: {p:.2f}" for n, p in explanation["top_distortions"][index]) or "none"
    _show_image(fig.add_subplot(grid[0, 0]), image, f"top distortions present (P >= {ABSENT_THRESHOLD}):\n{present}")

    ax = fig.add_subplot(grid[0, 1])
    order = np.argsort(probs)
    colours = ["C3" if probs[i] >= ABSENT_THRESHOLD else "C0" for i in order]
    bars = ax.barh([names[i] for i in order], probs[order], color=colours)
    bars.set_label("_distortion_probs")  # underscore: kept out of legends
    ax.axvline(ABSENT_THRESHOLD, color="grey", linestyle="--", linewidth=1, label=f"absent below {ABSENT_THRESHOLD}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(distortion | image)")
    ax.set_title("predicted strength of each distortion", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")

    ax = fig.add_subplot(grid[0, 2])
    order = np.argsort(-attr)[:attributes][::-1]
    labels = [f"{explanation['attribute_names'][i]} ({names[explanation['attribute_distortions'][i]]})"
              for i in order]
    bars = ax.barh(labels, attr[order], color="C2")
    bars.set_label("_attribute_probs")  # underscore: kept out of legends
    ax.axvline(ABSENT_THRESHOLD, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(attribute | image), the quality regressor's inputs")
    ax.set_title(f"the {len(order)} most likely of {attr.shape[0]} attributes", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)


def explanation_figure(image: np.ndarray, explanation: dict[str, Any], index: int, metric: str, name: str,
                       attributes: int = 12):
    """A matplotlib Figure explaining image ``index`` of a batch explained by ``metric`` (drexperts or exiqa).

    ``image``: the (H, W, 3) float image in [0, 1] that was explained; ``name``: its label in the title.
    """
    from matplotlib.figure import Figure

    if metric == "drexperts":
        fig = Figure(figsize=(4 + 3.6 * explanation["top_indices"].shape[1], 7.5), layout="constrained")
        _drexperts_axes(fig, image, explanation, index)
    elif metric == "exiqa":
        fig = Figure(figsize=(17, 6.5), layout="constrained")
        _exiqa_axes(fig, image, explanation, index, attributes)
    else:
        raise ValueError(f"no figure for metric {metric!r}; choose one of {METRICS}")
    fig.suptitle(_title(metric, name, explanation, index), fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, directories (recursive) or glob patterns")
    parser.add_argument("--metric", required=True, choices=METRICS)
    parser.add_argument("--metric-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword for pyiqa.create_metric (YAML value), e.g. pretrained_model_path=w.pth")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for the PNG files")
    parser.add_argument("--top-k", type=int, default=3, help="experts / distortions to show (default 3)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    parser.add_argument("--dpi", type=int, default=100)


def _png_names(paths: list[str]) -> list[str]:
    """File stems, made unique (photos/a.jpg and other/a.png would both be a.png)."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def _metric_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (YAML values) as create_metric keywords, as ``iqa-plugins score`` reads them."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--metric-opt expects KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def main(args: argparse.Namespace) -> int:
    from iqa_plugins.io import ImageReadError, read_image
    from iqa_plugins.scoring import collect_images

    if args.top_k < 1:
        print(f"iqa-plugins explain: --top-k must be >= 1, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        options = _metric_options(args.metric_opt)
    except ValueError as error:
        print(f"iqa-plugins explain: {error}", file=sys.stderr)
        return 2
    paths, failures = collect_images(args.inputs)
    if not paths:
        for failure in failures:
            print(f"  {failure.path}: {failure.reason}", file=sys.stderr)
        print("iqa-plugins explain: no images", file=sys.stderr)
        return 2

    import pyiqa
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        metric = pyiqa.create_metric(args.metric, device=torch.device(device), **options)
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        print(f"iqa-plugins explain: could not create --metric {args.metric!r}: {error}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    bad = [(f.path, f.reason) for f in failures]
    for path, png in zip(paths, _png_names(paths)):
        try:
            image = read_image(path)
        except ImageReadError as error:
            bad.append((path, error.reason))
            continue
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)
        try:
            with torch.no_grad():
                explanation = metric.net.explain(x, top_k=args.top_k)
        except (RuntimeError, ValueError) as error:
            bad.append((path, f"metric failed: {error}"))
            continue
        target = args.output / f"{png}.png"
        explanation_figure(image, explanation, 0, args.metric, Path(path).name).savefig(target, dpi=args.dpi)
        top = ", ".join(f"{n} {v:.2f}" for n, v in explanation["top_distortions"][0]) or "no distortion present"
        print(f"{path}: score {float(explanation['score'][0]):.4f} ({top}) -> {target}")
    if bad:
        print(f"skipped {len(bad)} input(s):", file=sys.stderr)
        for path, reason in bad:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if bad else 0
