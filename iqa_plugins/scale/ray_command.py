"""``iqa-plugins score --engine ray``: the score command's options mapped onto :func:`score_with_ray`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

RAY_MISSING = "--engine ray needs Ray Data: pip install 'iqa-plugins[ray]'"


def run_ray_engine(args: argparse.Namespace, names: list[str], options: dict[str, dict[str, Any]]) -> int:
    """Score with the checked ``--metric`` names and their options (``{name: options}``).

    Exit status as the single-process command: 0 all scored, 1 some skipped, 2 nothing could be done; 3 the
    Ray job stopped part way (the scores so far are kept for ``--resume``).
    """
    try:
        import ray.data  # noqa: F401
    except ImportError:
        print(f"iqa-plugins score: {RAY_MISSING}", file=sys.stderr)
        return 2
    from iqa_plugins.scale.ray_engine import RayJobError, score_with_ray

    if not args.output:
        print("iqa-plugins score: --engine ray needs --output (a .csv/.jsonl file, or a folder for Parquet "
              "shards only)", file=sys.stderr)
        return 2
    if args.format and not args.output.endswith(f".{args.format}"):
        print(f"iqa-plugins score: --engine ray takes the format from --output's suffix (.csv, .jsonl, or a "
              f"folder), not --format {args.format}", file=sys.stderr)
        return 2
    try:
        summary = score_with_ray(
            args.inputs, names, args.output, metric_options=options if len(names) > 1 else options[names[0]],
            explain=args.explain, batch_size=args.batch_size, dtype=args.dtype, num_workers=args.num_workers, cpus_per_worker=float(args.threads or 1),
            decode_workers=args.workers or 0,
            gpus_per_worker=args.num_gpus_per_worker, address=args.address,
            device=None if args.device == "auto" else args.device, resume=args.resume,
            min_side=args.min_side, progress=not args.quiet,
        )
    except RayJobError as error:
        print(f"iqa-plugins score: {error}", file=sys.stderr)
        return 3
    except (ValueError, KeyError, OSError) as error:
        print(f"iqa-plugins score: {error}", file=sys.stderr)
        return 2
    if summary.failures:
        print(f"skipped {len(summary.failures)} input(s):", file=sys.stderr)
        for failure in summary.failures:
            print(f"  {failure.path}: {failure.reason}", file=sys.stderr)
    done = f", {summary.already_done} already done" if summary.already_done else ""
    print(f"scored {summary.scored} image(s) with {', '.join(names)} on {summary.workers} Ray worker(s){done} "
          f"-> {args.output}", file=sys.stderr)
    if summary.scored == 0 and summary.already_done == 0:
        return 2
    return 1 if summary.failures else 0
