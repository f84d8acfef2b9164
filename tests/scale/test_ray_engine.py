"""The Ray Data engine on a local cluster started here (2 CPU workers): same scores as one process, bad files
named, a worker killed mid-run loses nothing, a rerun skips what is done."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine is an optional extra: pip install 'iqa-plugins[ray]'")
pytest.importorskip("ray.data")

import pyarrow as pa  # noqa: E402  (installed with ray[data])
import pyarrow.parquet as pq  # noqa: E402

from iqa_plugins.metric_factory import create_metric  # noqa: E402
from iqa_plugins.report import read_score_file  # noqa: E402
from iqa_plugins.scale.ray_engine import score_with_ray  # noqa: E402
from iqa_plugins.scoring import Failure, MetricLoadError, load_metric, score_paths  # noqa: E402
from iqa_plugins.scoring_output import MetricSpec, open_for_resume, read_rows  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
WORKERS = 2
SIZES = [(200, 260), (200, 260), (96, 128), (200, 260), (96, 128), (120, 90)]


@pytest.fixture(scope="module")
def cluster():
    # One logical CPU more than the actors take, or Ray Data's own tasks could starve (2-core machines).
    ray.init(num_cpus=WORKERS + 1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def options(small_weights):
    return {"pretrained_model_path": str(small_weights), "num_crops": 2}


def _single_process(paths, options, batch_size=2):
    """Scores by path and the failures of the single-process loop."""
    metric = load_metric("drexperts", options, "cpu")
    items = list(score_paths([str(p) for p in paths], [metric], batch_size=batch_size))
    return ({r["path"]: r["drexperts"] for r in items if not isinstance(r, Failure)},
            [r for r in items if isinstance(r, Failure)])


def _csv_scores(path):
    return {row["path"]: float(row["drexperts"]) for row in csv.DictReader(open(path, newline=""))}


def test_same_scores_as_one_process_and_bad_files_named(cluster, tmp_path, options, write_photos):
    paths = write_photos(tmp_path / "imgs", SIZES)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    write_photos(tmp_path / "imgs" / "small", [(8, 8)])
    expected, single = _single_process(sorted(p for p in (tmp_path / "imgs").rglob("*.png")), options)
    assert len(expected) == len(paths) and len(single) == 2

    out = tmp_path / "scores.csv"
    summary = score_with_ray([str(tmp_path / "imgs")], "drexperts", out, metric_options=options,
                             num_workers=WORKERS, batch_size=2, progress=False)
    assert (summary.scored, summary.merged_rows) == (len(paths), len(paths))
    got = _csv_scores(out)
    assert set(got) == set(expected)
    for path, score in expected.items():
        # Same model and inputs; only the torch thread count (summation order) may differ from this process.
        assert got[path] == pytest.approx(score, rel=1e-6, abs=1e-7)
    errors = {json.loads(line)["path"]: json.loads(line)["reason"]
              for line in open(str(out) + ".errors.jsonl")}
    assert "not a recognised image format" in errors[str(tmp_path / "imgs" / "broken.png")]
    assert "smaller than the minimum" in errors[str(tmp_path / "imgs" / "small" / "img000.png")]
    meta = json.loads(open(str(out) + ".meta.json").read())
    assert meta["format"] == "iqa-plugins-scores" and meta["columns"] == ["path", "drexperts"]
    assert meta["metrics"][0]["name"] == "drexperts" and meta["metrics"][0]["options"] == options


def test_several_metrics_in_one_pass(cluster, tmp_path, options, write_photos):
    # a plugin metric and one of pyiqa's own (weight-free, so every process builds the same one)
    paths = write_photos(tmp_path / "imgs", [(128, 160), (96, 128), (128, 160)])
    both = {"drexperts": options, "piqe": {}}
    metrics = [load_metric(name, opts, "cpu") for name, opts in both.items()]
    expected = {r["path"]: r for r in score_paths([str(p) for p in paths], metrics, batch_size=2)}
    out = tmp_path / "scores.jsonl"
    summary = score_with_ray([str(tmp_path / "imgs")], ["drexperts", "piqe"], out, metric_options=both,
                             num_workers=WORKERS, batch_size=2, progress=False)
    assert summary.scored == 3 and not summary.failures
    meta, rows = read_rows(out)
    assert [m["name"] for m in meta["metrics"]] == ["drexperts", "piqe"]
    assert meta["columns"] == ["path", "drexperts", "piqe"]
    assert open_for_resume(out, "jsonl", [MetricSpec(n, o) for n, o in both.items()]).done == set(expected)
    for row in rows:
        want = expected[row["path"]]
        assert list(row) == list(want)
        assert [row[c] for c in meta["columns"][1:]] == pytest.approx([want[c] for c in meta["columns"][1:]],
                                                                      rel=1e-5, abs=1e-6)


def test_a_metric_that_cannot_be_built_touches_no_output(tmp_path, options, write_photos):
    write_photos(tmp_path / "imgs", [(96, 128)])
    out = tmp_path / "scores.csv"
    out.write_text("kept\n")
    with pytest.raises(MetricLoadError, match="does not accept the --metric-opt given"):
        score_with_ray([str(tmp_path / "imgs")], "drexperts", out, metric_options={**options, "nope": 1},
                       progress=False)
    assert out.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "scores.csv"]


class _DiesOnSecondCall:
    """A metric whose process exits on its second call, once per test (the marker file survives the restart)."""

    def __init__(self, metric, marker):
        self.inner, self.marker, self.calls = metric, marker, 0

    def __getattr__(self, name):  # net, device, metric_mode, ...: the wrapped metric's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            with open(self.marker, "w") as handle:
                handle.write(str(os.getpid()))
            os._exit(1)  # the actor's process dies mid-batch, as on an out-of-memory kill
        return self.inner(batch)


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(cluster, tmp_path, options, write_photos):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    paths = write_photos(tmp_path / "imgs", [(96, 128)] * 10)
    marker = tmp_path / "died"

    def factory(name, device=None, **kwargs):
        return _DiesOnSecondCall(create_metric(name, device=device, **kwargs), str(marker))

    # A Parquet column of file:// URIs: the source form of data sets in object stores.
    table = pa.table({"uri": [p.resolve().as_uri() for p in paths]})
    pq.write_table(table, tmp_path / "uris.parquet")
    out = tmp_path / "scores.jsonl"
    summary = score_with_ray([str(tmp_path / "uris.parquet")], "drexperts", out, column="uri",
                             metric_options=options, num_workers=WORKERS, batch_size=1, progress=False,
                             metric_factory=factory)
    assert marker.exists(), "no worker died: the test did not test a crash"
    lines = out.read_text().splitlines()
    assert "_meta" in json.loads(lines[0])
    rows = [json.loads(line) for line in lines[1:]]
    assert sorted(r["path"] for r in rows) == sorted(p.resolve().as_uri() for p in paths)  # each exactly once
    assert summary.scored == len(paths) and not summary.failures
    expected, _ = _single_process(paths, options, batch_size=1)
    by_uri = {p.resolve().as_uri(): expected[str(p)] for p in paths}
    for row in rows:
        assert row["drexperts"] == pytest.approx(by_uri[row["path"]], rel=1e-6, abs=1e-7)


class _FailsAfterFirstCall:
    """A metric that raises an error scoring cannot handle per image (a full disk) from its second call on,
    in the actors only: the driver builds it to check the options, as the command does."""

    def __init__(self, metric, driver_pid):
        self.inner, self.driver_pid, self.calls = metric, driver_pid, 0

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, batch):
        self.calls += 1
        if os.getpid() != self.driver_pid and self.calls >= 2:
            raise OSError(28, "No space left on device")
        return self.inner(batch)


def test_a_job_that_stops_part_way_says_why_in_one_line_and_resumes(cluster, tmp_path, options, write_photos):
    from ray import cloudpickle

    from iqa_plugins.scale.ray_engine import RayJobError

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    paths = write_photos(tmp_path / "imgs", [(96, 128)] * 6)
    out = tmp_path / "scores.csv"
    driver = os.getpid()

    def failing(name, device=None, **kwargs):
        return _FailsAfterFirstCall(create_metric(name, device=device, **kwargs), driver)

    with pytest.raises(RayJobError) as stopped:
        score_with_ray([str(tmp_path / "imgs")], "drexperts", out, metric_options=options, num_workers=1,
                       batch_size=1, progress=False, metric_factory=failing)
    message = str(stopped.value)
    assert "\n" not in message and "OSError: [Errno 28] No space left on device" in message
    assert str(tmp_path / "scores.csv.shards") in message and "--resume" in message
    resumed = score_with_ray([str(tmp_path / "imgs")], "drexperts", out, metric_options=options,
                             num_workers=WORKERS, batch_size=2, progress=False, resume=True)
    assert resumed.already_done + resumed.scored == len(paths) and not resumed.failures
    assert sorted(_csv_scores(out)) == sorted(str(p) for p in paths)  # each image once


def test_resume_skips_done_images(cluster, tmp_path, options, write_photos):
    folder = tmp_path / "imgs"
    write_photos(folder, [(96, 128)] * 3)
    out = tmp_path / "scores.csv"
    first = score_with_ray([str(folder)], "drexperts", out, metric_options=options, num_workers=WORKERS,
                           batch_size=2, progress=False)
    assert first.scored == 3
    shards_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "scores.csv.shards").glob("part-*")}
    write_photos(folder, [(96, 128)] * 2, first=3)
    second = score_with_ray([str(folder)], "drexperts", out, metric_options=options, num_workers=WORKERS,
                            batch_size=2, progress=False, resume=True)
    assert (second.already_done, second.scored, second.merged_rows) == (3, 2, 5)
    shards_after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "scores.csv.shards").glob("part-*")}
    assert all(shards_after[name] == mtime for name, mtime in shards_before.items())  # old shards untouched
    assert len(_csv_scores(out)) == 5
    # the merged file is the single-process command's format: its --resume and the report read it
    existing = open_for_resume(out, "csv", [MetricSpec("drexperts", options)])
    assert existing.done == set(_csv_scores(out)) and not existing.has_cut_row
    meta, rows = read_rows(out)
    assert meta["metrics"][0]["score_range"] == load_metric("drexperts", options, "cpu").spec.score_range
    assert sorted(r["path"] for r in rows) == sorted(existing.done)
    assert len(read_score_file(out).rows) == 5
    with pytest.raises(ValueError, match="--resume: .* holds scores of"):
        score_with_ray([str(folder)], "drexperts", out, metric_options={**options, "num_crops": 3},
                       num_workers=WORKERS, progress=False, resume=True)


def test_command_as_the_readme_prints_it(fresh, console_script, tmp_path, small_weights, write_photos):
    write_photos(tmp_path / "photos", [(96, 128)] * 3)
    (tmp_path / "photos" / "notes.jpg").write_text("not a photo")
    out = tmp_path / "scores.csv"
    result = fresh([console_script("iqa-plugins"), "score", str(tmp_path / "photos"), "--metric", "drexperts",
                    "--metric-opt", f"pretrained_model_path={small_weights}", "--engine", "ray",
                    "--num-workers", "2", "--batch-size", "2", "--output", str(out), "-q"], timeout=500)
    assert result.returncode == 1, result.stderr  # one file skipped
    assert "notes.jpg: not a recognised image format" in result.stderr
    assert "scored 3 image(s) with drexperts on 2 Ray worker(s)" in result.stderr
    assert len(_csv_scores(out)) == 3
    # the single-process command continues the Ray engine's file
    write_photos(tmp_path / "photos", [(96, 128)], first=3)
    again = fresh([console_script("iqa-plugins"), "score", str(tmp_path / "photos"), "--metric", "drexperts",
                   "--metric-opt", f"pretrained_model_path={small_weights}", "--output", str(out), "--resume",
                   "-q"], timeout=300)
    assert again.returncode == 1, again.stderr  # notes.jpg again
    assert "scored 1 image(s) with drexperts" in again.stderr
    assert len(_csv_scores(out)) == 4
