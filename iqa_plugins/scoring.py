"""Batched scoring of image files with any pyiqa no-reference metric (ours included).

Data path: collect paths -> DataLoader (workers decode; a bad file becomes a recorded failure, not an
exception) -> group each batch by image size (only same-size images can be stacked) -> metric, or the
arch's ``explain`` when explanations are asked for -> one row per image, written and flushed at once,
so an interruption loses nothing already scored.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from iqa_plugins.io import DEFAULT_MIN_SIDE, ImageReadError, is_image_path, read_image

DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}

__all__ = ["Failure", "ScoreSummary", "collect_images", "score_files", "RowWriter"]


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


@dataclass
class ScoreSummary:
    scored: int = 0
    failures: list[Failure] = field(default_factory=list)


def _walk(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and is_image_path(p))


def collect_images(inputs: Iterable[str]) -> tuple[list[str], list[Failure]]:
    """Expand files, directories (recursively) and glob patterns into a sorted, de-duplicated list.

    A path that does not exist, a glob that matches nothing and a directory without images are
    returned as failures, so the caller can report them next to unreadable files.
    """
    found: list[str] = []
    failures: list[Failure] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            images = _walk(path)
            if not images:
                failures.append(Failure(item, "directory contains no image files"))
            found.extend(str(p) for p in images)
        elif path.is_file():
            found.append(str(path))  # named explicitly: try it whatever its extension
        elif glob.has_magic(item):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            images = [m for m in matches if Path(m).is_file() and is_image_path(m)]
            if not images:
                failures.append(Failure(item, "pattern matches no image files"))
            found.extend(images)
        else:
            failures.append(Failure(item, "no such file or directory"))
    return list(dict.fromkeys(found)), failures


class _ImageFiles:
    """Map-style dataset; returns (index, CHW float tensor or None, error reason or None)."""

    def __init__(self, paths: list[str], min_side: int) -> None:
        self.paths = paths
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        try:
            array = read_image(self.paths[index], min_side=self.min_side)
        except ImageReadError as error:
            return index, None, error.reason
        return index, torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), None


def _collate(items):
    return items  # images differ in size; grouping happens in the main process


class RowWriter:
    """Streams result rows as CSV or JSON lines; flushes after every row."""

    def __init__(self, stream: IO[str], fmt: str) -> None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"--format must be 'csv' or 'jsonl', got {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self._csv: csv.DictWriter | None = None

    def continue_csv(self, fieldnames: list[str]) -> None:
        """Append to a CSV that already has its header (``--resume``)."""
        self._csv = csv.DictWriter(self.stream, fieldnames=fieldnames, extrasaction="ignore")

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row) + "\n")
        else:
            if self._csv is None:
                # Columns are fixed by the first row (the metric's explanation names are known then).
                self._csv = csv.DictWriter(self.stream, fieldnames=list(row), extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerow(row)
        self.stream.flush()


def _group_by_size(items) -> Iterator[tuple[list[int], list]]:
    groups: dict[tuple[int, ...], tuple[list[int], list]] = {}
    for index, tensor, _ in items:
        indices, tensors = groups.setdefault(tuple(tensor.shape), ([], []))
        indices.append(index)
        tensors.append(tensor)
    yield from groups.values()


def _explanation_columns(explanation: dict) -> dict[str, Any]:
    from iqa_plugins.explanations import explanation_columns

    return explanation_columns(explanation)


def score_files(
    paths: list[str],
    metric,
    writer: RowWriter,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    dtype: str = "fp32",
    explain: bool = False,
    min_side: int = DEFAULT_MIN_SIDE,
    progress: bool = True,
) -> ScoreSummary:
    """Score ``paths`` with a pyiqa ``InferenceModel`` and stream one row per image to ``writer``.

    ``explain=True`` calls ``metric.net.explain`` (DR.Experts, ExIQA) and adds its per-distortion
    values as columns; for other metrics it is an error.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    net = metric.net
    if explain and not callable(getattr(net, "explain", None)):
        raise ValueError(f"metric {metric.metric_name!r} has no explanations (no explain() on its arch)")

    device = torch.device(metric.device) if not isinstance(metric.device, torch.device) else metric.device
    autocast = (
        torch.autocast(device.type, dtype=getattr(torch, DTYPES[dtype]))
        if DTYPES[dtype]
        else torch.autocast(device.type, enabled=False)
    )
    loader = DataLoader(
        _ImageFiles(paths, min_side),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    summary = ScoreSummary()
    bar = tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr)
    with torch.inference_mode(), autocast:
        for items in loader:
            for index, _, reason in items:
                if reason is not None:
                    summary.failures.append(Failure(paths[index], reason))
            good = [item for item in items if item[2] is None]
            for indices, tensors in _group_by_size(good):
                batch = torch.stack(tensors).to(device, non_blocking=True)
                columns: dict[str, Any] = {}
                try:
                    if explain:
                        explanation = net.explain(batch)
                        scores = explanation["score"]
                        columns = _explanation_columns(explanation)
                    else:
                        scores = metric(batch)
                except (RuntimeError, ValueError, AssertionError) as error:
                    # e.g. an image the metric cannot handle; report it and keep the rest of the run
                    for index in indices:
                        summary.failures.append(Failure(paths[index], f"metric failed: {error}"))
                    continue
                scores = scores.float().reshape(len(indices), -1)[:, 0].cpu().tolist()
                columns = {k: v.float().reshape(-1).cpu().tolist() for k, v in columns.items()}
                for row_index, index in enumerate(indices):
                    row = {"path": paths[index], "score": scores[row_index]}
                    row.update({name: values[row_index] for name, values in columns.items()})
                    writer.write(row)
                    summary.scored += 1
            bar.update(len(items))
    bar.close()
    return summary
