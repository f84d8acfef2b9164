"""``iqa-plugins score``: score files, folders and globs with one or several metrics; stream CSV/JSONL rows.

``--engine local`` (default) scores in this process with the runtime's split of the cores between decoding
workers and torch threads; ``--engine ray`` hands the same checked arguments to a pool of Ray actors
(:mod:`iqa_plugins.scale.ray_command`), which write the same score file format.

Exit status: 0 every image scored; 1 some inputs were skipped (each named on stderr and in
``<output>.errors.jsonl``; every other row was written); 2 nothing was done (bad arguments, no images,
metric unavailable, an output that cannot be resumed) and no output file was touched; 130 interrupted
(rows already written are kept; ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from iqa_plugins.io import DEFAULT_MIN_SIDE
from iqa_plugins.runtime import ThreadPlan, apply_plan, plan_threads
from iqa_plugins.scoring import DTYPES, Failure, LoadedMetric, MetricLoadError, collect_images, load_metric, score_paths
from iqa_plugins.scoring_output import (
    ErrorLog,
    ExistingOutput,
    MetricSpec,
    OutputFormatError,
    ScoreWriter,
    format_for,
    open_for_resume,
)


class UsageError(ValueError):
    """A bad invocation, found before any output is touched."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, directories (recursive) or glob patterns; "
                        "--engine ray also: list files (.txt, one path per line), Parquet files with a 'path' "
                        "column, URIs")
    parser.add_argument(
        "--metric", action="append", required=True,
        help="any pyiqa NR metric, e.g. drexperts, exiqa, topiq_nr; repeat it or give a comma list to score "
             "with several metrics in one pass (each image is decoded once; one column per metric)",
    )
    parser.add_argument(
        "--metric-opt", action="append", default=[], metavar="[METRIC:]KEY=VALUE",
        help="keyword for pyiqa.create_metric (YAML value), e.g. pretrained_model_path=w.pth; repeatable; "
             "with several metrics prefix the metric: drexperts:pretrained_model_path=w.pth",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast precision")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default on CPU: 0 below 4 cores, decoding between batches, else 1; "
                        "on CUDA: all cores but one; "
                        "--engine ray: per actor, default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the cores the decoding workers leave free; "
                        "--engine ray: per actor, default 1)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this process; ray: a pool of Ray actors (pip install 'iqa-plugins[ray]')")
    parser.add_argument("--address", default=None,
                        help="--engine ray: cluster address ('auto': the running cluster; default: start a local one)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="--engine ray: scoring actors (default: GPUs / --num-gpus-per-worker, else one per "
                        "--threads + --workers CPUs, one CPU left to Ray)")
    parser.add_argument("--num-gpus-per-worker", type=float, default=0,
                        help="--engine ray: GPUs per scoring actor (1: one actor per GPU)")
    parser.add_argument("--format", choices=["csv", "jsonl"], help="default: from --output's suffix, else csv")
    parser.add_argument("--output", "-o", help="file to write (default: standard output)")
    parser.add_argument("--resume", action="store_true",
                        help="continue --output: skip images already in it (same metrics and options only)")
    parser.add_argument("--explain", action="store_true",
                        help="add <metric>:<key> explanation columns; every --metric must have explanations "
                             "(drexperts, exiqa)")
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="skip smaller images")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _metric_names(values: list[str]) -> list[str]:
    names = [name.strip() for value in values for name in value.split(",")]
    if any(not name for name in names):
        raise UsageError(f"--metric: empty metric name in {values!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--metric: {', '.join(repeated)} given more than once")
    return names


def _metric_options(items: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--metric-opt expects [METRIC:]KEY=VALUE, got {item!r}")
        metric, colon, key = key.strip().rpartition(":")
        if colon and metric not in options:
            raise UsageError(f"--metric-opt {item!r}: {metric!r} is not one of the --metric names {names}")
        if not colon and len(names) > 1:
            raise UsageError(f"--metric-opt {item!r}: with several metrics say which one, e.g. "
                             f"--metric-opt {names[0]}:{item}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UsageError(f"--metric-opt {item!r}: the value is not valid YAML: "
                             f"{str(error).splitlines()[0]}") from None
        options[metric if colon else names[0]][key.strip()] = value
    return options


def _check_output(output: str | None, resume: bool, folder_ok: bool = False) -> None:
    """``folder_ok``: --engine ray keeps only its shards in a folder named without a .csv/.jsonl suffix."""
    if output is None:
        if resume:
            raise UsageError("--resume needs --output")
        return
    path = Path(output)
    if path.is_dir() and not (folder_ok and path.suffix.lower() not in (".csv", ".jsonl")):
        raise UsageError(f"--output {output!r} is a directory; name a file")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"--output {output!r}: {str(existing)!r} is not a directory")
    if not os.access(existing, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--output {output!r}: not writable (permission denied)")


@dataclass
class _Plan:
    fmt: str
    names: list[str]
    options: dict[str, dict[str, Any]]
    requested: list[MetricSpec]
    paths: list[str]
    failures: list[Failure]
    existing: ExistingOutput | None  # what --resume continues

    @property
    def appending(self) -> bool:
        return self.existing is not None and not self.existing.empty


def _check_arguments(args: argparse.Namespace) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The checks both engines share; returns the metric names and each one's options."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.min_side < 1:
        raise UsageError(f"--min-side must be >= 1, got {args.min_side}")
    if args.engine != "ray":
        given = [flag for flag, value in (("--address", args.address), ("--num-workers", args.num_workers),
                                          ("--num-gpus-per-worker", args.num_gpus_per_worker)) if value]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --engine ray")
    names = _metric_names(args.metric)
    options = _metric_options(args.metric_opt, names)
    _check_output(args.output, args.resume, folder_ok=args.engine == "ray")
    return names, options


def _plan(args: argparse.Namespace) -> _Plan:
    """Everything that can be checked before a metric is built or a file written."""
    names, options = _check_arguments(args)
    fmt = format_for(args.output, args.format)
    requested = [MetricSpec(n, options[n], args.explain) for n in names]
    paths, failures = collect_images(args.inputs)
    existing = open_for_resume(args.output, fmt, requested) if args.resume else None
    if existing is not None:
        paths = [p for p in paths if p not in existing.done]
    return _Plan(fmt, names, options, requested, paths, failures, existing)


def _report(failures: list[Failure]) -> None:
    print(f"skipped {len(failures)} input(s):", file=sys.stderr)
    for failure in failures:
        print(f"  {failure.path}: {failure.reason}", file=sys.stderr)


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except RuntimeError as error:
        raise UsageError(f"--device {choice!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {choice!r}: CUDA is not available on this machine")
    return choice


def _thread_plan(args: argparse.Namespace, device: str, images: int) -> ThreadPlan:
    """The runtime policy's split of the cores, applied to this process; a warning when it oversubscribes."""
    import torch

    plan = plan_threads(torch.device(device).type, threads=args.threads, workers=args.workers)
    if plan.warning:
        print(f"iqa-plugins score: warning: {plan.warning}", file=sys.stderr)
    apply_plan(plan)
    if images <= args.batch_size:  # a single batch has nothing to overlap its decoding with
        plan = ThreadPlan(plan.torch_threads, 0, plan.cores, plan.warning)
    return plan


def main(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        from iqa_plugins.scale.ray_command import run_ray_engine

        try:
            names, options = _check_arguments(args)
        except UsageError as error:
            print(f"iqa-plugins score: {error}", file=sys.stderr)
            return 2
        return run_ray_engine(args, names, options)
    try:
        plan = _plan(args)
        if not plan.paths:
            if plan.failures:
                _report(plan.failures)
            if args.resume and plan.appending:
                print(f"iqa-plugins score: every image is already in {args.output}", file=sys.stderr)
                return 1 if plan.failures else 0
            print("iqa-plugins score: no images to score", file=sys.stderr)
            return 2
        device = _device(args.device)
        threads = _thread_plan(args, device, len(plan.paths))
        metrics: list[LoadedMetric] = [load_metric(n, plan.options[n], device, explain=args.explain)
                                       for n in plan.names]
    except (UsageError, OutputFormatError, MetricLoadError) as error:
        print(f"iqa-plugins score: {error}", file=sys.stderr)
        return 2
    return _run(args, plan, metrics, threads.workers)


def _run(args: argparse.Namespace, plan: _Plan, metrics: list[LoadedMetric], workers: int) -> int:
    """Only now is the output opened: a fresh run replaces it, ``--resume`` appends to its good rows."""
    if plan.existing is not None and plan.existing.has_cut_row:
        plan.existing.drop_cut_row()
        print(f"iqa-plugins score: dropped a cut last row of {args.output}; that image is scored again",
              file=sys.stderr)
    failures, scored = [], 0
    with contextlib.ExitStack() as files:
        out, errors = sys.stdout, None
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            out = files.enter_context(open(args.output, "a" if plan.appending else "w", newline="", encoding="utf-8"))
            errors = ErrorLog(args.output, append=args.resume)
            files.callback(errors.close)
        writer = ScoreWriter(out, plan.fmt, [m.spec for m in metrics], output=args.output,
                             columns=plan.existing.columns if plan.appending else None)

        def record(failure: Failure) -> None:
            failures.append(failure)
            if errors is not None:
                errors.write(failure.path, failure.reason)

        for failure in plan.failures:
            record(failure)
        for item in score_paths(plan.paths, metrics, batch_size=args.batch_size, num_workers=workers,
                                dtype=args.dtype, min_side=args.min_side, progress=not args.quiet):
            if isinstance(item, Failure):
                record(item)
                continue
            try:
                writer.write(item)  # encoded whole before any byte is written
            except UnicodeEncodeError:
                record(Failure(item["path"], "the file name is not valid UTF-8 and cannot be written as a row"))
                continue
            scored += 1
    if failures:
        _report(failures)
    print(f"scored {scored} image(s) with {', '.join(plan.names)}"
          + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
    return 1 if failures else 0
