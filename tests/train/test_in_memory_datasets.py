"""Training sets that decode each image once: the same items as reading the files every time, and no file read
after the set is built."""

from __future__ import annotations

import csv
import shutil

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


def _copy_then_delete_images(folder):
    """A copy of the set for the reference reader; the original images are gone afterwards."""
    copy = folder.parent / f"{folder.name}_copy"
    shutil.copytree(folder, copy)
    for path in (folder / "images").iterdir():
        path.unlink()
    return copy


def _same_items(got_set, want_set, equal):
    for index in range(len(want_set)):
        torch.manual_seed(index)  # flips and crops draw from torch's generator
        want = want_set[index]
        torch.manual_seed(index)
        equal(got_set[index], want)


def test_in_memory_nr_dataset_gives_pyiqa_items_without_reading_files(folder):
    from pyiqa.data.general_nr_dataset import GeneralNRDataset

    augment = {"hflip": True, "vflip": True, "random_crop": 24}
    cached = InMemoryNRDataset(_nr_options(folder, augment))
    copy = _copy_then_delete_images(folder)  # decoded when built: nothing is read afterwards
    with pytest.raises(FileNotFoundError):
        GeneralNRDataset(_nr_options(folder, augment))[0]
    plain = GeneralNRDataset(_nr_options(copy, augment))
    assert len(cached) == len(plain) == 5

    def equal(got, want):
        assert torch.equal(got["img"], want["img"]) and torch.equal(got["mos_label"], want["mos_label"])
        assert got["img_path"].replace(str(folder), str(copy)) == want["img_path"]

    _same_items(cached, plain, equal)
    assert {cached[i]["img"].shape for i in range(len(cached))} == {(3, 24, 24)}


def test_in_memory_nr_dataset_is_registered_for_options_files():
    from pyiqa.utils.registry import DATASET_REGISTRY

    register()
    register()  # idempotent
    assert DATASET_REGISTRY.get("InMemoryNRDataset") is InMemoryNRDataset


def test_strengths_dataset_in_memory_gives_the_same_crops_without_reading_files(folder):
    kwargs = {"image_size": 24, "random_crops": True, "repeats": 3}
    cached = StrengthsDataset(folder, SLUGS, in_memory=True, **kwargs)
    copy = _copy_then_delete_images(folder)
    with pytest.raises(ImageReadError):
        StrengthsDataset(folder, SLUGS, **kwargs)[0]
    plain = StrengthsDataset(copy, SLUGS, **kwargs)
    assert len(cached) == len(plain) == 15

    def equal(got, want):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    _same_items(cached, plain, equal)
