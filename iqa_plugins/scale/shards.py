"""Scores at scale on disk: Parquet shards written as results arrive, merged on request to CSV or JSON lines.

Layout for ``--output OUT``: shards in ``OUT.shards/`` (``OUT`` itself when it is a folder, i.e. has no .csv/.jsonl
suffix), each ``part-<n>-<id>.parquet`` written to a temporary name and renamed, so a reader (and a resumed run)
never sees half a shard; bad files appended to ``OUT.errors.jsonl`` as they happen; the metadata object of the
scoring output format in ``<shards>/_meta.json``. :func:`merge` writes the single-process command's formats:
CSV with a ``.meta.json`` sidecar, or JSON lines whose first line is ``{"_meta": ...}``; rows sorted by path,
one per image even when a shard was written twice.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_NAME = "iqa-plugins-scores"
FORMAT_VERSION = 1
MERGED_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl"}

__all__ = ["FORMAT_NAME", "ShardStore", "is_finite_score", "merge", "merged_format", "metric_metadata", "shard_dir"]


def merged_format(output: str | os.PathLike) -> str | None:
    """"csv"/"jsonl" when ``output`` names a merged file, None when it names a folder of shards only."""
    return MERGED_SUFFIXES.get(Path(output).suffix.lower())


def shard_dir(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".shards") if merged_format(output) else output


def _score_range(text: Any) -> list[float] | None:
    """pyiqa's score_range strings ("0, 1", "~0, ~100 (note)") as [lo, hi]; None when not two numbers."""
    if isinstance(text, (list, tuple)) and len(text) == 2:
        return [float(text[0]), float(text[1])]
    numbers = re.findall(r"-?\d+(?:\.\d+)?", str(text).split("(")[0]) if text is not None else []
    return [float(numbers[0]), float(numbers[1])] if len(numbers) == 2 else None


def metric_metadata(name: str, options: dict[str, Any], explain: bool) -> dict[str, Any]:
    """The metadata entry of one metric, from the plugin's registry or pyiqa's for other metrics."""
    from iqa_plugins.registration import METRICS

    if name in METRICS:
        entry = METRICS[name]
    else:
        import pyiqa  # noqa: F401  (registers the plugin's metrics with pyiqa)
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        entry = DEFAULT_CONFIGS.get(name, {})
    return {"name": name, "options": dict(options), "explain": bool(explain),
            "score_range": _score_range(entry.get("score_range")), "lower_better": bool(entry.get("lower_better"))}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ShardStore:
    """Writes result rows as Parquet shards under one folder and reads back which paths are done."""

    META = "_meta.json"

    def __init__(self, output: str | os.PathLike, metrics: list[dict[str, Any]], *, resume: bool,
                 rows_per_shard: int = 256) -> None:
        self.output = Path(output)
        self.directory = shard_dir(output)
        self.errors_path = self.output.with_name(self.output.name + ".errors.jsonl")
        self.metrics = metrics
        self.rows_per_shard = rows_per_shard
        self._pending: list[dict[str, Any]] = []
        self._written: set[str] = set()
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / self.META
        if resume and meta_path.is_file():
            stored = json.loads(meta_path.read_text())["metrics"]
            if stored != metrics:
                raise ValueError(f"--resume: {self.directory} holds scores of {stored}, not of {metrics}; "
                                 "use another --output or drop --resume")
            self._written = self.done_paths()
        else:
            for shard in self.shards():
                shard.unlink()
        # Every file not in the shards is tried again, so the bad-file list starts afresh on a resumed run too.
        self.errors_path.unlink(missing_ok=True)
        _atomic_write_text(meta_path, json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                                  "metrics": metrics}, indent=1))

    @property
    def written(self) -> frozenset[str]:
        """Paths already in the shards or queued for the next one."""
        return frozenset(self._written)

    def shards(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def done_paths(self) -> set[str]:
        done: set[str] = set()
        for shard in self.shards():
            done.update(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
        return done

    def add(self, rows: Iterable[dict[str, Any]]) -> int:
        """Queue rows (a path already written is dropped: a retried task may deliver it twice)."""
        added = 0
        for row in rows:
            if row["path"] in self._written:
                continue
            self._written.add(row["path"])
            self._pending.append(row)
            added += 1
        if len(self._pending) >= self.rows_per_shard:
            self.flush()
        return added

    def add_error(self, path: str, reason: str) -> None:
        with self.errors_path.open("a") as handle:
            handle.write(json.dumps({"path": path, "reason": reason}) + "\n")

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending)
        name = f"part-{len(self.shards()):06d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.directory / name)
        self._pending = []


def merge(output: str | os.PathLike) -> int:
    """Merge the shards of ``output`` into ``output`` (CSV + ``.meta.json`` or JSON lines); returns the row count."""
    output = Path(output)
    fmt = merged_format(output)
    if fmt is None:
        raise ValueError(f"merge: {output} must end in .csv or .jsonl")
    directory = shard_dir(output)
    meta = json.loads((directory / ShardStore.META).read_text())
    by_path: dict[str, dict[str, Any]] = {}
    columns: list[str] = ["path"]
    for shard in sorted(directory.glob("part-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            by_path.setdefault(row["path"], row)
            columns += [c for c in row if c not in columns]
    meta["columns"] = columns
    rows = [by_path[p] for p in sorted(by_path)]
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w", newline="") as handle:
        if fmt == "jsonl":
            handle.write(json.dumps({"_meta": meta}) + "\n")
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        else:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    if fmt == "csv":
        _atomic_write_text(output.with_name(output.name + ".meta.json"), json.dumps(meta, indent=1))
    os.replace(tmp, output)
    return len(rows)


def is_finite_score(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
