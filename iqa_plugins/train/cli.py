"""``iqa-plugins train``: DR.Experts through pyiqa's training framework; ExIQA's two phases.

Examples::

    iqa-plugins train --list                                       # recipes and presets
    iqa-plugins train drexperts --dataset koniq10k --dataroot ~/data/koniq10k/1024x768 \\
        --meta-info ~/data/meta_info_KonIQ10kDataset.csv --splits 10
    iqa-plugins train drexperts --opt my.yml                      # a full pyiqa options file
    iqa-plugins train drexperts --dataset livec --opt changes.yml --set train.total_epoch=3
    torchrun --nproc_per_node 4 --no-python iqa-plugins train drexperts --dataset spaq --launcher pytorch
    iqa-plugins train exiqa --phase 1 --data DIR ...               # see --help
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

from iqa_plugins.io import require_readable
from iqa_plugins.split_files import load_splits
from iqa_plugins.train.options import (
    OptionsError,
    apply_overrides,
    available_recipes,
    finalize_options,
    load_options,
    merge_options,
    recipe_path,
)

MODELS = ("drexperts", "exiqa")
# pyiqa data set types whose images are dataroot_target/<first column of the meta CSV>
FLAT_NR_DATASETS = ("GeneralNRDataset", "LIVEChallengeDataset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1]
    parser.add_argument("model", nargs="?", choices=MODELS, help="which metric to train")
    parser.add_argument("--list", action="store_true",
                        help="list the shipped recipes (drexperts) and presets (exiqa) and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the options, the network and pyiqa's periodic loss lines")
    group = parser.add_argument_group("drexperts (pyiqa options)")
    group.add_argument("--dataset", help="shipped recipe: " + ", ".join(available_recipes("drexperts")))
    group.add_argument("--opt", type=Path, help="pyiqa options YAML: the whole options, or changes to --dataset's")
    group.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override one option, e.g. train.total_epoch=3 (repeatable)")
    group.add_argument("--dataroot", help="image folder (sets dataroot_target of every data set)")
    group.add_argument("--meta-info", help="pyiqa meta CSV (sets meta_info_file of every data set)")
    group.add_argument("--splits", type=int, help="random train/val splits (default: the recipe's random_splits)")
    group.add_argument("--train-ratio", type=float, help="training fraction of each split (default 0.8)")
    group.add_argument("--name", help="experiment name (default: the options' name)")
    group.add_argument("--root", type=Path, default=Path.cwd(), help="experiments go to ROOT/experiments/NAME")
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    group.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                       help="'pytorch' under torchrun: DDP (NCCL on GPUs, gloo on CPUs)")
    group.add_argument("--auto-resume", action="store_true", help="resume from this experiment's newest state")
    group.add_argument("--resume-state", help="resume from this training state file (single run)")
    group.add_argument("--install-to-cache", action="store_true",
                       help="copy the trained weights into pyiqa's cache under the file name of the --dataset's "
                            "variant (e.g. drexperts-livec; the default metric's without --dataset). Off by "
                            "default: they then replace what `pyiqa.create_metric(name)` loads")
    group.add_argument("--quiet", action="store_true", help="no progress bars; warnings and results only")
    exiqa = parser.add_argument_group("exiqa")
    exiqa.add_argument("--phase", type=int, choices=[1, 2], help="1: distortion identification; 2: regressor")
    from iqa_plugins.train.exiqa_cli import add_exiqa_arguments

    add_exiqa_arguments(exiqa)


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """Recipe and/or options file, then the command-line changes (not yet finalized)."""
    if args.dataset is None and args.opt is None:
        raise OptionsError("give --dataset (a shipped recipe) and/or --opt (an options file)")
    opt: dict[str, Any] = {}
    if args.dataset is not None:
        opt = load_options(recipe_path("drexperts", args.dataset))
    if args.opt is not None:
        opt = merge_options(opt, load_options(args.opt))
    opt = apply_overrides(opt, args.set)
    for dataset in (opt.get("datasets") or {}).values():
        if args.dataroot:
            dataset["dataroot_target"] = str(Path(args.dataroot).expanduser())
        if args.meta_info:
            dataset["meta_info_file"] = str(Path(args.meta_info).expanduser())
    if args.name:
        opt["name"] = args.name
    if args.device == "cpu":
        opt["num_gpu"] = 0
    elif args.device == "cuda":
        opt["num_gpu"] = "auto"
    if args.auto_resume:
        opt["auto_resume"] = True
    if args.resume_state:
        opt.setdefault("path", {})["resume_state"] = args.resume_state
    return opt


def _check_paths(opt: dict[str, Any]) -> None:
    """Check the data before an experiment folder is made: paths exist, split files are safe to unpickle
    (pyiqa loads them with plain pickle), every listed image decodes."""
    for phase, dataset in opt["datasets"].items():
        for key in ("dataroot_target", "meta_info_file"):
            if dataset.get(key) and not Path(dataset[key]).exists():
                raise OptionsError(
                    f"datasets.{phase}.{key}: {dataset[key]!r} does not exist (use --dataroot / --meta-info)"
                )
        if dataset.get("split_file"):
            load_splits(dataset["split_file"])
        if dataset.get("type") in FLAT_NR_DATASETS and dataset.get("dataroot_target") and dataset.get("meta_info_file"):
            with open(dataset["meta_info_file"], newline="", encoding="utf-8") as handle:
                names = [row[0] for row in list(csv.reader(handle))[1:] if row]
            require_readable([Path(dataset["dataroot_target"]) / n for n in names], f"datasets.{phase}")


def train_drexperts(args: argparse.Namespace) -> int:
    from iqa_plugins.train.runner import install_to_cache, run_training, train_splits

    opt = build_options(args)
    _check_paths(opt)
    splits_opt = dict(opt.pop("random_splits", None) or {})
    num_splits = args.splits if args.splits is not None else splits_opt.get("num_splits")
    if args.resume_state and num_splits and num_splits > 1:
        raise OptionsError("--resume-state resumes one run; with several splits use --auto-resume")
    opt = finalize_options(opt, args.root, launcher=args.launcher)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    arch_type = opt["network"]["type"]
    if num_splits:
        table = train_splits(
            opt, num_splits=int(num_splits), log_level=level, report=print,
            train_ratio=args.train_ratio or float(splits_opt.get("train_ratio", 0.8)),
            seed=int(splits_opt.get("seed", opt["manual_seed"])),
        )
        if opt["rank"] != 0:
            return 0
        for dataset, stats in table["summary"].items():
            print(f"{dataset}: median over {num_splits} splits SRCC {stats['srcc']['median']:.4f} "
                  f"PLCC {stats['plcc']['median']:.4f} -> {opt['path']['experiments_root']}/results.json")
        # The run whose SRCC is the (lower) median represents the protocol, not the luckiest split.
        runs = sorted(table["runs"], key=lambda r: next(iter(r.final_metrics.values()), {}).get("srcc", 0.0))
        chosen = runs[(len(runs) - 1) // 2]
    else:
        chosen = run_training(opt, log_level=level)
        if opt["rank"] != 0:
            return 0
        print(chosen.summary)
    weights = chosen.compact_checkpoint or chosen.checkpoint
    print(f"weights: {weights}")
    if args.install_to_cache:
        # a shipped recipe trains its data set's variant (drexperts-livec, ...); an options file, the default
        print(f"installed to the cache: {install_to_cache(weights, arch_type, args.dataset)}")
    return 0


def list_choices(model: str | None) -> str:
    """The shipped DR.Experts recipes and/or ExIQA presets, one line each."""
    from iqa_plugins.train.exiqa_presets import PRESETS

    lines = []
    if model in (None, "drexperts"):
        lines.append("drexperts recipes (--dataset): " + ", ".join(available_recipes("drexperts")))
    if model in (None, "exiqa"):
        lines.append("exiqa presets (--preset):")
        lines += [f"  {name}: {preset.description}" for name, preset in PRESETS.items()]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.list:
        print(list_choices(args.model))
        return 0
    if args.model is None:
        print("iqa-plugins train: name the model to train (drexperts or exiqa), or give --list", file=sys.stderr)
        return 2
    import torch.distributed as dist

    joined_before = dist.is_available() and dist.is_initialized()
    try:
        if args.model == "drexperts":
            return train_drexperts(args)
        from iqa_plugins.train.exiqa_cli import train_exiqa

        return train_exiqa(args)
    except (OptionsError, FileNotFoundError, ValueError) as error:
        print(f"iqa-plugins train: {error}", file=sys.stderr)
        return 2
    finally:
        # --launcher pytorch joined a process group: leave it, so that every process exits at once.
        if not joined_before and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
