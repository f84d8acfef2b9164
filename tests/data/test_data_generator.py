"""The multi-distortion generator end to end: outputs, determinism, resume, bad inputs, pyiqa loading."""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from data_photos import photo_uint8
from PIL import Image

from iqa_plugins.data import generator as gen
from iqa_plugins.data.distortions import DISTORTIONS

SLUGS = [d.slug for d in DISTORTIONS]


@pytest.fixture(scope="module")
def pristine_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pristine")
    Image.fromarray(photo_uint8("coffee", (128, 96))).save(folder / "coffee.png")
    Image.fromarray(photo_uint8("astronaut", (96, 96))).save(folder / "astronaut.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image, ignored")
    return folder


def run(src: Path, out: Path, **kw) -> gen.GenerationReport:
    kw.setdefault("variants", 3)
    kw.setdefault("seed", 7)
    kw.setdefault("labeller", "psnr")
    kw.setdefault("progress", False)
    return gen.generate_dataset(src, out, **kw)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def folder_bytes(out: Path) -> dict[str, bytes]:
    names = ["strengths.csv", "meta_info.csv", "split.pkl"]
    files = {n: (out / n).read_bytes() for n in names if (out / n).exists()}
    files.update({f"images/{p.name}": p.read_bytes() for p in sorted((out / "images").iterdir())})
    return files


@pytest.fixture(scope="module")
def generated(pristine_dir, tmp_path_factory) -> tuple[Path, gen.GenerationReport]:
    out = tmp_path_factory.mktemp("out")
    return out, run(pristine_dir, out, workers=1)


def test_outputs(generated):
    out, report = generated
    assert report.ok and report.images == 2 and report.generated == 6 and report.rows == 6
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == [f"astronaut_0{v}.png" for v in range(3)] + [f"coffee_0{v}.png" for v in range(3)]
    with Image.open(out / "images" / "coffee_01.png") as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (128, 96)

    rows = read_csv(out / "strengths.csv")
    assert list(rows[0]) == ["image", "reference", "variant", *SLUGS, "order"]
    for row in rows:
        record = json.loads((out / "records" / row["image"].replace(".png", ".json")).read_text())
        order = row["order"].split(";")
        assert order == [s["slug"] for s in record["steps"]]
        assert 1 <= len(order) <= 25 and len(set(order)) == len(order)
        for slug in SLUGS:
            level = next((s["level"] for s in record["steps"] if s["slug"] == slug), 0)
            assert float(row[slug]) == pytest.approx(level / 5)

    meta = read_csv(out / "meta_info.csv")
    assert [m["dist_name"] for m in meta] == [r["image"] for r in rows]
    assert list(meta[0]) == ["dist_name", "mos", "ref_name"]
    for m in meta:
        pristine_name = m["ref_name"]
        assert pristine_name in {"coffee.png", "astronaut.jpg"}
        assert 0 < float(m["mos"]) <= 100


def test_images_reproduce_from_records(generated, pristine_dir):
    from iqa_plugins.data.distortions import apply_distortions, to_float, to_uint8

    out, _ = generated
    record = json.loads((out / "records" / "coffee_02.json").read_text())
    pristine = np.asarray(Image.open(pristine_dir / "coffee.png").convert("RGB"))
    rng = gen.variant_rng(7, "coffee.png", 2)
    steps = gen.sample_distortions(rng, 25, "uniform")
    assert [[n, lv] for n, lv in steps] == [[s["number"], s["level"]] for s in record["steps"]]
    expected = to_uint8(apply_distortions(to_float(pristine), steps, rng))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / "coffee_02.png")), expected)
    assert float(record["label"]) == pytest.approx(gen.psnr_label(to_float(pristine), to_float(expected)))


def test_split_is_by_pristine_image(generated):
    out, _ = generated
    splits = pickle.loads((out / "split.pkl").read_bytes())
    assert list(splits) == [1]
    rows = read_csv(out / "strengths.csv")
    phases = splits[1]
    assert sorted(phases["train"] + phases["val"] + phases["test"]) == list(range(len(rows)))
    refs = {phase: {rows[i]["reference"] for i in idx} for phase, idx in phases.items()}
    assert not (refs["train"] & refs["test"]) and not (refs["train"] & refs["val"]) and not (refs["val"] & refs["test"])


def test_pyiqa_general_nr_dataset_loads_the_output(generated):
    pytest.importorskip("pyiqa")
    from pyiqa.data.general_nr_dataset import GeneralNRDataset

    out, _ = generated
    splits = pickle.loads((out / "split.pkl").read_bytes())
    meta = read_csv(out / "meta_info.csv")
    for phase in ("train", "test"):
        opt = {
            "name": "generated",
            "type": "GeneralNRDataset",
            "dataroot_target": str(out / "images"),
            "meta_info_file": str(out / "meta_info.csv"),
            "split_file": str(out / "split.pkl"),
            "phase": phase,
        }
        ds = GeneralNRDataset(opt)
        assert len(ds) == len(splits[1][phase]) > 0
        item = ds[0]
        row = meta[splits[1][phase][0]]
        assert Path(item["img_path"]).name == row["dist_name"]
        assert float(item["mos_label"]) == pytest.approx(float(row["mos"]), rel=1e-6)
        assert tuple(item["img"].shape[1:]) in {(96, 128), (96, 96)} and item["img"].shape[0] == 3


@pytest.mark.slow
def test_deterministic_across_workers_and_resumable(pristine_dir, generated, tmp_path):
    out1, _ = generated
    out2 = tmp_path / "parallel"
    report = run(pristine_dir, out2, workers=2)
    assert report.ok and report.generated == 6
    assert folder_bytes(out2) == folder_bytes(out1)

    # interrupt simulation: one image lost, a stale temporary file left behind, one record half-written
    (out2 / "images" / "coffee_01.png").unlink()
    (out2 / "images" / ".coffee_02.png.k2x9q1.part").write_bytes(b"\x89PNG half")
    (out2 / "records" / "astronaut_00.json").write_text('{"fingerprint": ')
    (out2 / "strengths.csv").unlink()
    report = run(pristine_dir, out2, workers=1)
    assert report.ok
    assert report.generated == 2 and report.skipped == 4 and report.stale_temporaries_removed == 1
    assert not list((out2 / "images").glob(".*"))
    assert folder_bytes(out2) == folder_bytes(out1)

    # nothing left to do
    report = run(pristine_dir, out2, workers=1)
    assert report.generated == 0 and report.skipped == 6


def test_relabel_without_regenerating(pristine_dir, generated, tmp_path):
    out1, _ = generated
    out = tmp_path / "o"
    report = run(pristine_dir, out, labeller=None)
    assert report.generated == 6 and not (out / "meta_info.csv").exists() and (out / "split.pkl").exists()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    report = run(pristine_dir, out, labeller="psnr")
    assert report.generated == 0 and report.relabelled == 6
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert (out / "meta_info.csv").read_bytes() == (out1 / "meta_info.csv").read_bytes()

    def brightness(pristine: np.ndarray, distorted: np.ndarray) -> float:
        return float(distorted.mean())

    run(pristine_dir, out, labeller=brightness)
    meta = read_csv(out / "meta_info.csv")
    first = np.asarray(Image.open(out / "images" / meta[0]["dist_name"]), dtype=np.float64) / 255
    assert float(meta[0]["mos"]) == pytest.approx(first.mean())


def test_unreadable_input_is_reported_and_skipped(pristine_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in pristine_dir.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.png").write_bytes(b"definitely not a png")
    out = tmp_path / "out"
    report = run(src, out, variants=1, max_distortions=2)
    assert not report.ok and len(report.failed) == 1 and report.failed[0].startswith("broken.png:")
    assert report.rows == 2 and len(read_csv(out / "meta_info.csv")) == 2

    parser = argparse.ArgumentParser()
    gen.add_arguments(parser)
    args = parser.parse_args([str(src), str(out), "--variants", "1", "--max-distortions", "2", "--seed", "7"])
    args.label, args.no_progress, args.workers = "psnr", True, 1
    assert gen.main(args) == 1  # the broken file still fails; finished results are kept


def test_settings_and_argument_errors(pristine_dir, generated, tmp_path):
    out, _ = generated
    with pytest.raises(gen.GeneratorError, match="generated with"):
        run(pristine_dir, out, seed=8)
    with pytest.raises(gen.GeneratorError, match="input_dir"):
        run(tmp_path / "missing", tmp_path / "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(gen.GeneratorError, match="no images"):
        run(empty, tmp_path / "x")
    for kw, word in (
        ({"variants": 0}, "variants"),
        ({"max_distortions": 26}, "max_distortions"),
        ({"sampling": "random"}, "sampling"),
        ({"labeller": "lpips"}, "labeller"),
        ({"split_ratios": (1, -1, 0)}, "split_ratios"),
        ({"workers": 0}, "workers"),
    ):
        with pytest.raises(gen.GeneratorError, match=word):
            run(pristine_dir, tmp_path / "y", **kw)
    clash = tmp_path / "clash"
    clash.mkdir()
    for name in ("a.png", "a.bmp"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(clash / name)
    with pytest.raises(gen.GeneratorError, match="share the name"):
        run(clash, tmp_path / "z")


def test_sampling():
    counts = []
    for v in range(300):
        steps = gen.sample_distortions(gen.variant_rng(0, "x.png", v), 25, "uniform")
        numbers = [n for n, _ in steps]
        assert len(set(numbers)) == len(numbers) and all(1 <= lv <= 5 for _, lv in steps)
        counts.append(len(steps))
    assert min(counts) == 1 and max(counts) >= 23 and 10 < np.mean(counts) < 16  # K uniform in 1..25
    assert max(len(gen.sample_distortions(gen.variant_rng(0, "x", v), 4)) for v in range(100)) == 4
    group_of = {n: g for g, members in enumerate(gen.ARNIQA_GROUPS) for n in members}
    assert sorted(group_of) == list(range(1, 26))
    for v in range(100):
        steps = gen.sample_distortions(gen.variant_rng(0, "x", v), 25, "grouped")
        groups = [group_of[n] for n, _ in steps]
        assert 1 <= len(steps) <= 7 and len(set(groups)) == len(groups)
    # seeds depend on (seed, name, variant) only
    a = gen.sample_distortions(gen.variant_rng(1, "a.png", 0))
    assert a == gen.sample_distortions(gen.variant_rng(1, "a.png", 0))
    assert a != gen.sample_distortions(gen.variant_rng(1, "a.png", 1)) or a != gen.sample_distortions(
        gen.variant_rng(2, "a.png", 0)
    )


def test_module_entry_point(pristine_dir, tmp_path, python_cmd):
    res = subprocess.run(
        [*python_cmd, "-m", "iqa_plugins.data.generator", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "--max-distortions" in res.stdout and "--label" in res.stdout
    res = subprocess.run(
        [*python_cmd, "-m", "iqa_plugins.data.generator", str(tmp_path / "nope"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "input_dir" in res.stderr
