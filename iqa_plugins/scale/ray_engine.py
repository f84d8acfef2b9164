"""Scoring on Ray Data: a pool of actors, each loading the metric once, from one machine to a cluster.

Python API::

    import ray
    from iqa_plugins.scale.ray_engine import ImageScorer, image_paths_dataset, score_with_ray

    # the whole job, resumable, as `iqa-plugins score --engine ray` runs it
    summary = score_with_ray(["photos/"], "drexperts", "scores.csv", num_workers=4)

    # or compose it yourself
    ds, bad_inputs = image_paths_dataset(["s3://bucket/paths.parquet"], column="uri")
    scored = ds.map_batches(ImageScorer, fn_constructor_kwargs={"metric": "drexperts"}, batch_size=16,
                            compute=ray.data.ActorPoolStrategy(size=8), num_gpus=1)

Data path: the driver lists the paths (a folder, a glob, a list file with one path per line, or a Parquet column
of paths/URIs that pyarrow can open), drops those already in the output's shards, and hands them to Ray Data as
small blocks. Each actor reads and decodes its images (URIs through pyarrow's file systems), scores them with the
single-process scoring path, and returns one JSON row or one error reason per image; only paths and scores cross
the object store. The driver streams the results into Parquet shards (:class:`~iqa_plugins.scale.shards.ShardStore`)
and appends bad files to ``<output>.errors.jsonl``. Ray restarts a killed actor and retries its batch; a path that
arrives twice is written once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iqa_plugins.io import DEFAULT_MIN_SIDE
from iqa_plugins.scale.shards import ShardStore, merge, merged_format
from iqa_plugins.scoring import Failure, collect_images, load_metric, score_paths

LIST_FILE_SUFFIXES = frozenset({".txt", ".lst", ".list"})
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

__all__ = ["ImageScorer", "RayJobError", "RaySummary", "image_paths_dataset", "list_image_paths", "score_with_ray"]


def _is_uri(path: str) -> bool:
    return bool(_URI.match(path))


def _read_list_file(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def list_image_paths(sources: Sequence[str], column: str = "path") -> tuple[list[str], list[Failure]]:
    """Expand sources into image paths/URIs (local paths made absolute), in order, without duplicates.

    A source is a folder (recursive), a glob, an image file, a URI, a list file (.txt/.lst/.list: one path per
    line, ``#`` comments) or a Parquet file (local or URI) whose ``column`` holds paths or URIs. Sources that
    yield nothing are returned as failures, as in the single-process command.
    """
    import pyarrow.parquet as pq

    found: list[str] = []
    failures: list[Failure] = []

    def add_local(items: list[str]) -> None:
        images, bad = collect_images(items)  # normalised as the score file spells paths
        found.extend(images)
        failures.extend(bad)

    for source in sources:
        suffix = Path(source).suffix.lower()
        if suffix == ".parquet":
            try:
                table = pq.read_table(source, columns=[column])
            except (OSError, KeyError, ValueError) as error:
                failures.append(Failure(source, f"cannot read column {column!r} of this Parquet file: {error}"))
                continue
            values = [str(v) for v in table.column(column).to_pylist() if v]
            found.extend(v for v in values if _is_uri(v))
            add_local([v for v in values if not _is_uri(v)])
        elif suffix in LIST_FILE_SUFFIXES and Path(source).is_file():
            values = _read_list_file(Path(source))
            if not values:
                failures.append(Failure(source, "list file names no images"))
            found.extend(v for v in values if _is_uri(v))
            add_local([v for v in values if not _is_uri(v)])
        elif _is_uri(source):
            found.append(source)
        else:
            add_local([source])
    return list(dict.fromkeys(found)), failures


def image_paths_dataset(sources: Sequence[str], column: str = "path", rows_per_block: int = 16):
    """A ``ray.data.Dataset`` with one ``path`` column, and the sources that yielded nothing."""
    paths, failures = list_image_paths(sources, column)
    return _paths_dataset(paths, rows_per_block), failures


def _paths_dataset(paths: list[str], rows_per_block: int):
    import ray.data

    # Small blocks: they stream through the pool, and a retried block after a crash costs little.
    blocks = max(1, math.ceil(len(paths) / max(1, rows_per_block)))
    return ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)


def _assigned(resource: str) -> float:
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.get_runtime_context().get_assigned_resources().get(resource, 0.0))


def _metric_list(metric: str | Sequence[str]) -> list[str]:
    return [metric] if isinstance(metric, str) else list(metric)


class ImageScorer:
    """Callable class for ``ray.data.Dataset.map_batches``: loads the metrics once, scores batches of paths.

    ``metric``: a name or several (each image decoded once, one column per metric); ``metric_options``: one
    metric's options, or with several metrics ``{name: options}``. In: a batch with a ``path`` column. Out:
    columns ``path``, ``row`` (the score file's row as JSON, "" for a bad file) and ``error`` (the reason a file
    was skipped, "" when scored). JSON keeps the batch schema fixed whatever explanation columns a metric has, and
    round-trips floats exactly.

    Threads: torch uses as many threads as CPUs Ray assigned to the actor (``num_cpus``), or ``threads``. Device:
    CUDA when Ray assigned the actor a GPU, unless ``device`` says otherwise. ``metric_factory(name, device=...,
    **options)`` builds each model (default: :func:`iqa_plugins.metric_factory.create_metric`).
    """

    def __init__(self, metric: str | Sequence[str], metric_options: dict[str, Any] | None = None, *,
                 explain: bool = False, min_side: int = DEFAULT_MIN_SIDE, batch_size: int = 8,
                 decode_workers: int = 0, dtype: str = "fp32", threads: int | None = None,
                 device: str | None = None, metric_factory: Callable[..., Any] | None = None) -> None:
        from iqa_plugins.runtime import bound_openmp_spin

        bound_openmp_spin()
        import torch

        torch.set_num_threads(max(1, int(threads or _assigned("CPU") or 1)))
        device = device or ("cuda" if _assigned("GPU") > 0 and torch.cuda.is_available() else "cpu")
        names = _metric_list(metric)
        options = per_metric_options(names, metric_options)
        self.min_side = min_side
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.dtype = dtype
        self.metrics = [load_metric(name, options[name], device, explain=explain, create=metric_factory)
                        for name in names]

    def _localise(self, path: str, folder: str) -> str:
        """A local file for ``path``: itself, or a download of a URI into ``folder`` (suffix kept)."""
        if not _is_uri(path):
            return path
        import pyarrow.fs

        filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
        target = Path(folder) / f"{len(os.listdir(folder)):06d}{Path(inner).suffix}"
        with filesystem.open_input_stream(inner) as source, target.open("wb") as sink:
            sink.write(source.read())
        return str(target)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        rows: dict[str, str] = {}
        errors: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="iqa-plugins-") as folder:
            local: dict[str, str] = {}
            for path in paths:
                try:
                    local[self._localise(path, folder)] = path
                except OSError as error:
                    errors[path] = f"could not read: {error}"
            for item in score_paths(list(local), self.metrics, batch_size=self.batch_size,
                                    num_workers=self.decode_workers, dtype=self.dtype, min_side=self.min_side):
                if isinstance(item, Failure):
                    errors[local[item.path]] = item.reason
                else:
                    original = local[item["path"]]
                    rows[original] = json.dumps({**item, "path": original}, allow_nan=False)
        return {
            "path": np.array(paths, dtype=object),
            "row": np.array([rows.get(p, "") for p in paths], dtype=object),
            "error": np.array([errors.get(p, "" if p in rows else "not scored") for p in paths], dtype=object),
        }


def per_metric_options(names: list[str], options: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{name: options}``: one metric's options as given, or with several metrics a mapping by name."""
    options = dict(options or {})
    if len(names) == 1:
        return {names[0]: options}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"metric_options: with several metrics give {{name: options}}; {unknown} are not "
                         f"among {names}")
    return {name: dict(options.get(name, {})) for name in names}


class RayJobError(RuntimeError):
    """The Ray job stopped part way (an actor's error, a lost cluster); what was scored is kept in the shards."""


# An exception line of a formatted traceback ("OSError: [Errno 28] ..."), not one of Ray's own wrappers.
_EXCEPTION_LINE = re.compile(r"^(?!ray\.)([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ?(.*)$", re.MULTILINE)


def _root_cause(error: BaseException) -> str:
    """The innermost error under Ray's wrappers, in one line: the one a user can act on. A remote error
    arrives as text (the actor's formatted traceback, innermost exception first), so it is read from there."""
    chain: list[BaseException] = []
    while isinstance(error, BaseException) and all(error is not e for e in chain):
        chain.append(error)
        error = getattr(error, "cause", None) or error.__cause__
    for wrapped in chain:
        match = _EXCEPTION_LINE.search(str(wrapped))
        if match:
            return f"{match[1]}: {match[2]}".rstrip(": ")
    lines = str(chain[-1]).strip().splitlines()
    return f"{type(chain[-1]).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass
class RaySummary:
    scored: int = 0
    already_done: int = 0
    failures: list[Failure] = field(default_factory=list)
    merged_rows: int | None = None
    seconds: float = 0.0
    workers: int = 0


def _init_ray(address: str | None, cpus_per_worker: float, num_workers: int | None) -> bool:
    """Connect to ``address``, or start a local cluster sized for the pool; True when connected here."""
    import ray

    if ray.is_initialized():
        return False
    options = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
    if address:
        ray.init(address=address, **options)
        return True
    from iqa_plugins.runtime import available_cores

    cores = available_cores()
    workers = num_workers or max(1, int(cores // cpus_per_worker))
    # One logical CPU more than the pool takes: with every CPU held by an actor, Ray Data's own tasks would
    # wait for a CPU forever.
    ray.init(num_cpus=max(cores, math.ceil(workers * cpus_per_worker) + 1), **options)
    return True


def _default_workers(cpus_per_worker: float, gpus_per_worker: float) -> int:
    """One actor per ``gpus_per_worker`` GPUs of the cluster, else per ``cpus_per_worker`` CPUs but one."""
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int((resources.get("CPU", 1) - 1) // cpus_per_worker))


def _scored_dataset(todo: list[str], scorer_options: dict[str, Any], workers: int, actor_cpus: float,
                    gpus_per_worker: float):
    """The Ray dataset of ``todo``'s score rows: batches of paths through a pool of :class:`ImageScorer` actors."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    batch_size = scorer_options["batch_size"]
    return _paths_dataset(todo, batch_size).map_batches(
        ImageScorer,
        fn_constructor_kwargs=scorer_options,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=actor_cpus,
        num_gpus=gpus_per_worker or None,
        batch_format="numpy",
    )


def _collect(scored, store: ShardStore, summary: RaySummary, total: int, progress: bool) -> None:
    """Write the actors' rows (and their errors) to the shards as they arrive; a job that stops part way
    becomes a :class:`RayJobError` naming the cause, what was scored staying in the shards."""
    import ray
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", disable=not progress, file=sys.stderr)
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for path, row, error in zip(batch["path"], batch["row"], batch["error"]):
                if error:
                    summary.failures.append(Failure(str(path), str(error)))
                    store.add_error(str(path), str(error))
                else:
                    summary.scored += store.add([json.loads(row)])
            bar.update(len(batch["path"]))
    except ray.exceptions.RayError as error:
        raise RayJobError(
            f"the Ray job stopped after {summary.scored} of {total} image(s): {_root_cause(error)}; "
            f"the scores so far are kept in {store.directory} (rerun with --resume to score the rest)"
        ) from error
    finally:
        bar.close()


def score_with_ray(
    sources: Sequence[str],
    metric: str | Sequence[str],
    output: str | os.PathLike,
    *,
    metric_options: dict[str, Any] | None = None,
    explain: bool = False,
    column: str = "path",
    batch_size: int = 8,
    dtype: str = "fp32",
    num_workers: int | None = None,
    cpus_per_worker: float = 1.0,
    decode_workers: int = 0,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    device: str | None = None,
    resume: bool = False,
    min_side: int = DEFAULT_MIN_SIDE,
    progress: bool = True,
    metric_factory: Callable[..., Any] | None = None,
    rows_per_shard: int = 256,
) -> RaySummary:
    """Score every image of ``sources`` with a pool of Ray actors into Parquet shards of ``output``.

    ``metric``/``metric_options``: as :class:`ImageScorer`. ``output`` ending in .csv/.jsonl: shards in
    ``<output>.shards/``, merged into ``output`` (the score file format) at the end; otherwise ``output`` is the
    shard folder. ``device``: every actor's (default: CUDA when it has a GPU). ``resume``: skip images already in
    the shards (same metrics and options).
    Each actor reserves ``cpus_per_worker`` CPUs for torch threads plus ``decode_workers`` CPUs for decoding
    processes of its own (worth it on GPU actors, where decoding would otherwise stall the device).
    Starts a local Ray cluster unless Ray is already initialised or ``address`` names one (``"auto"``).
    """
    import ray

    started = time.perf_counter()
    names = _metric_list(metric)
    options = per_metric_options(names, metric_options)
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {num_workers}")
    summary = RaySummary()
    # Built once here before any output is touched: a metric that cannot be built (unknown name, bad options,
    # missing weights) is a MetricLoadError now rather than every actor failing, and the score file's
    # metadata gets the loaded weights' own scale.
    specs = [load_metric(n, options[n], "cpu", explain=explain, create=metric_factory).spec for n in names]
    paths, summary.failures = list_image_paths(sources, column)
    store = ShardStore(output, specs, resume=resume, rows_per_shard=rows_per_shard)
    for failure in summary.failures:
        store.add_error(failure.path, failure.reason)
    done = store.written
    todo = [p for p in paths if p not in done]
    summary.already_done = len(paths) - len(todo)
    actor_cpus = cpus_per_worker + decode_workers
    scorer_options = {"metric": names, "metric_options": metric_options, "explain": explain, "min_side": min_side,
                      "batch_size": batch_size, "dtype": dtype, "device": device, "decode_workers": decode_workers,
                      "threads": max(1, int(cpus_per_worker)), "metric_factory": metric_factory}
    started_here = False
    try:
        if todo:
            started_here = _init_ray(address, actor_cpus, num_workers)
            workers = num_workers or _default_workers(actor_cpus, gpus_per_worker)
            # an actor that would get no batch only costs its start-up
            summary.workers = workers = max(1, min(workers, math.ceil(len(todo) / batch_size)))
            scored = _scored_dataset(todo, scorer_options, workers, actor_cpus, gpus_per_worker)
            _collect(scored, store, summary, len(todo), progress)
    finally:
        store.close()  # whatever arrived is kept, even when the run stops with an error
        if started_here:
            ray.shutdown()
    if merged_format(output):
        summary.merged_rows = merge(output)
    summary.seconds = time.perf_counter() - started
    return summary
