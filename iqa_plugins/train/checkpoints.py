"""Trained weights in the formats the metrics load, and their place in pyiqa's weight cache.

pyiqa's training writes ``{"params": state_dict}`` (``net_latest.pth``), which both archs load. Next to it the
runner writes the project's compact format through the arch module's own ``save_pretrained`` (config and
test-time protocol included, so ``pyiqa.create_metric(name, pretrained_model_path=...)`` needs no other
argument), and ``--install-to-cache`` copies it under the file name of the trained variant
(``archs.pretrained_cfgs``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from iqa_plugins.archs.pretrained_cfgs import model_cfgs


def default_weights_filename(arch_type: str, variant: str | None = None) -> str:
    """The file name ``pretrained=True`` (or ``pretrained=variant``: a data set or tag) looks for in pyiqa's cache."""
    return model_cfgs(arch_type).variant(True if variant is None else variant).weights.filename


def _val_resize(opt: dict[str, Any]) -> list[int] | None:
    """The resize the validation data applies before the arch sees the image (the test protocol's resize)."""
    for phase, dataset in opt["datasets"].items():
        if phase.split("_")[0] == "val":
            resize = (dataset.get("augment") or {}).get("resize")
            if resize is None:
                return None
            return [int(resize), int(resize)] if isinstance(resize, (int, float)) else [int(v) for v in resize]
    return None


def _save_drexperts(opt: dict[str, Any], net, path: Path) -> Path:
    from iqa_plugins.archs.drexperts_arch import save_pretrained

    train_set = opt["datasets"]["train"]
    # The protocol travels with the weights: the metric then resizes and crops as validation did.
    protocol = {
        "resize": _val_resize(opt), "num_crops": int(net.num_crops),
        "mos_range": None if train_set.get("mos_normalize") else train_set.get("mos_range"),
        "lower_better": False, "dataset": train_set.get("name"),
    }
    return save_pretrained(net, path, source=f"iqa-plugins train ({opt['name']})", protocol=protocol)


def _save_exiqa(opt: dict[str, Any], net, path: Path) -> Path:
    from iqa_plugins.archs.exiqa_arch import save_pretrained

    return save_pretrained(net, path, metadata={"trained_by": f"iqa-plugins train ({opt['name']})"})


# arch type -> writer of the compact checkpoint from the training options
_WRITERS: dict[str, Callable[[dict[str, Any], Any, Path], Path]] = {
    "DRExperts": _save_drexperts,
    "ExIQA": _save_exiqa,
}


def save_compact(opt: dict[str, Any], net, path: Path) -> Path | None:
    """Write ``net`` in its arch's compact format; None for archs that have none."""
    writer = _WRITERS.get(opt["network"]["type"])
    return None if writer is None else writer(opt, net, path)
