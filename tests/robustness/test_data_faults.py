"""Data files, checkpoints, generate and train under bad input: nothing from a data folder runs, every
failure is one line naming the file, exit 2, and no half-made experiment is left behind."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from robust_helpers import save_random_png

from iqa_plugins.split_files import SPLIT_FILE, SplitFileError, folder_split_rows, load_splits, save_splits


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({1: {"train": RunsCode(marker), "val": [0]}}))
    return path


GOOD_SPLITS = {1: {"train": [0, 1], "val": [2], "test": []}}


@pytest.mark.parametrize(
    "payload, message",
    [
        ("code", "references posix.system"),
        (pickle.dumps(GOOD_SPLITS.__class__.fromkeys([1], Path("x"))), "references pathlib"),
        (b"this is not a pickle", "refused"),
        (b"", "refused"),
        (pickle.dumps([0, 1, 2]), "expected {split index"),
        (pickle.dumps({1: [0, 1]}), "is not a {phase: rows} dict"),
        (pickle.dumps({1: {"train": [0, -1]}}), "not a list of row numbers"),
        (pickle.dumps({1: {"train": ["a.png"]}}), "not a list of row numbers"),
    ],
)
def test_split_files_are_read_without_running_code(tmp_path, payload, message):
    path, marker = tmp_path / "split.pkl", tmp_path / "ran"
    if payload == "code":
        evil_pickle(path, marker)
    else:
        path.write_bytes(payload)
    with pytest.raises(SplitFileError, match=message.replace("{", r"\{").replace("}", r"\}")) as info:
        load_splits(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(GOOD_SPLITS)) == load_splits(_write(tmp_path / "ok.pkl", GOOD_SPLITS))


def _write(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def test_split_rows_stored_as_numpy_integers_are_accepted(tmp_path):
    splits = {1: {"train": list(np.arange(3, dtype=np.int64)), "val": [np.int32(3)]}}
    assert load_splits(_write(tmp_path / "np.pkl", splits)) == {1: {"train": [0, 1, 2], "val": [3]}}


def test_a_data_folders_split_file_round_trips_and_may_be_absent(tmp_path):
    assert folder_split_rows(tmp_path, 1, "train") is None  # no split file: all rows
    save_splits(tmp_path / SPLIT_FILE, GOOD_SPLITS)
    assert load_splits(tmp_path / SPLIT_FILE) == GOOD_SPLITS
    index = next(iter(GOOD_SPLITS))
    for phase, rows in GOOD_SPLITS[index].items():
        assert folder_split_rows(tmp_path, index, phase) == rows
    with pytest.raises(SplitFileError, match="no split 99"):
        folder_split_rows(tmp_path, 99, "train")


def test_train_exiqa_refuses_a_code_running_split_file(cli, tmp_path):
    data, marker = tmp_path / "data", tmp_path / "ran"
    data.mkdir()
    evil_pickle(data / "split.pkl", marker)
    result = cli(["train", "exiqa", "--phase", "1", "--data", str(data), "--out", str(tmp_path / "w.pth")])
    assert result.code == 2 and "split.pkl" in result.err and "references posix.system" in result.err
    assert not marker.exists() and not (tmp_path / "w.pth").exists()


def _image_set(folder: Path, n: int = 4, corrupt: tuple[int, ...] = ()) -> Path:
    rows = []
    for i in range(n):
        path = folder / f"img{i}.png"
        if i in corrupt:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            save_random_png(path, seed=i)
        rows.append((path.name, i / n))
    meta = folder / "meta.csv"
    with meta.open("w", newline="") as handle:
        csv.writer(handle).writerows([("dist_name", "mos"), *rows])
    return meta


def _train_drexperts(cli, images: Path, meta: Path, root: Path, *extra: str):
    return cli(["train", "drexperts", "--dataset", "livec", "--dataroot", str(images), "--meta-info", str(meta),
                "--root", str(root), "--name", "run", "--splits", "0", "--device", "cpu", "--quiet", *extra])


@pytest.mark.parametrize(
    "corrupt, message",
    [((2,), "1 of 4 images are unreadable: {images}/img2.png: not a recognised image format"),
     ((0, 1, 2, 3), "no readable images (4 listed; e.g. {images}/img0.png")],
)
def test_train_drexperts_names_unreadable_images_before_starting(cli, tmp_path, corrupt, message):
    images = tmp_path / "images"
    meta = _image_set(images, corrupt=corrupt)
    result = _train_drexperts(cli, images, meta, tmp_path / "root")
    assert result.code == 2, result.err
    assert message.format(images=images) in result.err
    assert not (tmp_path / "root" / "experiments").exists()


def test_train_drexperts_refuses_a_code_running_split_file(cli, tmp_path):
    images, marker = tmp_path / "images", tmp_path / "ran"
    meta = _image_set(images)
    evil = evil_pickle(tmp_path / "evil.pkl", marker)
    result = _train_drexperts(cli, images, meta, tmp_path / "root", "--set", f"datasets.train.split_file={evil}")
    assert result.code == 2 and "evil.pkl" in result.err and not marker.exists()
    assert not (tmp_path / "root" / "experiments").exists()


def test_train_exiqa_with_only_corrupt_images_says_so(cli, tmp_path):
    data = tmp_path / "data"
    _image_set(data / "images", corrupt=(0, 1, 2, 3))
    (data / "images" / "meta.csv").rename(data / "meta_info.csv")
    result = cli(["train", "exiqa", "--phase", "2", "--data", str(data), "--config", "small",
                  "--out", str(tmp_path / "w.pth"), "--device", "cpu"])
    assert result.code == 2 and "no readable images (4 listed" in result.err and "img0.png" in result.err
    assert not (tmp_path / "w.pth").exists()


# ------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("metric", ["drexperts", "exiqa"])
def test_a_code_running_checkpoint_is_refused(cli, tmp_path, metric):
    marker, weights = tmp_path / "ran", tmp_path / "evil.pth"
    torch.save({"state_dict": RunsCode(marker)}, weights)
    save_random_png(tmp_path / "a.png")
    result = cli(["score", str(tmp_path / "a.png"), "--metric", metric, "--metric-opt",
                  f"pretrained_model_path={weights}", "--workers", "0", "-o", str(tmp_path / "s.csv")])
    assert result.code == 2 and "evil.pth" in result.err
    assert not marker.exists() and not (tmp_path / "s.csv").exists()


def test_convert_a_missing_checkpoint(cli, tmp_path):
    result = cli(["convert", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "out.pth")])
    assert result.code == 2 and "missing.pth" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out.pth").exists()


# --------------------------------------------------------------------------------------------- generate


@pytest.fixture
def pristine(tmp_path):
    folder = tmp_path / "pristine"
    save_random_png(folder / "p0.png", size=(40, 48), seed=1)
    return folder


def _generate(cli, source: Path, out: Path):
    return cli(["generate", str(source), str(out), "--variants", "1", "--max-distortions", "1",
                "--workers", "1", "--no-progress", "--label", "none"])


def test_generate_with_a_corrupt_config(cli, pristine, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{not json")
    result = _generate(cli, pristine, out)
    assert result.code == 2 and "config.json" in result.err and "not JSON" in result.err
    assert (out / "config.json").read_text() == "{not json"


def test_generate_into_a_path_under_a_file(cli, pristine, tmp_path):
    (tmp_path / "file").write_text("x")
    result = _generate(cli, pristine, tmp_path / "file" / "out")
    assert result.code == 2 and "cannot be written" in result.err and "file/out" in result.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_generate_into_a_read_only_folder(cli, pristine, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = _generate(cli, pristine, out)
    finally:
        out.chmod(0o700)
    assert result.code == 2 and "cannot be written" in result.err


def test_generate_from_a_missing_folder(cli, tmp_path):
    result = _generate(cli, tmp_path / "nothing", tmp_path / "out")
    assert result.code == 2 and "nothing" in result.err and "is not a folder" in result.err


def test_unknown_command(cli):
    result = cli(["scroe", "x"])
    assert result.code == 2 and "unknown command 'scroe'" in result.err



@pytest.mark.parametrize("fmt, keep", [("JPEG", 0.5), ("PNG", 0.5), ("PNG", 0.98), ("JPEG", None), ("PNG", None)])
def test_training_image_probe_catches_truncation(tmp_path, fmt, keep):
    from PIL import Image

    from iqa_plugins.io import ImageReadError, probe_image

    rng = np.random.default_rng(0)
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path, format=fmt)
    if keep is None:
        probe_image(path)  # whole files pass
        return
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageReadError, match=path.name):
        probe_image(path)
