"""Named model configs with dict overrides: the lookup both models' ``resolve_config`` share."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def resolve_named_config(
    config: str | Mapping[str, Any] | None, configs: Mapping[str, Mapping[str, Any]], model: str
) -> dict[str, Any]:
    """A full config dict (a copy) from a name in ``configs``, or a dict of overrides on ``config["base"]``
    (default "paper"); None means "paper".

    Raises ValueError for an unknown name or key and TypeError for anything but a name or a dict.
    """
    if config is None:
        config = "paper"
    if isinstance(config, str):
        if config not in configs:
            raise ValueError(f"config={config!r} is not a {model} config; choose one of {sorted(configs)} or a dict")
        return copy.deepcopy(dict(configs[config]))
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a name or a dict, got {type(config).__name__}")
    overrides = dict(config)
    resolved = resolve_named_config(overrides.pop("base", "paper"), configs, model)
    unknown = set(overrides) - set(resolved)
    if unknown:
        raise ValueError(f"config has unknown keys {sorted(unknown)}; known: {sorted(resolved)} and 'base'")
    resolved.update(copy.deepcopy(overrides))
    return resolved
