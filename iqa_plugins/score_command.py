"""``iqa-plugins score``: score files, folders and globs; stream CSV/JSONL rows; report bad files.

Exit status: 0 every image scored; 1 some inputs were skipped (listed on stderr with reasons; all
other rows were written); 2 nothing could be done (bad arguments, no images, metric unavailable).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from iqa_plugins.io import DEFAULT_MIN_SIDE
from iqa_plugins.runtime import apply_plan, plan_threads, quiet_openmp_waits
from iqa_plugins.scoring import DTYPES, Failure, RowWriter, collect_images, score_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, directories (recursive) or glob patterns; "
                        "--engine ray also: list files (.txt, one path per line), Parquet files with a 'path' "
                        "column, URIs")
    parser.add_argument("--metric", required=True, help="any pyiqa NR metric, e.g. drexperts, exiqa, topiq_nr")
    parser.add_argument(
        "--metric-opt", action="append", default=[], metavar="KEY=VALUE",
        help="keyword for pyiqa.create_metric (YAML value), e.g. pretrained_model_path=w.pth; repeatable",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast precision")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: 1 on CPU, all cores but one on CUDA; "
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
    parser.add_argument("--resume", action="store_true", help="append to --output, skipping images already in it")
    parser.add_argument("--explain", action="store_true", help="add per-distortion columns (drexperts, exiqa)")
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="skip smaller images")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _parse_metric_opts(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--metric-opt expects KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _already_scored(path: Path, fmt: str) -> set[str]:
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    with path.open(newline="") as handle:
        if fmt == "jsonl":
            # A line cut by an interruption is not a result: skip it and score that image again.
            done = set()
            for line in handle:
                try:
                    done.add(json.loads(line)["path"])
                except (json.JSONDecodeError, KeyError):
                    continue
            return done
        return {row["path"] for row in csv.DictReader(handle) if row.get("path") and row.get("score")}


def _report(failures: list[Failure]) -> None:
    print(f"skipped {len(failures)} input(s):", file=sys.stderr)
    for failure in failures:
        print(f"  {failure.path}: {failure.reason}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    fmt = args.format or ("jsonl" if args.output and args.output.endswith((".jsonl", ".json")) else "csv")
    try:
        metric_opts = _parse_metric_opts(args.metric_opt)
    except ValueError as error:
        print(f"iqa-plugins score: {error}", file=sys.stderr)
        return 2
    if args.resume and not args.output:
        print("iqa-plugins score: --resume needs --output", file=sys.stderr)
        return 2
    if args.engine == "ray":
        from iqa_plugins.scale.ray_command import run_ray_engine

        return run_ray_engine(args, metric_opts)

    paths, failures = collect_images(args.inputs)
    if args.resume and paths:
        done = _already_scored(Path(args.output), fmt)
        remaining = [p for p in paths if p not in done]
        if not remaining:
            print(f"iqa-plugins score: all {len(paths)} image(s) already in {args.output}", file=sys.stderr)
            return 1 if failures else 0
        paths = remaining
    if not paths:
        _report(failures)
        print("iqa-plugins score: no images to score", file=sys.stderr)
        return 2

    quiet_openmp_waits()  # before torch is imported
    import torch

    from iqa_plugins.metric_factory import create_metric

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        plan = plan_threads(torch.device(device).type, threads=args.threads, workers=args.workers)
    except ValueError as error:
        print(f"iqa-plugins score: {error}", file=sys.stderr)
        return 2
    if plan.warning:
        print(f"iqa-plugins score: warning: {plan.warning}", file=sys.stderr)
    apply_plan(plan)
    try:
        metric = create_metric(args.metric, device=torch.device(device), **metric_opts)
    except (AssertionError, KeyError) as error:
        print(f"iqa-plugins score: unknown --metric {args.metric!r} ({error})", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError, TypeError) as error:  # OSError: missing/undownloadable weights
        print(f"iqa-plugins score: could not create --metric {args.metric!r}: {error}", file=sys.stderr)
        return 2
    if metric.metric_mode != "NR":
        print(f"iqa-plugins score: --metric {args.metric!r} is full-reference; this command scores "
              "without a reference (use pyiqa -r for FR metrics)", file=sys.stderr)
        return 2

    out = sys.stdout
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        appending = args.resume and Path(args.output).is_file() and Path(args.output).stat().st_size > 0
        out = open(args.output, "a" if appending else "w", newline="")
    writer = RowWriter(out, fmt)
    if fmt == "csv" and out is not sys.stdout and out.mode == "a":
        with open(args.output, newline="") as handle:
            writer.continue_csv(next(csv.reader(handle)))
    try:
        summary = score_files(
            paths, metric, writer,
            batch_size=args.batch_size,
            # a single batch has nothing to overlap its decoding with: a worker process would only cost its start
            num_workers=plan.workers if len(paths) > args.batch_size else 0, dtype=args.dtype,
            explain=args.explain, min_side=args.min_side, progress=not args.quiet,
        )
    except ValueError as error:
        print(f"iqa-plugins score: {error}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    failures += summary.failures
    if failures:
        _report(failures)
    print(f"scored {summary.scored} image(s) with {args.metric}"
          + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
    return 1 if failures else 0
