"""The project's scoring command and pyiqa's own command, run as a user runs them."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_plugins.scoring import Failure, LoadedMetric, score_paths
from iqa_plugins.scoring_output import MetricSpec, ScoreWriter, normalise_path

METRIC = "piqe"  # a pyiqa NR metric that needs no weights download


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng()
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name, size in (("a.png", (48, 64)), ("sub/b.png", (48, 64)), ("c.png", (40, 40))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name)
    (root / "fake.jpg").write_text("not an image")
    Image.new("RGB", (1, 1)).save(root / "tiny.png")
    return root


@pytest.mark.slow
def test_score_folder_csv_with_bad_files(fresh, console_script, folder, tmp_path):
    out = tmp_path / "scores.csv"
    result = fresh([console_script("iqa-plugins"), "score", str(folder), "--metric", METRIC,
                    "--batch-size", "2", "--workers", "1", "-o", str(out)])
    assert result.returncode == 1, result.stderr  # some inputs failed
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows) == sorted(normalise_path(folder / n) for n in ("a.png", "sub/b.png", "c.png"))
    assert all(np.isfinite(float(r[METRIC])) for r in rows)
    assert "fake.jpg: not a recognised image format" in result.stderr
    assert "tiny.png: image is 1x1" in result.stderr


@pytest.mark.slow
def test_jsonl_resume_and_module_entry(fresh, python_cmd, folder, tmp_path):
    out = tmp_path / "scores.jsonl"
    first = fresh([*python_cmd, "-m", "iqa_plugins", "score", str(folder / "a.png"), "--metric", METRIC,
                   "-o", str(out), "--workers", "0", "-q"])
    assert first.returncode == 0, first.stderr
    second = fresh([*python_cmd, "-m", "iqa_plugins", "score", str(folder / "*.png"), str(folder / "sub"),
                    "--metric", METRIC, "-o", str(out), "--resume", "--workers", "0", "-q"])
    assert second.returncode == 1, second.stderr  # tiny.png is still refused
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]  # after the metadata line
    assert sorted(r["path"] for r in rows) == sorted(normalise_path(folder / n) for n in ("a.png", "c.png", "sub/b.png"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "no such file or directory"),
        (["{empty}"], "directory contains no image files"),
        (["{folder}", "--metric-opt", "oops"], "--metric-opt expects [METRIC:]KEY=VALUE"),
        (["{folder}", "--metric", "no_such_metric"], "unknown --metric"),
        (["{folder}", "--metric", "psnr"], "full-reference"),
    ],
)
def test_unusable_invocations_exit_2_with_reason(fresh, console_script, folder, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    values = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "folder": folder / "a.png"}
    argv = [a.format(**values) for a in args]
    if "--metric" not in argv:
        argv += ["--metric", METRIC]
    result = fresh([console_script("iqa-plugins"), "score", *argv, "--workers", "0"])
    assert result.returncode == 2
    assert message in result.stderr


def test_top_level_help(fresh, console_script):
    result = fresh([console_script("iqa-plugins"), "--help"])
    assert result.returncode == 0
    for command in ("score", "generate", "convert", "train", "demo"):
        assert command in result.stdout


class _InterruptedMetric:
    """Scores the first batch, then the user presses Ctrl-C."""

    device = torch.device("cpu")

    def __init__(self):
        self.net = torch.nn.Identity()
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls > 1:
            raise KeyboardInterrupt
        return batch.mean(dim=(1, 2, 3)).unsqueeze(1)


def _loaded(model, name="fake"):
    return LoadedMetric(MetricSpec(name), model)


def test_rows_already_written_survive_an_interruption(folder, tmp_path):
    paths = [normalise_path(p) for p in (folder / "a.png", folder / "sub" / "b.png", folder / "c.png")]
    out = tmp_path / "partial.csv"
    metric = _loaded(_InterruptedMetric())
    with out.open("w", newline="") as handle:
        writer = ScoreWriter(handle, "csv", [metric.spec], output=str(out))
        with pytest.raises(KeyboardInterrupt):
            for row in score_paths(paths, [metric], batch_size=2):
                writer.write(row)
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == paths[:2]
    expected = np.asarray(Image.open(paths[0]), dtype=np.float32).mean() / 255
    assert float(rows[0]["fake"]) == pytest.approx(expected, rel=1e-5)


def test_mixed_sizes_are_batched_per_size(folder):
    class Recorder(_InterruptedMetric):
        def __call__(self, batch):
            shapes.append(tuple(batch.shape))
            return batch.mean(dim=(1, 2, 3)).unsqueeze(1)

    shapes = []
    buffer = io.StringIO()
    paths = [str(folder / "a.png"), str(folder / "c.png"), str(folder / "sub" / "b.png")]
    metric = _loaded(Recorder())
    writer = ScoreWriter(buffer, "jsonl", [metric.spec])
    items = list(score_paths(paths, [metric], batch_size=3))
    assert not [i for i in items if isinstance(i, Failure)]
    for row in items:
        writer.write(row)
    assert sorted(shapes) == [(1, 3, 40, 40), (2, 3, 48, 64)]
    assert [json.loads(line)["path"] for line in buffer.getvalue().splitlines()[1:]] == [paths[0], paths[2], paths[1]]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_metric_sees_exactly_read_image_values(tmp_path, num_workers):
    """8-bit files travel as bytes and become float in the scoring process; 16-bit ones stay float: the metric
    gets the values ``read_image`` gives either way, bit for bit."""
    from iqa_plugins.io import read_image

    rng = np.random.default_rng()
    paths = []
    for name, array in (("rgb.jpg", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
                        ("grey16.png", rng.integers(0, 65536, (40, 56), dtype=np.uint16))):
        Image.fromarray(array).save(tmp_path / name)
        paths.append(str(tmp_path / name))

    class Keeper:
        device = torch.device("cpu")

        def __call__(self, batch):
            seen.append(batch.clone())
            return batch.mean(dim=(1, 2, 3)).unsqueeze(1)

    seen = []
    rows = list(score_paths(paths, [_loaded(Keeper())], batch_size=2, num_workers=num_workers))
    assert len(rows) == 2 and not [r for r in rows if isinstance(r, Failure)]
    for path, batch in zip(paths, seen):
        assert batch.dtype == torch.float32
        assert torch.equal(batch[0], torch.from_numpy(read_image(path).transpose(2, 0, 1).copy()))


@pytest.mark.slow
def test_pyiqa_command_scores_a_folder(fresh, console_script, folder):
    for bad in ("fake.jpg", "tiny.png"):
        (folder / bad).unlink()
    result = fresh([console_script("pyiqa"), METRIC, "-t", str(folder), "--device", "cpu"])
    assert result.returncode == 0, result.stderr
    assert "'mean'" in result.stdout
