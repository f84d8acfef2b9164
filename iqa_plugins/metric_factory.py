"""Building a metric for scoring without paying for what it does not use.

``pyiqa.create_metric`` needs pyiqa's package (its API helpers, data utilities, OpenCV, requests, ...) even
for the plugin's own metrics, whose archs need none of it. :func:`create_metric` builds ``drexperts`` and
``exiqa`` directly from the plugin's own registry entries (:data:`iqa_plugins.registration.METRICS`, the very
entries that are installed into pyiqa's ``DEFAULT_CONFIGS``) and wraps the arch in :class:`PluginMetric`, which
behaves as pyiqa's ``InferenceModel`` does for a no-reference metric used for scoring: same option merging,
same attributes, same input checks, same forward (for ``as_loss=True`` use ``pyiqa.create_metric``). Any other name goes to ``pyiqa.create_metric`` unchanged, and
``pyiqa.create_metric("drexperts")`` itself is untouched.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from iqa_plugins.registration import ARCHS, METRICS

__all__ = ["PluginMetric", "create_metric", "is_plugin_metric"]


def is_plugin_metric(name: str) -> bool:
    return name in METRICS


def _arch_class(type_name: str) -> type[torch.nn.Module]:
    if type_name not in ARCHS:
        raise KeyError(f"unknown arch type {type_name!r}; the plugin provides {sorted(ARCHS)}")
    module_name, _, class_name = ARCHS[type_name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class PluginMetric(torch.nn.Module):
    """A plugin arch behind pyiqa's metric interface (``metric(x)`` with x RGB in [0, 1], (N, 3, H, W))."""

    def __init__(self, metric_name: str, device: torch.device | str | None = None,
                 check_input_range: bool = True, **options: Any) -> None:
        super().__init__()
        if metric_name not in METRICS:
            raise KeyError(f"unknown plugin metric {metric_name!r}; the plugin provides {sorted(METRICS)}")
        entry = METRICS[metric_name]
        self.metric_name = metric_name
        self.lower_better = entry.get("lower_better", False)
        self.metric_mode = entry["metric_mode"]
        self.score_range = entry.get("score_range")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.check_input_range = check_input_range
        # pyiqa's order: the entry's defaults, then the caller's options; "type" names the arch.
        net_options = {**entry["metric_opts"], **options}
        arch = _arch_class(net_options.pop("type"))
        self.net = arch(**net_options).to(self.device).eval()

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{self.metric_name}: expected a (N, 3, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if self.check_input_range and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
            raise ValueError(f"{self.metric_name}: input must be in [0, 1], got "
                             f"min={x.min():.4f}, max={x.max():.4f}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True), torch.no_grad():
            return self.net(x.to(self.device))


def create_metric(name: str, device: torch.device | str | None = None, **options: Any) -> torch.nn.Module:
    """The plugin's metrics without importing pyiqa; every other name through ``pyiqa.create_metric``."""
    if is_plugin_metric(name):
        return PluginMetric(name, device=device, **options)
    import pyiqa  # importing pyiqa also registers the plugin's metrics with it

    return pyiqa.create_metric(name, device=device, **options)
