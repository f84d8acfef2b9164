"""Registers the training pieces with pyiqa: model ``RecipeIQAModel``, loss ``SmoothL1Loss`` and data set
``InMemoryNRDataset``.

``register_training`` is the target of the ``pyiqa.models`` and ``pyiqa.losses`` entry points, so pyiqa's
own ``train.py`` finds them from an options file; ``iqa-plugins train`` calls it directly. Idempotent.
"""

from __future__ import annotations


def register_training() -> None:
    from pyiqa.utils.registry import LOSS_REGISTRY

    from iqa_plugins.train.in_memory_dataset import register as register_dataset
    from iqa_plugins.train.losses import SmoothL1Loss
    from iqa_plugins.train.model import register as register_model

    register_model()
    register_dataset()
    # _obj_map, not `in`: `in` would load the entry points, which call this function again.
    if "SmoothL1Loss" not in LOSS_REGISTRY._obj_map:
        LOSS_REGISTRY.register(SmoothL1Loss)
