"""``InMemoryNRDataset``: pyiqa's ``GeneralNRDataset`` with every image decoded once, when the set is built.

A small training set read many times per epoch (``dataset_enlarge_ratio``) by a small model spends much of
each step decoding the same PNGs again: with the demo's 176 px photos and batches of 128 32 px crops,
decoding was about a quarter of a DR.Experts step on one CPU core. The decoded images cost width x height x 3
bytes each (the demo's 680: 63 MB); augmentations still run per item, on the decoded image. Decoding up front
keeps the first steps as fast as the rest (the demo times a few first steps to size its schedule).
"""

from __future__ import annotations

import torch
from PIL import Image
from pyiqa.data.general_nr_dataset import GeneralNRDataset

__all__ = ["InMemoryNRDataset", "register"]


class InMemoryNRDataset(GeneralNRDataset):
    """Same options and items as ``GeneralNRDataset`` (``type: InMemoryNRDataset``); images decoded up front."""

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        self._decoded: dict[str, Image.Image] = {}
        for img_path, _ in self.paths_mos:
            if img_path not in self._decoded:
                with Image.open(img_path) as file:
                    self._decoded[img_path] = file.convert("RGB")

    def __getitem__(self, index: int) -> dict:
        img_path, mos_label = self.paths_mos[index][0], float(self.paths_mos[index][1])
        image = self._decoded[img_path]
        return {"img": self.trans(image) * self.img_range, "mos_label": torch.Tensor([mos_label]),
                "img_path": img_path}


def register() -> None:
    """Add ``InMemoryNRDataset`` to pyiqa's DATASET_REGISTRY (idempotent)."""
    from pyiqa.utils.registry import DATASET_REGISTRY

    if "InMemoryNRDataset" not in DATASET_REGISTRY._obj_map:
        DATASET_REGISTRY.register(InMemoryNRDataset)
