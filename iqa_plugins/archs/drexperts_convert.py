"""DR.Experts checkpoints: the official layouts, key conversion, and the project's compact format.

Layouts read (every key is accounted for: converted, documented-unused, or an error naming it):

- official training checkpoint ``ckpt_epoch_N.pth``: ``{"model": state_dict, "optimizer", ..., "config"}``
  (``config`` is a yacs CfgNode; it is read as a plain mapping without running pickled code), or the bare
  870-key state dict. Names differ from ours in:
  ``backbone.blocks.N.gamma_1 / gamma_2`` (DeiT repository) -> ``backbone.blocks.N.ls1.gamma / ls2.gamma`` (timm);
  ``head.visual_control.*`` -> ``controller.*``; ``head.clip.*`` (minus ``visual``) -> the text tower;
  ``diff_attention.*`` -> ``dsdm.*``; ``decoder.AttentionActivate.active_unit.fc.*`` -> ``ddwm.fc.*``.
  Documented-unused: ``backbone.head.*`` (the DeiT classifier), ``L1.*``, ``L2.*``, ``head.visual.*`` (alias of
  ``head.clip.visual``), ``head.clip.visual.*`` (the CLIP visual tower, never run), ``head.logit_scale``.
- DA-CLIP ``daclip_ViT-B-32.pt``: an open_clip training checkpoint (``{"state_dict": ...}``, maybe ``module.``
  prefixed, or bare) with the 631 keys of ``head.*`` above without the prefix. It provides the controller and the
  text tower only; combine it with a checkpoint holding the rest.
- pyiqa training output ``{"params": state_dict_of_the_arch}``.
- the compact format written by :func:`iqa_plugins.archs.drexperts_arch.save_pretrained`::

      {"format": "iqa_plugins.drexperts/1",
       "config": {...arch config: backbone, img_size, clip, ddwm_dims...},
       "protocol": {"resize": [h, w] | None, "num_crops": int, "mos_range": [lo, hi] | None,
                    "lower_better": False, "dataset": str | None},
       "state_dict": {...},   # no CLIP visual tower, no text tower; "text_features" (10, 512) precomputed
       "source": "what it was converted from"}
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from iqa_plugins.weights import load_checkpoint

__all__ = [
    "COMPACT_FORMAT",
    "CheckpointKeyError",
    "Converted",
    "convert_daclip",
    "convert_official",
    "read_checkpoint",
]

COMPACT_FORMAT = "iqa_plugins.drexperts/1"

# Top-level official names that keep their name in our arch.
_SAME_NAME = (
    "lamda_init", "attn_norm.", "group_attn_ffn.", "norm1.", "L_hidden.", "score.", "norm_vit.",
    "norm3_hidden_feature.", "linears.",
)
_RENAMED_PREFIXES = (
    ("diff_attention.", "dsdm."),
    ("decoder.AttentionActivate.active_unit.fc.", "ddwm.fc."),
)
_GAMMA = re.compile(r"^blocks\.(\d+)\.gamma_([12])$")


class CheckpointKeyError(KeyError):
    """A checkpoint's keys do not fit the model; the message lists them."""

    def __str__(self) -> str:  # KeyError would repr() the message and hide its line breaks
        return str(self.args[0])


@dataclass
class Converted:
    """One checkpoint file translated into the arch's key space."""

    kind: str
    """"official", "daclip", "params" or "compact"."""
    arch: dict[str, Tensor] = field(default_factory=dict)
    """Keys of the DRExperts arch (without the text tower)."""
    text: dict[str, Tensor] = field(default_factory=dict)
    """Keys of the CLIP text tower (open_clip CLIP names, visual tower removed)."""
    unused: list[str] = field(default_factory=list)
    """Documented-unused keys that were dropped."""
    config: dict[str, Any] | None = None
    protocol: dict[str, Any] | None = None


def _list(keys: list[str], limit: int = 40) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _route_daclip(state: Mapping[str, Tensor], prefix: str, out: Converted, unknown: list[str]) -> None:
    """Route DA-CLIP keys (after ``prefix``) into out.arch / out.text / out.unused."""
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        inner = key[len(prefix):]
        if inner.startswith("visual_control."):
            out.arch["controller." + inner[len("visual_control."):]] = value
        elif inner.startswith(("clip.visual.", "visual.")) or inner == "logit_scale":
            out.unused.append(key)
        elif inner.startswith("clip."):
            out.text[inner[len("clip."):]] = value
        else:
            unknown.append(key)


def convert_official(state: Mapping[str, Tensor]) -> Converted:
    """Translate an official DR.Experts state dict (the 870-key layout) into our names.

    Raises CheckpointKeyError listing every key that no rule accounts for.
    """
    out = Converted(kind="official")
    unknown: list[str] = []
    _route_daclip(state, "head.", out, unknown)
    for key, value in state.items():
        if key.startswith("head."):
            continue
        if key.startswith("backbone."):
            inner = key[len("backbone."):]
            if inner.startswith("head."):
                out.unused.append(key)
                continue
            inner = _GAMMA.sub(lambda m: f"blocks.{m.group(1)}.ls{m.group(2)}.gamma", inner)
            out.arch["backbone." + inner] = value
        elif key.startswith(("L1.", "L2.")):
            out.unused.append(key)
        elif key.startswith(_SAME_NAME):
            out.arch[key] = value
        else:
            for old, new in _RENAMED_PREFIXES:
                if key.startswith(old):
                    out.arch[new + key[len(old):]] = value
                    break
            else:
                unknown.append(key)
    if unknown:
        raise CheckpointKeyError(
            f"{len(unknown)} key(s) do not belong to the official DR.Experts layout: {_list(unknown)}"
        )
    return out


def convert_daclip(state: Mapping[str, Tensor]) -> Converted:
    """Translate a DA-CLIP state dict (631 keys, optionally ``module.``-prefixed) into our names."""
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    out = Converted(kind="daclip")
    unknown: list[str] = []
    _route_daclip(state, "", out, unknown)
    if unknown:
        raise CheckpointKeyError(
            f"{len(unknown)} key(s) do not belong to the DA-CLIP layout: {_list(unknown)}"
        )
    return out


def _split_params(state: Mapping[str, Tensor], kind: str) -> Converted:
    out = Converted(kind=kind)
    for key, value in state.items():
        if key.startswith("text_encoder."):
            out.text[key[len("text_encoder."):]] = value
        else:
            out.arch[key] = value
    return out


def _safe_globals() -> list:
    """Stand-ins that let weights_only=True read official checkpoints without running their pickled code:
    the yacs CfgNode in "config" becomes an OrderedDict, numpy scalars (e.g. "max_plcc") stay numpy scalars."""
    import numpy as np

    scalar = np.array(0.0)[()].__reduce__()[0]  # numpy's scalar reconstructor, whatever its module path
    dtypes = {type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool")}
    return [
        (collections.OrderedDict, "yacs.config.CfgNode"),
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtypes,
    ]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def read_checkpoint(path: str | Path) -> Converted:
    """Load any supported DR.Experts/DA-CLIP checkpoint file safely and translate it into our names."""
    with torch.serialization.safe_globals(_safe_globals()):
        obj = load_checkpoint(path)
    name = str(path)
    if isinstance(obj, Mapping) and obj.get("format") == COMPACT_FORMAT:
        out = _split_params(obj["state_dict"], "compact")
        out.config, out.protocol = dict(obj["config"]), dict(obj["protocol"])
        return out
    if isinstance(obj, Mapping) and isinstance(obj.get("format"), str):
        raise ValueError(f"{name}: checkpoint format {obj['format']!r} is not {COMPACT_FORMAT!r}")  # noqa: TRY004
    for wrapper, kind in (("params", "params"), ("model", "official"), ("state_dict", "daclip")):
        if isinstance(obj, Mapping) and wrapper in obj and _is_state_dict(obj[wrapper]):
            state = obj[wrapper]
            break
    else:
        if not _is_state_dict(obj):
            raise ValueError(
                f"{name}: not a DR.Experts checkpoint (expected a state dict, or a dict with 'format', 'params', "
                f"'model' or 'state_dict'; got {type(obj).__name__} with keys {list(obj)[:10] if isinstance(obj, Mapping) else '-'})"
            )
        state, kind = obj, None
    if kind is None or kind == "daclip":
        # A bare or wrapped state dict: recognise its layout from its names.
        stripped = [k.removeprefix("module.") for k in state]
        if any(k.startswith("backbone.") and "gamma_1" in k for k in stripped) or any(k.startswith("head.") for k in stripped):
            kind = "official"
        elif any(k.startswith("visual_control.") for k in stripped):
            kind = "daclip"
        else:
            kind = "params"
    try:
        if kind == "official":
            return convert_official(state)
        if kind == "daclip":
            return convert_daclip(state)
        return _split_params(state, "params")
    except CheckpointKeyError as error:
        raise CheckpointKeyError(f"{name}: {error}") from None
