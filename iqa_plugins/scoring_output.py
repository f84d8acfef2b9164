"""The score file format: metadata, rows and the bad-file list, written and read back (``--resume``).

One module reads and writes it (the scoring command, the Ray engine's merge, reports and tests):

- metadata ``{"format": "iqa-plugins-scores", "version": 1, "metrics": [...], "columns": [...]}``: the
  first line of a JSONL file as ``{"_meta": ...}``; for a CSV a sidecar ``<output>.meta.json`` (the CSV
  itself stays one header row plus one row per image, so any CSV reader works unchanged);
- rows: ``path`` (absolute, symlinks resolved), one score column per metric, then ``<metric>:<key>``
  explanation columns; every score is a finite number;
- ``<output>.errors.jsonl``: one ``{"path", "reason"}`` line per skipped file, appended as it happens.

Every row is written with one ``write`` call and flushed, so a killed run leaves at most one cut last
line; :func:`open_for_resume` drops it (that image is scored again) and refuses, with the file left as
it is, anything that is not this format or was written for other metrics or options.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from iqa_plugins.files import write_text_atomic

FORMAT = "iqa-plugins-scores"
VERSION = 1
META_KEY = "_meta"

__all__ = [
    "FORMAT",
    "VERSION",
    "ErrorLog",
    "ExistingOutput",
    "MetricSpec",
    "OutputFormatError",
    "ScoreWriter",
    "errors_path",
    "format_for",
    "make_metadata",
    "normalise_path",
    "open_for_resume",
    "read_rows",
    "sidecar_path",
]


class OutputFormatError(ValueError):
    """An existing output file cannot be continued (foreign content, other metrics or options)."""


@dataclass(frozen=True)
class MetricSpec:
    """What one score column means: the metric, the options it was built with, and its explanations."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    explain: bool = False
    score_range: Any = None
    lower_better: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options, "explain": self.explain,
                "score_range": self.score_range, "lower_better": self.lower_better}

    def same_request(self, stored: dict[str, Any]) -> bool:
        """Same metric, options and explanation choice (range and direction follow from these)."""
        return (stored.get("name"), _canonical(stored.get("options", {})), bool(stored.get("explain"))) == (
            self.name, _canonical(self.options), self.explain)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def normalise_path(path: str | os.PathLike) -> str:
    """The one spelling of an image path in score files: absolute, ``~`` expanded, symlinks resolved."""
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def sidecar_path(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output)}.meta.json")


def errors_path(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output)}.errors.jsonl")


def format_for(output: str | None, explicit: str | None) -> str:
    """``--format`` if given, else from the output's suffix (.jsonl/.json -> jsonl), else csv."""
    if explicit:
        return explicit
    return "jsonl" if output and output.endswith((".jsonl", ".json")) else "csv"


def make_metadata(metrics: Iterable[MetricSpec], columns: list[str]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "metrics": [m.to_json() for m in metrics], "columns": columns}


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class ScoreWriter:
    """Streams rows to ``stream``; the metadata (and CSV header) go out with the first row, when the
    explanation columns are known. ``output`` is the file name (None for standard output)."""

    def __init__(self, stream: IO[str], fmt: str, metrics: list[MetricSpec], *, output: str | None = None,
                 columns: list[str] | None = None) -> None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"--format must be 'csv' or 'jsonl', got {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.metrics = metrics
        self.output = output
        self.columns = columns  # set when continuing a file: its header is already there

    def _start(self, row: dict[str, Any]) -> None:
        self.columns = list(row)
        meta = make_metadata(self.metrics, self.columns)
        if self.fmt == "jsonl":
            self.stream.write(json.dumps({META_KEY: meta}) + "\n")
        else:
            if self.output is not None:
                write_text_atomic(sidecar_path(self.output), json.dumps(meta, indent=1) + "\n")
            self.stream.write(_csv_line(self.columns))

    def write(self, row: dict[str, Any]) -> None:
        """Write one row (path, scores, explanation values) in one call, then flush."""
        if self.columns is None:
            self._start(row)
        if list(row) != self.columns:
            raise ValueError(f"row columns {list(row)} differ from the file's columns {self.columns}")
        for spec in self.metrics:
            if not _finite_number(row[spec.name]):
                raise ValueError(f"{row['path']}: {spec.name} score {row[spec.name]!r} is not a finite number")
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row, allow_nan=False) + "\n")
        else:
            self.stream.write(_csv_line([row[c] for c in self.columns]))
        self.stream.flush()


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


class ErrorLog:
    """``<output>.errors.jsonl``: one line per skipped file, appended and flushed as it happens."""

    def __init__(self, output: str, *, append: bool) -> None:
        self.path = errors_path(output)
        if append:
            _drop_cut_last_line(self.path)
        self._handle = self.path.open("a" if append else "w", encoding="utf-8")

    def write(self, path: str, reason: str) -> None:
        self._handle.write(json.dumps({"path": path, "reason": reason}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _drop_cut_last_line(path: Path) -> None:
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


@dataclass
class ExistingOutput:
    """What ``--resume`` found: the metadata, the images already scored, and whether a cut row was dropped."""

    metadata: dict[str, Any] | None
    done: set[str]
    columns: list[str] | None
    path: Path | None = None
    keep: int = 0
    """Bytes of whole rows; anything after them is a cut last row, dropped by :meth:`drop_cut_row`."""

    @property
    def empty(self) -> bool:
        return self.columns is None

    @property
    def has_cut_row(self) -> bool:
        return self.path is not None and self.path.stat().st_size > self.keep

    def drop_cut_row(self) -> None:
        """Truncate to the whole rows; called once the run is sure to start."""
        if self.has_cut_row:
            os.truncate(self.path, self.keep)


def _check_metadata(meta: Any, where: str, metrics: list[MetricSpec]) -> list[str]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OutputFormatError(f"{where} is not an iqa-plugins score file (no {FORMAT!r} metadata); "
                                "refusing to append to it (choose another --output)")
    if meta.get("version") != VERSION:
        raise OutputFormatError(f"{where} has format version {meta.get('version')!r}; this program writes "
                                f"version {VERSION}")
    stored = meta.get("metrics") or []
    if len(stored) != len(metrics) or not all(m.same_request(s) for m, s in zip(metrics, stored)):
        def describe(items):
            return ", ".join(f"{i['name']} (options {i.get('options', {})}, explain={bool(i.get('explain'))})"
                             for i in items)
        raise OutputFormatError(
            f"{where} holds {describe(stored) or 'no metrics'}, but this run asks for "
            f"{describe([m.to_json() for m in metrics])}; resume with the same --metric, --metric-opt and "
            "--explain, or write to another --output")
    columns = meta.get("columns")
    if not isinstance(columns, list) or not columns or columns[0] != "path":
        raise OutputFormatError(f"{where}: metadata has no column list starting with 'path'")
    for spec in metrics:
        if spec.name not in columns:
            raise OutputFormatError(f"{where}: metadata lists no column {spec.name!r}")
    return columns


def _valid_row(row: dict[str, Any], metrics: list[MetricSpec]) -> bool:
    return bool(row.get("path")) and all(_finite_number(row.get(m.name)) for m in metrics)


def open_for_resume(output: str | os.PathLike, fmt: str, metrics: list[MetricSpec]) -> ExistingOutput:
    """Read an existing output for ``--resume``: check it and return the scored paths; the file is not
    changed (:meth:`ExistingOutput.drop_cut_row` drops a cut last row when the run starts).

    Raises :class:`OutputFormatError` for a file that is not a score file of this format, was written for
    other metrics/options, or has a damaged row before its last line.
    """
    path = Path(output)
    if not path.is_file() or path.stat().st_size == 0:
        return ExistingOutput(None, set(), None)
    data = path.read_bytes()
    reader = _resume_jsonl if fmt == "jsonl" else _resume_csv
    existing, keep = reader(path, data, metrics)
    existing.path, existing.keep = path, keep
    return existing


def _resume_jsonl(path: Path, data: bytes, metrics: list[MetricSpec]) -> tuple[ExistingOutput, int]:
    lines = data.split(b"\n")  # the last item is b"" when the file ends with a newline, else a cut line
    if len(lines) == 1:  # not even the metadata line is complete
        if lines[0].startswith(b'{"' + META_KEY.encode()):
            return ExistingOutput(None, set(), None), 0
        raise OutputFormatError(f"{path} is not an iqa-plugins JSONL score file (no metadata line); "
                                "refusing to append to it")
    try:
        first = json.loads(lines[0])
    except ValueError:
        first = None
    meta = first.get(META_KEY) if isinstance(first, dict) else None
    columns = _check_metadata(meta, str(path), metrics)
    done: set[str] = set()
    keep = len(lines[0]) + 1
    body = lines[1:-1]  # whole lines; a row cut by a kill lacks its newline and is lines[-1], left out
    for number, line in enumerate(body, start=2):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or list(row) != columns or not _valid_row(row, metrics):
            raise OutputFormatError(f"{path}, line {number}: not a complete score row ({line[:80]!r}); "
                                    "the file was edited or damaged, refusing to append to it")
        done.add(row["path"])
        keep += len(line) + 1
    return ExistingOutput(meta, done, columns), keep


def _resume_csv(path: Path, data: bytes, metrics: list[MetricSpec]) -> tuple[ExistingOutput, int]:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise OutputFormatError(f"{path} has no metadata file {sidecar.name}: it is not an iqa-plugins score "
                                "file (or was written by another program); refusing to append to it")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OutputFormatError(f"{sidecar}: unreadable metadata ({error}); refusing to append to {path}") from None
    columns = _check_metadata(meta, str(path), metrics)
    # surrogateescape: a kill can cut a row inside a multi-byte character; its bytes still round-trip
    text = data.decode("utf-8", errors="surrogateescape")
    records = list(csv.reader(io.StringIO(text, newline="")))
    if not records or records[0] != columns:
        if len(records) == 1 and not text.endswith("\n") and _csv_line(columns).startswith(text):
            return ExistingOutput(None, set(), None), 0  # the header itself was cut
        raise OutputFormatError(f"{path}: header {records[0] if records else []} differs from its metadata "
                                f"columns {columns}; refusing to append to it")
    done: set[str] = set()
    keep = len(_csv_line(columns).encode())
    rows = records[1:]
    for number, values in enumerate(rows, start=2):
        line = _csv_line(values).encode("utf-8", errors="surrogateescape")
        row = dict(zip(columns, values)) if len(values) == len(columns) else {}
        # A row is whole when it parses to every column with finite scores and its bytes are exactly what
        # this writer writes (a cut inside a score still parses, but lacks the newline that follows it).
        if not row or not _valid_row(row, metrics) or not data.startswith(line, keep):
            if number == len(rows) + 1:
                break  # the cut last row: dropped, that image is scored again
            raise OutputFormatError(f"{path}, row {number}: not a complete score row {values!r}; "
                                    "the file was edited or damaged, refusing to append to it")
        done.add(row["path"])
        keep += len(line)
    return ExistingOutput(meta, done, columns), keep


def read_rows(output: str | os.PathLike, fmt: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metadata and rows of a finished score file (scores as floats; ``({}, [])`` when it has no rows).
    Strict: a line that does not parse raises. For reports and tests."""
    path = Path(output)
    fmt = fmt or format_for(str(path), None)
    if path.stat().st_size == 0:  # a run that scored nothing: metadata is written with the first row
        return {}, []
    if fmt == "jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        meta = json.loads(lines[0])[META_KEY]
        return meta, [json.loads(line) for line in lines[1:]]
    meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in meta["columns"][1:]:
            try:
                row[key] = float(row[key])
            except ValueError:
                pass
    return meta, rows
