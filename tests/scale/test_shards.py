"""Parquet shards and their merge to the scoring output formats (no Ray needed)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

pytest.importorskip("pyarrow")

from iqa_plugins.scale.ray_engine import list_image_paths  # noqa: E402
from iqa_plugins.scale.shards import ShardStore, merge, shard_dir  # noqa: E402

META = [{"name": "drexperts", "options": {}, "explain": True, "score_range": [0.0, 100.0], "lower_better": False}]


def _row(path, score):
    return {"path": path, "drexperts": score, "drexperts:hazy": score / 2}


def test_rows_written_once_and_merged_sorted(tmp_path):
    out = tmp_path / "s.jsonl"
    store = ShardStore(out, META, resume=False, rows_per_shard=2)
    assert store.add([_row("/b.png", 0.25), _row("/a.png", 0.5)]) == 2  # a full shard is written
    assert store.add([_row("/a.png", 0.5), _row("/c.png", 1.0 / 3)]) == 1  # a retried task's duplicate is dropped
    store.flush()
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


def test_csv_merge_has_a_sidecar_and_resume_keeps_shards(tmp_path):
    out = tmp_path / "s.csv"
    store = ShardStore(out, META, resume=False)
    store.add([_row("/x.png", 2.0)])
    store.flush()
    assert merge(out) == 1
    assert list(csv.DictReader(out.open())) == [{"path": "/x.png", "drexperts": "2.0", "drexperts:hazy": "1.0"}]
    assert json.loads((tmp_path / "s.csv.meta.json").read_text())["format"] == "iqa-plugins-scores"
    assert ShardStore(out, META, resume=True).written == {"/x.png"}
    with pytest.raises(ValueError, match="--resume"):
        ShardStore(out, [{**META[0], "explain": False}], resume=True)
    assert ShardStore(out, META, resume=False).written == frozenset()  # a fresh run starts empty


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
