"""Batched scoring of image files with one or several pyiqa no-reference metrics (ours included).

Data path: collect paths -> DataLoader (workers decode; a bad file becomes a :class:`Failure`, never an
exception) -> group each batch by image size and stack it (only same-size images can be stacked) -> every metric on
the same decoded batch (or the arch's ``explain`` when explanations are asked for) -> one row per image.

:func:`score_paths` is the engine-independent core: it takes paths and loaded metrics and yields rows
and failures; writing them (``scoring_output``) and parsing the command line (``score_command``) are
elsewhere, so another engine can call it on its own share of the paths.
"""

from __future__ import annotations

import errno
import glob
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from iqa_plugins.explanations import explanation_columns, score_scale
from iqa_plugins.io import DEFAULT_MIN_SIDE, ImageReadError, is_image_path, read_pixels
from iqa_plugins.scoring_output import MetricSpec, normalise_path

DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}

# What a metric may raise on one image that it cannot handle; reported for that image, the run goes on.
METRIC_ERRORS = (RuntimeError, ValueError, AssertionError, TypeError, IndexError, ZeroDivisionError)

__all__ = ["DTYPES", "Failure", "LoadedMetric", "MetricLoadError", "collect_images", "load_metric", "score_paths"]


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


class MetricLoadError(ValueError):
    """A metric could not be built (unknown name, bad options, missing weights, full-reference)."""


@dataclass
class LoadedMetric:
    """A built pyiqa ``InferenceModel`` and how its columns are to be filled."""

    spec: MetricSpec
    model: Any

    @property
    def name(self) -> str:
        return self.spec.name


def has_explanations(model: Any) -> bool:
    return callable(getattr(getattr(model, "net", None), "explain", None))


def load_metric(name: str, options: dict[str, Any], device: str, *, explain: bool = False,
                create: Callable[..., Any] | None = None) -> LoadedMetric:
    """Build ``name`` with ``options`` on ``device``; every failure becomes a :class:`MetricLoadError`.

    ``create(name, device=..., **options)`` builds the model; by default
    :func:`iqa_plugins.metric_factory.create_metric` (the plugin's metrics without importing pyiqa).
    """
    import torch

    from iqa_plugins.metric_factory import create_metric, is_plugin_metric

    try:
        model = (create or create_metric)(name, device=torch.device(device), **options)
    except (AssertionError, KeyError) as error:
        if not is_plugin_metric(name):
            import pyiqa

            if name not in pyiqa.list_models():
                raise MetricLoadError(f"unknown --metric {name!r} (see pyiqa -ls)") from None
        raise MetricLoadError(f"could not create --metric {name!r}: {error}") from None
    except TypeError as error:
        raise MetricLoadError(f"--metric {name!r} does not accept the --metric-opt given "
                              f"({sorted(options)}): {error}") from None
    except (OSError, RuntimeError, ValueError, ImportError) as error:  # OSError: missing weights
        raise MetricLoadError(f"could not create --metric {name!r}: {error}") from None
    if model.metric_mode != "NR":
        raise MetricLoadError(f"--metric {name!r} is full-reference; this command scores without a "
                              "reference (use pyiqa -r for FR metrics)")
    if explain and not has_explanations(model):
        raise MetricLoadError(f"--explain: metric {name!r} has no explanations (only metrics whose arch has "
                              "explain(), e.g. drexperts and exiqa)")
    scale = score_scale(model, name)  # the loaded weights' own scale where the arch knows it
    spec = MetricSpec(name, options, explain, scale["score_range"], bool(scale["lower_better"]))
    return LoadedMetric(spec, model)


# ----------------------------------------------------------------------------------------------------------
# finding the images


def _stat_failure(path: str) -> str | None:
    """Why a path that looks like a file cannot be read (dangling or looping symlink), or None."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop (the link resolves to itself)"
        if os.path.islink(path):
            return f"dangling symlink (points to {os.readlink(path)!r}, which does not exist)"
        return f"cannot read: {error.strerror}"
    return None


def _walk(directory: str, failures: list[Failure]) -> list[str]:
    """Image files under ``directory``, following directory symlinks once; loops, dangling links and
    unreadable folders become failures instead of being skipped in silence."""
    found: list[str] = []
    seen = {os.path.realpath(directory)}

    def unreadable(error: OSError) -> None:
        failures.append(Failure(error.filename or directory, f"cannot list folder: {error.strerror}"))

    for root, dirs, files in os.walk(directory, onerror=unreadable, followlinks=True):
        for name in list(dirs):
            sub = os.path.join(root, name)
            real = os.path.realpath(sub)
            if real in seen:
                dirs.remove(name)
                failures.append(Failure(sub, f"symlink loop (links back to {real}); not followed"))
            else:
                seen.add(real)
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if not is_image_path(path):
                continue
            reason = _stat_failure(path)
            if reason is None:
                found.append(path)
            else:
                failures.append(Failure(path, reason))
    return found


def collect_images(inputs: Iterable[str]) -> tuple[list[str], list[Failure]]:
    """Expand files, directories (recursively) and glob patterns into a sorted, de-duplicated list of
    normalised paths (see ``scoring_output.normalise_path``).

    A path that does not exist, a glob that matches nothing, a directory without images, a dangling
    symlink, a symlink loop and an unreadable folder are returned as failures.
    """
    found: list[str] = []
    failures: list[Failure] = []
    for item in inputs:
        path = os.path.expanduser(item)
        if os.path.isdir(path):
            before = len(failures)
            images = _walk(path, failures)
            if not images and len(failures) == before:
                failures.append(Failure(item, "directory contains no image files"))
            found.extend(images)
        elif os.path.isfile(path):
            found.append(path)  # named explicitly: try it whatever its extension
        elif os.path.islink(path):
            failures.append(Failure(item, _stat_failure(path) or "unreadable symlink"))
        elif glob.has_magic(item):
            images = []
            for match in sorted(glob.glob(path, recursive=True)):
                if os.path.isfile(match) and is_image_path(match):
                    images.append(match)
                elif os.path.islink(match) and is_image_path(match):
                    failures.append(Failure(match, _stat_failure(match) or "unreadable symlink"))
            if not images:
                failures.append(Failure(item, "pattern matches no image files"))
            found.extend(images)
        else:
            failures.append(Failure(item, "no such file or directory"))
    return sorted(dict.fromkeys(normalise_path(p) for p in found)), failures


# ----------------------------------------------------------------------------------------------------------
# decoding


class _ImageFiles:
    """Map-style dataset; returns (index, CHW pixel tensor or None, error reason or None).

    Pixels stay 8-bit where the file is (a quarter of the bytes through the workers' shared memory and, on
    CUDA, over the bus); :func:`_unit_float` makes the stacked batch float on the device."""

    def __init__(self, paths: list[str], min_side: int) -> None:
        self.paths = paths
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        try:
            array = read_pixels(self.paths[index], min_side=self.min_side)
        except ImageReadError as error:
            return index, None, error.reason
        except Exception as error:  # noqa: BLE001  one odd file (a decoder bug, MemoryError) must not end the run
            return index, None, f"could not read image: {type(error).__name__}: {error}"
        return index, torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), None


def _collate(items) -> tuple[list[tuple[int, str]], list[tuple[list[int], Any]]]:
    """A loader batch as (failures: (index, reason)), (groups: (indices, stacked pixels)): only images of one
    size and pixel type can be stacked. Stacking here puts it in the decoding workers, and the stacked groups
    are what the loader pins for CUDA (pinning per image would be undone by stacking afterwards)."""
    import torch

    failures = [(index, reason) for index, _, reason in items if reason is not None]
    groups: dict[tuple, tuple[list[int], list]] = {}
    for index, tensor, reason in items:
        if reason is None:
            indices, tensors = groups.setdefault((tuple(tensor.shape), tensor.dtype), ([], []))
            indices.append(index)
            tensors.append(tensor)
    return failures, [(indices, torch.stack(tensors)) for indices, tensors in groups.values()]


def _unit_float(batch):
    """A stacked batch of ``read_pixels`` output as float in [0,1]: per image the same values as
    ``io.to_unit_float`` (8-bit values divided by 255)."""
    import torch

    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


# ----------------------------------------------------------------------------------------------------------
# scoring


def _metric_columns(metric: LoadedMetric, batch) -> dict[str, list[float]]:
    """Score column and explanation columns of one metric for a batch, as Python floats per image."""
    if metric.spec.explain:
        explanation = metric.model.net.explain(batch)
        scores = explanation["score"]
        extra = {f"{metric.name}:{k}": v for k, v in explanation_columns(explanation).items()}
    else:
        scores, extra = metric.model(batch), {}
    n = batch.shape[0]
    columns = {metric.name: scores.float().reshape(n, -1)[:, 0].cpu().tolist()}
    columns.update({k: v.float().reshape(n).cpu().tolist() for k, v in extra.items()})
    return columns


def _rows(paths: list[str], metrics: list[LoadedMetric], batch) -> Iterator[dict[str, Any] | Failure]:
    columns: dict[str, list[float]] = {}
    for metric in metrics:
        columns.update(_metric_columns(metric, batch))
    for i, path in enumerate(paths):
        row = {"path": path, **{name: values[i] for name, values in columns.items()}}
        bad = [name for name, value in row.items() if name != "path" and not math.isfinite(value)]
        if bad:
            yield Failure(path, f"metric gave a non-finite value ({', '.join(f'{b}={row[b]}' for b in bad)})")
        else:
            yield row


def _score_group(paths: list[str], metrics: list[LoadedMetric], batch) -> Iterator[dict[str, Any] | Failure]:
    try:
        yield from list(_rows(paths, metrics, batch))
    except METRIC_ERRORS as error:
        if len(paths) == 1:
            yield Failure(paths[0], f"metric failed: {type(error).__name__}: {error}")
            return
        # One image the metric cannot handle must not cost the others in its batch: score them one by one.
        for i, path in enumerate(paths):
            yield from _score_group([path], metrics, batch[i:i + 1])


def _score_items(items: tuple[list[tuple[int, str]], list[tuple[list[int], Any]]], paths: list[str],
                 metrics: list[LoadedMetric], device: Any) -> Iterator[dict[str, Any] | Failure]:
    """One loader batch (see :func:`_collate`): a failure for each image that did not decode, then the others'
    rows, scored in batches of images of one size."""
    failures, groups = items
    for index, reason in failures:
        yield Failure(paths[index], reason)
    for indices, pixels in groups:
        batch = _unit_float(pixels.to(device, non_blocking=True))
        yield from _score_group([paths[i] for i in indices], metrics, batch)


def score_paths(
    paths: list[str],
    metrics: list[LoadedMetric],
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    dtype: str = "fp32",
    min_side: int = DEFAULT_MIN_SIDE,
    progress: bool = False,
) -> Iterator[dict[str, Any] | Failure]:
    """Decode each image once, score it with every metric, yield its row (path, score per metric,
    explanation columns) or a :class:`Failure` naming the file and the reason."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not metrics:
        raise ValueError("no metric to score with")
    device = torch.device(metrics[0].model.device)
    autocast = (torch.autocast(device.type, dtype=getattr(torch, DTYPES[dtype])) if DTYPES[dtype]
                else torch.autocast(device.type, enabled=False))
    loader = DataLoader(_ImageFiles(paths, min_side), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    bar = tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr)
    try:
        with torch.inference_mode(), autocast:
            for items in loader:
                yield from _score_items(items, paths, metrics, device)
                bar.update(len(items[0]) + sum(len(indices) for indices, _ in items[1]))
    finally:
        bar.close()
