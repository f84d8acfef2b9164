"""Parquet shards and their merge to the scoring output formats (no Ray needed)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

pytest.importorskip("pyarrow")

from iqa_plugins.scale.ray_engine import list_image_paths  # noqa: E402
from iqa_plugins.scale.shards import ShardStore, merge, shard_dir  # noqa: E402
from iqa_plugins.scoring_output import MetricSpec, OutputFormatError, open_for_resume, read_rows  # noqa: E402

META = [{"name": "drexperts", "options": {}, "explain": True, "score_range": [0.0, 100.0], "lower_better": False}]
SPECS = [MetricSpec(**META[0])]


def _row(path, score):
    return {"path": path, "drexperts": score, "drexperts:hazy": score / 2}


def test_rows_written_once_and_merged_sorted(tmp_path):
    out = tmp_path / "s.jsonl"
    store = ShardStore(out, SPECS, resume=False, rows_per_shard=2)
    assert store.add([_row("/b.png", 0.25), _row("/a.png", 0.5)]) == 2  # a full shard is written
    assert store.add([_row("/a.png", 0.5), _row("/c.png", 1.0 / 3)]) == 1  # a retried task's duplicate is dropped
    store.close()
    shards = store.shards()
    assert len(shards) == 2
    shutil.copy(shards[0], shard_dir(out) / "part-000009-copy.parquet")  # a shard that landed twice
    assert merge(out) == 3
    lines = out.read_text().splitlines()
    meta = json.loads(lines[0])["_meta"]
    assert meta["columns"] == ["path", "drexperts", "drexperts:hazy"] and meta["metrics"] == META
    rows = [json.loads(line) for line in lines[1:]]
    assert [r["path"] for r in rows] == ["/a.png", "/b.png", "/c.png"]
    assert rows[2]["drexperts"] == 1.0 / 3  # floats round-trip exactly
    assert open_for_resume(out, "jsonl", SPECS).done == {"/a.png", "/b.png", "/c.png"}


def test_csv_merge_has_a_sidecar_and_resume_keeps_shards(tmp_path):
    out = tmp_path / "s.csv"
    store = ShardStore(out, SPECS, resume=False)
    store.add([_row("/x.png", 2.0)])
    store.add_error("/bad.png", "not a recognised image format")
    store.close()
    assert merge(out) == 1
    assert list(csv.DictReader(out.open())) == [{"path": "/x.png", "drexperts": "2.0", "drexperts:hazy": "1.0"}]
    meta, rows = read_rows(out)
    assert meta["format"] == "iqa-plugins-scores" and meta["columns"] == ["path", "drexperts", "drexperts:hazy"]
    assert rows == [{"path": "/x.png", "drexperts": 2.0, "drexperts:hazy": 1.0}]
    assert open_for_resume(out, "csv", SPECS).done == {"/x.png"}
    errors = tmp_path / "s.csv.errors.jsonl"
    assert json.loads(errors.read_text()) == {"path": "/bad.png", "reason": "not a recognised image format"}
    resumed = ShardStore(out, SPECS, resume=True)
    assert resumed.written == {"/x.png"} and errors.read_text()  # a resumed run keeps the bad-file list
    resumed.close()
    with pytest.raises(OutputFormatError, match="--resume"):
        ShardStore(out, [MetricSpec("drexperts", {}, False)], resume=True)
    fresh = ShardStore(out, SPECS, resume=False)
    assert fresh.written == frozenset() and errors.read_text() == ""  # a fresh run starts empty
    fresh.close()


def test_sources_list_file_parquet_column_and_failures(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "d" / name).write_bytes(b"x")
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# photos\n{tmp_path / 'd' / 'b.jpg'}\n\ns3://bucket/c.png\n")
    pq.write_table(pa.table({"uri": ["gs://bucket/e.png", str(tmp_path / "d" / "a.png")]}), tmp_path / "p.parquet")
    paths, failures = list_image_paths([str(tmp_path / "d"), str(listing), str(tmp_path / "p.parquet"),
                                        str(tmp_path / "missing")], column="uri")
    assert paths == [str(tmp_path / "d" / "a.png"), str(tmp_path / "d" / "b.jpg"), "s3://bucket/c.png",
                     "gs://bucket/e.png"]
    assert [f.path for f in failures] == [str(tmp_path / "missing")]
    _, bad = list_image_paths([str(tmp_path / "p.parquet")], column="nope")
    assert "cannot read column 'nope'" in bad[0].reason
