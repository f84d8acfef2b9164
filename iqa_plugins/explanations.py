"""What the plugin metrics' ``explain(x, top_k=...)`` returns, and how it becomes output columns.

Both archs return a dict with these shared keys (B images, D distortions):

- ``score`` (B,): the metric's score, exactly what ``forward`` returns.
- ``scale``: {"score_range": [lo, hi] or None, "lower_better": bool, "meaning": str}, the scale of the
  loaded weights (see :func:`score_scale`).
- ``distortion_names``: the D distortion labels of the model.
- ``per_distortion``: {name: (B,)}: the value each distortion is ranked by (DR.Experts: the expert's share of
  the summed expert weights; ExIQA: the distortion probability P(d|I)).
- ``top_indices`` (B, k): indices into ``distortion_names`` of the k largest ``per_distortion`` values.
- ``top_distortions``: per image a list of (name, value), largest first, at most k entries. ExIQA leaves out
  distortions judged absent (P(d|I) < :data:`ABSENT_THRESHOLD`), so a clean image lists none.

Model-specific keys: DR.Experts ``expert_weights``, ``expert_shares``, ``weight_sum``, ``attention_maps``,
``attention_cls``, ``attention_crop``, ``attention_experts``; ExIQA ``distortion_probs``, ``attribute_probs``,
``attribute_names``, ``attribute_distortions``, ``attribute_weights``, ``top_attributes``,
``absent_threshold``. The README's "Explanations" section says what each number means.

This module imports neither torch nor the archs, so readers of score files (the report page) can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ABSENT_THRESHOLD",
    "COLUMN_GROUPS",
    "explanation_columns",
    "parse_score_range",
    "score_scale",
]

# ExIQA's Eq. 10 puts a distortion strength below 0.1 in the interval of level 0: the distortion is absent.
ABSENT_THRESHOLD = 0.1

# Output column groups: (column prefix, key of the names, key of the (B, n) values). A column is named
# "<prefix>:<name>"; the score writer prepends "<metric>:".
COLUMN_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("share", "distortion_names", "expert_shares"),
    ("weight", "distortion_names", "expert_weights"),
    ("p", "distortion_names", "distortion_probs"),
    ("attr", "attribute_names", "attribute_probs"),
)


def explanation_columns(explanation: Mapping[str, Any]) -> dict[str, Any]:
    """The per-image numbers of an explanation as columns: {"<prefix>:<name>": (B,) tensor}.

    DR.Experts gives ``share:<word>`` and ``weight:<word>`` (10 each); ExIQA ``p:<distortion>`` (25) and
    ``attr:<attribute phrase>`` (125, the regressor's inputs).
    """
    columns: dict[str, Any] = {}
    for prefix, names_key, values_key in COLUMN_GROUPS:
        if values_key not in explanation:
            continue
        names, values = explanation[names_key], explanation[values_key]
        if values.shape[-1] != len(names):
            raise ValueError(f"explanation: {values_key} has {values.shape[-1]} columns for {len(names)} {names_key}")
        for i, name in enumerate(names):
            columns[f"{prefix}:{name}"] = values[:, i]
    if not columns:
        raise TypeError(f"explanation has none of {[group[2] for group in COLUMN_GROUPS]}: not a plugin explanation")
    return columns


_BOUND = re.compile(r"^\s*~?\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")


def parse_score_range(text: Any) -> list[float] | None:
    """pyiqa's ``score_range`` strings ("0, 1", "~0, ~100") as [lo, hi]; None when a bound is open ("0, ~")."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return [float(text[0]), float(text[1])] if len(text) == 2 else None
    parts = str(text).split(",")
    if len(parts) != 2:
        return None
    bounds = [_BOUND.match(part) for part in parts]
    if not all(bounds):
        return None
    return [float(bounds[0].group(1)), float(bounds[1].group(1))]


def score_scale(metric: Any, name: str | None = None) -> dict[str, Any]:
    """Scale of a pyiqa metric as built: {"score_range", "lower_better", "meaning"}.

    The plugin archs know the scale of the weights they loaded (``net.score_scale()``: a checkpoint states
    its own); other metrics fall back to pyiqa's registry entry (its ``score_range`` string parsed).
    """
    net = getattr(metric, "net", None)
    if callable(getattr(net, "score_scale", None)):
        return net.score_scale()
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    name = name or getattr(metric, "metric_name", None)
    entry = DEFAULT_CONFIGS.get(name, {})
    lower_better = bool(getattr(metric, "lower_better", entry.get("lower_better", False)))
    return {"score_range": parse_score_range(entry.get("score_range")), "lower_better": lower_better,
            "meaning": f"pyiqa's registered range for {name}: {entry.get('score_range', 'unknown')}"}
