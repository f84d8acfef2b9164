"""The trained variants of each model, one table per model: weights file, test-time protocol, score range.

As timm's ``default_cfgs`` and pyiqa's per-variant metrics (``musiq-koniq``), every data set a model is trained
on is one row. From these tables come the metrics pyiqa lists (``drexperts`` for the default row and
``drexperts-<tag>`` for every row), the file ``pretrained=True`` or ``pretrained="<data set>"`` loads, the
protocol ``iqa-plugins convert --dataset`` writes into a checkpoint, and the cache file ``--install-to-cache``
replaces. A row is named by its tag (the metric's suffix, pyiqa's short data set names) or by its training
data set (the name the checkpoint's protocol records).

Kept free of torch, timm and open_clip: the registration reads it when pyiqa starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from iqa_plugins.weights import WeightsSpec

__all__ = ["DREXPERTS", "EXIQA", "MODELS", "ModelCfgs", "PretrainedCfg", "model_cfgs"]


@dataclass(frozen=True)
class PretrainedCfg:
    """One trained variant of a model."""

    dataset: str
    """Training data set, as the checkpoint's protocol records it (``iqa-plugins convert --dataset``)."""
    weights: WeightsSpec
    """The checkpoint file in pyiqa's cache and how to obtain it."""
    score_range: str
    """pyiqa's ``"lo, hi"`` of the scores these weights give (``~`` where not a hard bound)."""
    protocol: Mapping[str, Any] = field(default_factory=dict)
    """The authors' test-time protocol on this data set (DR.Experts: resize, num_crops, mos_range)."""


@dataclass(frozen=True)
class ModelCfgs:
    """A model's variants: ``variants`` by tag, ``default`` the tag ``pretrained=True`` means."""

    metric: str
    """pyiqa metric name of the default variant; the others are ``<metric>-<tag>``."""
    arch: str
    """Arch type in pyiqa's ARCH_REGISTRY."""
    metric_opts: Mapping[str, Any]
    """Arch options every variant's metric passes (beyond ``type`` and ``pretrained``)."""
    default: str
    variants: Mapping[str, PretrainedCfg]

    def variant(self, name: str | bool = True) -> PretrainedCfg:
        """The row named by its tag or its data set; True: the default row."""
        if name is True:
            return self.variants[self.default]
        for tag, cfg in self.variants.items():
            if name in (tag, cfg.dataset):
                return cfg
        known = ", ".join(f"{cfg.dataset} ({self.metric}-{tag})" for tag, cfg in self.variants.items())
        raise ValueError(f"{self.arch}: no trained variant {name!r}; known data sets: {known}")

    def metric_entries(self) -> dict[str, dict[str, Any]]:
        """pyiqa ``DEFAULT_CONFIGS`` entries: the default metric, then one metric per variant."""
        def entry(cfg: PretrainedCfg, pretrained: dict[str, Any]) -> dict[str, Any]:
            return {"metric_opts": {"type": self.arch, **pretrained, **self.metric_opts}, "metric_mode": "NR",
                    "lower_better": False, "score_range": cfg.score_range}

        entries = {self.metric: entry(self.variant(), {})}
        for tag, cfg in self.variants.items():
            entries[f"{self.metric}-{tag}"] = entry(cfg, {"pretrained": cfg.dataset})
        return entries


def _drexperts(tag: str, dataset: str, resize: list[int] | None, num_crops: int, mos_top: float) -> tuple:
    filename = f"DRExperts_{dataset}.pth"
    weights = WeightsSpec(filename=filename, how_to_make=(
        f"`iqa-plugins convert ckpt_epoch_N.pth --dataset {dataset} -o <cache dir>/{filename}` (an official "
        "DR.Experts checkpoint; add --daclip daclip_ViT-B-32.pt if it lacks the head.* weights), or train one "
        "with `iqa-plugins train drexperts ...`"))
    protocol = {"resize": resize, "num_crops": num_crops, "mos_range": [0.0, mos_top]}
    return tag, PretrainedCfg(dataset, weights, f"~0, ~{mos_top:g}", protocol)


# The authors' test-time protocol per data set (IQA/build.py and the training scripts) and MOS scales
# (KonIQ MOS_zscore, LIVEC, SPAQ, FLIVE: 0-100; BID: 0-5). Higher is better on all of them.
DREXPERTS = ModelCfgs("drexperts", "DRExperts", {"path": "fast"}, "koniq", dict([
    _drexperts("koniq", "koniq10k", [512, 384], 15, 100.0),
    _drexperts("livec", "livec", None, 20, 100.0),
    _drexperts("spaq", "spaq", [512, 384], 15, 100.0),
    _drexperts("flive", "livefb", [512, 384], 5, 100.0),
    _drexperts("bid", "bid", [512, 512], 15, 5.0),
]))


def _exiqa(tag: str, dataset: str) -> tuple:
    filename = f"ExIQA_{dataset}.pth"
    weights = WeightsSpec(filename=filename, how_to_make=(
        f"no ExIQA weights have been published; train them with `iqa-plugins train exiqa --preset {dataset}` "
        "(phase 1 on a set labelled with the distortion strengths, phase 2 on MOS) or in Python with "
        "iqa_plugins.train.exiqa_phases.train_phase1/train_phase2, then save_pretrained(model, path)"))
    # a sigmoid: the training MOS normalised to [0, 1], whatever the weights
    return tag, PretrainedCfg(dataset, weights, "0, 1")


# One variant per shipped attribute set: ExIQA trains on each data set's own distortions and attributes.
EXIQA = ModelCfgs("exiqa", "ExIQA", {}, "kadid", dict([
    _exiqa("kadid", "kadid10k"),
    _exiqa("tid", "tid2013"),
    _exiqa("csiq", "csiq"),
    _exiqa("live", "live"),
]))

MODELS: dict[str, ModelCfgs] = {cfgs.arch: cfgs for cfgs in (DREXPERTS, EXIQA)}


def model_cfgs(arch_type: str) -> ModelCfgs:
    """The variants table of arch ``arch_type`` ("DRExperts" or "ExIQA")."""
    if arch_type not in MODELS:
        raise ValueError(f"no trained variants for arch {arch_type!r}; known: {sorted(MODELS)}")
    return MODELS[arch_type]
