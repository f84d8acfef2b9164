"""Training sets that decode each image once: the same items as reading the files every time, and no file read
after the first."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_plugins.io import ImageReadError
from iqa_plugins.train.exiqa_phases import StrengthsDataset
from iqa_plugins.train.in_memory_dataset import InMemoryNRDataset, register

SLUGS = ("blur", "noise")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(7)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(5):
        name = f"img_{i}.png"
        size = (40 + 3 * i, 36)  # awkward, unequal sizes
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / "images" / name)
        rows.append({"image": name, "mos": float(rng.random()), "blur": float(rng.random()), "noise": 0.0})
    with (tmp_path / "meta_info.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dist_name", "mos"])
        writer.writerows([r["image"], r["mos"]] for r in rows)
    with (tmp_path / "strengths.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", *SLUGS])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("image", *SLUGS)} for r in rows)
    return tmp_path


def _nr_options(folder, augment):
    return {"name": "t", "type": "InMemoryNRDataset", "dataroot_target": str(folder / "images"),
            "meta_info_file": str(folder / "meta_info.csv"), "mos_normalize": False, "phase": "train",
            "augment": augment}


def _delete_images(folder):
    for path in (folder / "images").iterdir():
        path.unlink()


def test_in_memory_nr_dataset_gives_pyiqa_items_and_reads_each_file_once(folder):
    from pyiqa.data.general_nr_dataset import GeneralNRDataset

    augment = {"hflip": True, "vflip": True, "random_crop": 24}
    cached, plain = InMemoryNRDataset(_nr_options(folder, augment)), GeneralNRDataset(_nr_options(folder, augment))
    for index in range(len(plain)):
        torch.manual_seed(index)  # pyiqa's flips and crops draw from torch's generator
        want = plain[index]
        torch.manual_seed(index)
        got = cached[index]
        assert torch.equal(got["img"], want["img"]) and torch.equal(got["mos_label"], want["mos_label"])
        assert got["img_path"] == want["img_path"]
    _delete_images(folder)  # everything is decoded now: new random crops come from memory
    crops = [cached[i]["img"] for i in range(len(cached))]
    assert all(c.shape == (3, 24, 24) for c in crops)
    with pytest.raises(FileNotFoundError):
        plain[0]


def test_in_memory_nr_dataset_is_registered_for_options_files():
    from pyiqa.utils.registry import DATASET_REGISTRY

    register()
    register()  # idempotent
    assert DATASET_REGISTRY.get("InMemoryNRDataset") is InMemoryNRDataset


def test_strengths_dataset_in_memory_gives_the_same_crops(folder):
    kwargs = {"image_size": 24, "random_crops": True, "repeats": 3}
    plain, cached = StrengthsDataset(folder, SLUGS, **kwargs), StrengthsDataset(folder, SLUGS, in_memory=True, **kwargs)
    assert len(cached) == len(plain) == 15
    for index in range(len(plain)):
        torch.manual_seed(index)
        want = plain[index]
        torch.manual_seed(index)
        got = cached[index]
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    _delete_images(folder)
    assert all(cached[i][0].shape == (3, 24, 24) for i in range(len(cached)))
    with pytest.raises(ImageReadError):
        plain[0]
