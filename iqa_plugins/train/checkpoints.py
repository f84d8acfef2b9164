"""Trained weights in the formats the metrics load, and their place in pyiqa's weight cache.

pyiqa's training writes ``{"params": state_dict}`` (``net_latest.pth``), which both archs load. Next to it the
runner writes the project's compact format through the arch module's own ``save_pretrained`` (config and
test-time protocol included, so ``pyiqa.create_metric(name, pretrained_model_path=...)`` needs no other
argument), and ``--install-to-cache`` copies it under the metric's default file name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

def default_weights_filename(arch_type: str) -> str:
    """The file name ``pretrained=True`` looks for in pyiqa's cache."""
    if arch_type not in _ARCHS:
        raise ValueError(f"no default weights file for arch {arch_type!r}; known: {sorted(_ARCHS)}")
    return importlib.import_module(_ARCHS[arch_type][0]).DEFAULT_WEIGHTS.filename


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


# arch type -> (module with DEFAULT_WEIGHTS, writer of the compact checkpoint from the training options)
_ARCHS: dict[str, tuple[str, Callable[[dict[str, Any], Any, Path], Path]]] = {
    "DRExperts": ("iqa_plugins.archs.drexperts_arch", _save_drexperts),
    "ExIQA": ("iqa_plugins.archs.exiqa_arch", _save_exiqa),
}


def save_compact(opt: dict[str, Any], net, path: Path) -> Path | None:
    """Write ``net`` in its arch's compact format; None for archs that have none."""
    entry = _ARCHS.get(opt["network"]["type"])
    return None if entry is None else entry[1](opt, net, path)
