"""Test-only pieces for the training tests: a tiny arch and a tiny labelled image set (also used by the DDP
worker script, which runs in fresh processes)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


class TinyTrainIQA(nn.Module):
    """Conv -> pool -> linear; has a 1-D parameter (norm) and biases, like the real archs."""

    def __init__(self, width: int = 8, num_crops: int = 1) -> None:
        super().__init__()
        self.num_crops = num_crops
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.GroupNorm(1, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3))
        return self.head(features)


class TinyProtocolIQA(TinyTrainIQA):
    """The tiny arch with a test-time protocol: ``as_given=False`` scores the image's upper-left quarter,
    ``as_given=True`` the whole image; records which one each call asked for."""

    calls: list[bool] = []

    def forward(self, x: torch.Tensor, as_given: bool = False) -> torch.Tensor:
        TinyProtocolIQA.calls.append(as_given)
        return super().forward(x if as_given else x[..., : x.shape[-2] // 2, : x.shape[-1] // 2])


def register_tiny_arch() -> None:
    from pyiqa.utils.registry import ARCH_REGISTRY

    for arch in (TinyTrainIQA, TinyProtocolIQA):
        if arch.__name__ not in ARCH_REGISTRY._obj_map:
            ARCH_REGISTRY.register(arch)


def make_image_set(folder: Path, n: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Random textures whose MOS is their mean brightness x 10 (learnable by the tiny arch); returns the CSV."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        level = (i + 0.5) / n
        img = np.clip(level + 0.15 * rng.standard_normal((size, size, 3)), 0, 1)
        name = f"img{i:02d}.png"
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / name)
        rows.append((name, round(float(img.mean()) * 10, 4)))
    meta = folder / "meta.csv"
    with meta.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dist_name", "mos"])
        writer.writerows(rows)
    return meta


def tiny_options(images: Path, meta: Path, *, epochs: int = 3, batch: int = 4, val: bool = True) -> dict:
    """pyiqa options for the tiny arch with the recipe's optimiser, schedule and loss; no random augmentation
    (so that runs are reproducible to the bit on CPU)."""
    dataset = {
        "name": "Tiny", "type": "GeneralNRDataset", "dataroot_target": str(images), "meta_info_file": str(meta),
        "num_worker_per_gpu": 0, "batch_size_per_gpu": batch, "use_shuffle": True, "dataset_enlarge_ratio": 1,
    }
    opt = {
        "name": "tiny", "model_type": "RecipeIQAModel", "num_gpu": 0, "manual_seed": 7,
        "datasets": {"train": dict(dataset)},
        "network": {"type": "TinyTrainIQA", "width": 8},
        "train": {
            "optim": {"type": "AdamW", "lr": 2e-2, "betas": [0.9, 0.999], "weight_decay": 0.05},
            "scheduler": {"type": "WarmupStepLR", "warmup_epochs": 1, "warmup_lr": 2e-4, "decay_epochs": 2,
                          "gamma": 0.5},
            "total_epoch": epochs, "grad_clip": 5.0, "mos_loss_opt": {"type": "SmoothL1Loss"},
        },
        "logger": {"print_freq": 1000, "save_checkpoint_freq": 9e9},
    }
    if val:
        opt["datasets"]["val"] = {**dataset, "batch_size_per_gpu": 1}
        opt["val"] = {"val_freq": 9e9, "metrics": {"srcc": {"type": "calculate_srcc"},
                                                   "plcc": {"type": "calculate_plcc"}}}
    return opt


def small_drexperts_options(images: Path, meta: Path) -> dict:
    """The real small DR.Experts with the demo's recipe on the tiny set (32 px crops), validation on."""
    from iqa_plugins.train.demo import drexperts_options

    opt = drexperts_options(images.parent, train_images=12, steps=3, batch=4)
    for dataset in opt["datasets"].values():
        dataset.update(dataroot_target=str(images), meta_info_file=str(meta))
    opt["datasets"]["train"]["augment"]["random_crop"] = 32  # the tiny set's images are 32 px
    opt["datasets"]["train"]["dataset_enlarge_ratio"] = 1
    opt["network"]["config"]["img_size"] = 32
    opt["network"]["num_crops"] = 2
    opt["datasets"]["val"] = {**opt["datasets"]["train"], "augment": {}, "batch_size_per_gpu": 1}
    opt["val"] = {"val_freq": 9e9, "metrics": {"srcc": {"type": "calculate_srcc"}}}
    return opt
