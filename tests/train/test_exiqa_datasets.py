"""Converters from KADID-10k, TID2013, CSIQ and LIVE file trees (synthetic, in the real naming schemes) to
ExIQA's strengths table, and the shipped attribute sets they use."""

from __future__ import annotations

import argparse
import csv
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from iqa_plugins.archs.exiqa_arch import ATTRIBUTE_SETS, load_attribute_set
from iqa_plugins.train import cli as train_cli
from iqa_plugins.train.exiqa_datasets import prepare_dataset
from iqa_plugins.train.exiqa_phases import StrengthsDataset


def _image(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(path.name)).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _table(out) -> dict[str, dict[str, float]]:
    with (out / "strengths.csv").open() as handle:
        return {row.pop("image"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)}


def _present(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if v}


@pytest.mark.parametrize("name,count,levels", [("kadid10k", 25, {}), ("tid2013", 24, {}), ("csiq", 6, {"contrast": 4}),
                                               ("live", 5, {})])
def test_shipped_attribute_sets(name, count, levels):
    attributes = load_attribute_set(name)
    assert attributes.num_distortions == count and attributes.num_attributes == 5 * count
    assert len(set(attributes.attributes)) == 5 * count  # no phrase twice: each names one distortion's effect
    assert list(attributes.distortion_numbers) == list(range(1, count + 1))
    expected = [levels.get(slug, 5) for slug in attributes.distortion_slugs]
    assert list(attributes.distortion_levels) == expected
    assert load_attribute_set(ATTRIBUTE_SETS[name]) == attributes


def test_kadid10k_names_and_scores(tmp_path):
    root = tmp_path / "kadid10k"
    names = ["I01_01_01.png", "I01_25_05.png", "I02_13_03.png", "I03_07_02.png", "I01.png"]  # + a reference
    for name in names:
        _image(root / "images" / name)
    (root / "dmos.csv").write_text("dist_img,ref_img,dmos,var\n" + "".join(
        f"{n},{n[:3]}.png,{1 + k / 2},0.1\n" for k, n in enumerate(names[:4])))
    counts = prepare_dataset("kadid10k", root, tmp_path / "out")
    assert counts == {"images": 4, "references": 3, "train": counts["train"], "test": counts["test"], "scored": 4}
    table = _table(tmp_path / "out")
    assert _present(table["images/I01_01_01.png"]) == {"gaussian_blur": 0.2}
    assert _present(table["images/I01_25_05.png"]) == {"contrast_change": 1.0}
    assert _present(table["images/I02_13_03.png"]) == {"impulse_noise": 0.6}
    meta = (tmp_path / "out" / "meta_info.csv").read_text().splitlines()
    assert meta[0] == "dist_name,mos" and meta[2] == "images/I01_25_05.png,1.5"
    # The generic reader takes it: the columns are the attribute set's distortions, the images resolve.
    data = StrengthsDataset(tmp_path / "out", load_attribute_set("kadid10k").distortion_slugs, image_size=None)
    image, strengths = data[1]
    assert image.shape == (3, 16, 16) and float(strengths[24]) == 1.0


def test_tid2013_names_scores_and_split_by_reference(tmp_path):
    root = tmp_path / "tid2013"
    names = [f"i{r:02d}_{d:02d}_{lvl}.bmp" for r in (1, 2, 3, 4, 5) for d, lvl in ((1, 1), (17, 4), (24, 5))]
    names[0] = names[0].replace("i01", "I01")  # TID2013 spells a few with a capital I
    for name in names:
        _image(root / "distorted_images" / name)
    _image(root / "reference_images" / "I01.BMP")
    (root / "mos_with_names.txt").write_text("".join(f"{k / 3:.5f} {n.lower()}\n" for k, n in enumerate(names)))
    counts = prepare_dataset("tid2013", root, tmp_path / "out", train_ratio=0.6, seed=1)
    assert counts["images"] == 15 and counts["references"] == 5 and counts["scored"] == 15
    table = _table(tmp_path / "out")
    slugs = load_attribute_set("tid2013").distortion_slugs
    assert _present(table["distorted_images/i02_17_4.bmp"]) == {"contrast_change": 0.8}
    assert _present(table["distorted_images/i03_24_5.bmp"]) == {slugs[23]: 1.0}
    assert _present(table["distorted_images/I01_01_1.bmp"]) == {"additive_gaussian_noise": 0.2}
    split = pickle.loads((tmp_path / "out" / "split.pkl").read_bytes())[1]
    rows = list(table)
    train_refs = {rows[k][17:20].lower() for k in split["train"]}
    test_refs = {rows[k][17:20].lower() for k in split["test"]}
    assert len(train_refs) == 3 and len(test_refs) == 2 and not train_refs & test_refs


def test_csiq_names_with_four_contrast_levels(tmp_path):
    root = tmp_path / "CSIQ"
    for name in ("awgn/1600.AWGN.1.png", "blur/1600.BLUR.5.png", "contrast/1600.contrast.2.png",
                 "fnoise/aerial_city.fnoise.3.png", "jpeg/aerial_city.JPEG.4.png",
                 "jpeg2000/aerial_city.jpeg2000.1.png"):
        _image(root / "dst_imgs" / name)
    counts = prepare_dataset("csiq", root, tmp_path / "out")
    assert counts["images"] == 6 and counts["references"] == 2 and counts["scored"] == 0
    assert not (tmp_path / "out" / "meta_info.csv").exists()
    table = _table(tmp_path / "out")
    assert _present(table["dst_imgs/contrast/1600.contrast.2.png"]) == {"contrast": 0.5}
    assert _present(table["dst_imgs/blur/1600.BLUR.5.png"]) == {"blur": 1.0}
    assert _present(table["dst_imgs/jpeg2000/aerial_city.jpeg2000.1.png"]) == {"jpeg2000": 0.2}


def test_live_levels_from_parameters_and_dmos(tmp_path):
    root = tmp_path / "databaserelease2"
    params = {"wn": [0.5, 0.01, 2.0, 0.1, 1.0], "jp2k": [0.2, 3.0, 0.05, 1.0, 0.5]}
    for folder, values in params.items():
        lines = [f"ref{k % 2}.bmp img{k + 1}.bmp {v}" for k, v in enumerate(values)]
        (root / folder).mkdir(parents=True)
        (root / folder / "info.txt").write_text("\n".join(lines) + "\n")
        for k in range(len(values)):
            _image(root / folder / f"img{k + 1}.bmp")
    dmos = np.zeros(982)
    orgs = np.zeros(982)
    dmos[:227] = np.arange(227) / 10  # jp2k first
    dmos[227 + 233 : 227 + 233 + 174] = 50 + np.arange(174)  # then jpeg, then wn
    orgs[1] = 1  # jp2k img2 is an undistorted copy
    savemat(root / "dmos.mat", {"dmos": dmos[None], "orgs": orgs[None]})
    counts = prepare_dataset("live", root, tmp_path / "out")
    assert counts == {"images": 10, "references": 2, "train": counts["train"], "test": counts["test"], "scored": 10}
    table = _table(tmp_path / "out")
    # white noise: a larger sigma is more severe; 0.01 is the mildest (level 1), 2.0 the most severe (level 5)
    assert [table[f"wn/img{k}.bmp"]["wn"] for k in range(1, 6)] == [0.6, 0.2, 1.0, 0.4, 0.8]
    # JPEG2000: a lower bit rate is more severe; img2 is flagged as undistorted in dmos.mat
    assert [table[f"jp2k/img{k}.bmp"]["jp2k"] for k in range(1, 6)] == [0.8, 0.0, 1.0, 0.4, 0.6]
    meta = dict(line.split(",") for line in (tmp_path / "out" / "meta_info.csv").read_text().splitlines()[1:])
    assert float(meta["jp2k/img3.bmp"]) == pytest.approx(0.2) and float(meta["wn/img2.bmp"]) == 51.0


def test_prepare_command_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    root = tmp_path / "kadid"
    for name in ("I01_02_03.png", "I02_02_04.png"):
        _image(root / "images" / name)
    args = ["exiqa", "--prepare", "kadid10k", "--source", str(root), "--data", str(tmp_path / "out")]
    assert train_cli.main(parser.parse_args(args)) == 0
    assert "kadid10k: 2 images of 2 references" in capsys.readouterr().out
    assert (tmp_path / "out" / "images").resolve() == root.resolve()
    assert train_cli.main(parser.parse_args(["exiqa", "--prepare", "csiq", "--source", str(root), "--data",
                                             str(tmp_path / "o2")])) == 2
    assert "no csiq images found" in capsys.readouterr().err
