"""Scores at scale on disk: Parquet shards written as results arrive, merged at the end into the score file.

Layout for ``--output OUT``: shards in ``OUT.shards/`` (``OUT`` itself when it is a folder, i.e. has no .csv/.jsonl
suffix), each ``part-<n>-<id>.parquet`` written to a temporary name and renamed, so a reader (and a resumed run)
never sees half a shard; bad files in ``OUT.errors.jsonl``; the metrics in ``<shards>/_meta.json``. The shards
are this engine's own working state; the score file itself (CSV with its ``.meta.json`` sidecar, or JSON lines
with a ``{"_meta": ...}`` first line) is written by :mod:`iqa_plugins.scoring_output`, as by the single-process
command, so ``--resume`` and ``iqa-plugins report`` read it the same way.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from iqa_plugins.files import atomic_path, write_text_atomic
from iqa_plugins.scoring_output import ErrorLog, MetricSpec, OutputFormatError, ScoreWriter, make_metadata

MERGED_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl"}

__all__ = ["ShardStore", "merge", "merged_format", "shard_dir"]


def merged_format(output: str | os.PathLike) -> str | None:
    """"csv"/"jsonl" when ``output`` names a merged file, None when it names a folder of shards only."""
    return MERGED_SUFFIXES.get(Path(output).suffix.lower())


def shard_dir(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".shards") if merged_format(output) else output


def _read_specs(directory: Path) -> list[MetricSpec]:
    meta = json.loads((directory / ShardStore.META).read_text(encoding="utf-8"))
    return [MetricSpec(**entry) for entry in meta["metrics"]]


class ShardStore:
    """Writes result rows as Parquet shards under one folder, logs bad files, reads back which paths are done."""

    META = "_meta.json"

    def __init__(self, output: str | os.PathLike, metrics: list[MetricSpec], *, resume: bool,
                 rows_per_shard: int = 256) -> None:
        self.output = Path(output)
        self.directory = shard_dir(output)
        self.rows_per_shard = rows_per_shard
        self._pending: list[dict[str, Any]] = []
        self._written: set[str] = set()
        meta_path = self.directory / self.META
        if resume and meta_path.is_file():
            stored = _read_specs(self.directory)
            if len(stored) != len(metrics) or not all(m.same_request(s.to_json()) for m, s in zip(metrics, stored)):
                raise OutputFormatError(
                    f"--resume: {self.directory} holds scores of {[s.to_json() for s in stored]}, not of "
                    f"{[m.to_json() for m in metrics]}; use another --output or drop --resume")
            self._written = self.done_paths()
        self.directory.mkdir(parents=True, exist_ok=True)
        if not resume:
            for shard in self.shards():
                shard.unlink()
        self.errors = ErrorLog(str(self.output), append=resume)
        self.metrics = metrics
        write_text_atomic(meta_path, json.dumps(make_metadata(metrics, []), indent=1))

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
        self.errors.write(path, reason)

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending)
        name = f"part-{len(self.shards()):06d}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(self.directory / name) as tmp:
            pq.write_table(table, tmp)
        self._pending = []

    def close(self) -> None:
        self.flush()
        self.errors.close()


def merge(output: str | os.PathLike) -> int:
    """Write the shards of ``output`` into ``output`` in the score file format, one row per path sorted by path
    (a shard that landed twice counts once); replaces ``output`` atomically; returns the row count."""
    output = Path(output)
    fmt = merged_format(output)
    if fmt is None:
        raise ValueError(f"merge: {output} must end in .csv or .jsonl")
    directory = shard_dir(output)
    by_path: dict[str, dict[str, Any]] = {}
    for shard in sorted(directory.glob("part-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            by_path.setdefault(row["path"], row)
    with atomic_path(output) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = ScoreWriter(handle, fmt, _read_specs(directory), output=str(output))
        for path in sorted(by_path):
            writer.write(by_path[path])
    return len(by_path)
