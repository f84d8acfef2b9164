"""``iqa-plugins train exiqa --phase 1|2``: ExIQA's two phases on a generator or converter output folder.

Phase 1 reads ``strengths.csv`` (one strength column per distortion of the attribute set) and ``split.pkl``;
phase 2 reads a pyiqa meta CSV (image name, score; default ``meta_info.csv``) with the same split. Both save the
project's compact checkpoint (``--out``), evaluate on the held-out phase and write ``<out>.json`` with the
figures. Under ``torchrun ... --launcher pytorch`` phase 1 trains as DistributedDataParallel and phase 2
gathers the attribute table of every process's shard (see ``exiqa_phases``); rank 0 evaluates and writes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from iqa_plugins.io import require_readable
from iqa_plugins.split_files import folder_split_rows
from iqa_plugins.train.exiqa_presets import (
    DEFAULT_PHASE1_EPOCHS,
    DEFAULT_PHASE2_EPOCHS,
    ExIQAPreset,
    get_preset,
)
from iqa_plugins.train.mos_dataset import MOSDataset
from iqa_plugins.train.progress import TrainingProgress


def add_exiqa_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--data", type=Path, help="generator or converter output folder (strengths.csv, split.pkl, "
                                                 "images/, meta_info.csv)")
    group.add_argument("--prepare", metavar="DATASET",
                       help="first turn a data set's own files into --data: kadid10k, tid2013, csiq or live, read "
                            "from --source (strengths from the file names, scores, a split by reference image)")
    group.add_argument("--source", type=Path, help="--prepare: the data set's folder as distributed")
    group.add_argument("--preset", help="the paper's settings for a data set (see `train exiqa --list`): attribute "
                                        "set, prompt tokens, phase-1 mode, epochs and rate")
    group.add_argument("--attributes", help="attribute set: kadid10k (default), tid2013, csiq, live, or a JSON file")
    group.add_argument("--meta-csv", default="meta_info.csv", help="phase 2: score table inside --data")
    group.add_argument("--mos-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="phase 2: score scale mapped to [0, 1] (default: scores already in [0, 1])")
    group.add_argument("--lower-better", action="store_true",
                       help="phase 2: the scores are DMOS (lower = better); the model still outputs higher = better")
    group.add_argument("--config", default=None,
                       help="ExIQA config for a new model: paper (default), small, or a JSON object of overrides "
                            "(e.g. '{\"base\": \"small\", \"input\": \"crops\", \"num_crops\": 25}')")
    group.add_argument("--init", help="checkpoint to start from (phase 2: the phase-1 result)")
    group.add_argument("--clip-weights", metavar="openai|FILE|random",
                       help="CLIP of a new model: 'openai' (default for the paper config: OpenAI's ViT-B/32 through "
                            "open_clip, downloaded once), a local CLIP checkpoint file, or 'random' (random towers; "
                            "required for configs with a custom CLIP, for which no weights exist)")
    group.add_argument("--mode", choices=["prompt", "full"], help="phase 1: what trains (default: prompt, or the "
                                                                    "preset's)")
    group.add_argument("--epochs", type=int, default=None, help="default: the preset's, else 100 (both phases)")
    group.add_argument("--lr", type=float, help="peak learning rate (default: the preset's or the paper's)")
    group.add_argument("--batch-size", type=int, default=32, help="per process")
    group.add_argument("--workers", type=int, default=0, help="data loading processes")
    group.add_argument("--split-index", type=int, default=1, help="which split of split.pkl")
    group.add_argument("--seed", type=int, default=0, help="seed of the new model, shuffling and dropout")
    group.add_argument("--out", type=Path, help="where to write the trained compact checkpoint")


def _image_paths(args: argparse.Namespace, phase: str) -> list[Path]:
    """The images one phase of the split lists (phase 1: ``strengths.csv``; phase 2: the score table)."""
    rows = folder_split_rows(args.data, args.split_index, phase)
    if args.phase == 2:
        return [path for path, _ in MOSDataset(args.data / args.meta_csv, args.data / "images", rows, None).items]
    table = args.data / "strengths.csv"
    if not table.is_file():
        raise FileNotFoundError(f"--data {str(args.data)!r} has no strengths.csv")
    with table.open(newline="") as handle:
        names = [row.get("image", "") for row in csv.DictReader(handle)]
    return [args.data / "images" / names[i] for i in (range(len(names)) if rows is None else rows)]


def _clip_kwargs(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """Where a new model's CLIP comes from (see --clip-weights)."""
    named = cfg["clip_model"] is not None
    choice = args.clip_weights
    if choice == "random":
        print("iqa-plugins train exiqa: WARNING: CLIP starts from RANDOM towers (--clip-weights random); this is "
              "not the paper's pretrained CLIP and its attribute prompts mean nothing until trained",
              file=sys.stderr)
        return {"clip_pretrained": None, "clip_weights_path": None}
    if choice in (None, "openai"):
        if not named:
            raise ValueError("this config builds a custom CLIP, for which no pretrained weights exist: pass "
                             "--clip-weights random to train it from random towers (or --clip-weights FILE)")
        return {"clip_pretrained": "openai", "clip_weights_path": None}
    return {"clip_pretrained": "openai" if named else None, "clip_weights_path": choice}


def _model(args: argparse.Namespace, preset: ExIQAPreset | None):
    from iqa_plugins.archs.exiqa_arch import ExIQA, resolve_config
    from iqa_plugins.weights import WeightsNotFoundError

    if args.init:
        return ExIQA(pretrained=True, pretrained_model_path=args.init)
    config: Any = args.config or "paper"
    if isinstance(config, str) and config.lstrip().startswith("{"):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config is not valid JSON: {error}") from None
    cfg = resolve_config(config)
    if preset is not None:
        cfg = resolve_config({**cfg, "num_prompts": preset.num_prompts})
    attributes = args.attributes or (preset.attributes if preset else "kadid10k")
    clip = _clip_kwargs(args, cfg)
    torch.manual_seed(args.seed)
    try:
        return ExIQA(pretrained=False, config=cfg, attributes_path=attributes, **clip)
    except WeightsNotFoundError as error:
        raise ValueError(
            f"OpenAI's CLIP {cfg['clip_model']} weights (the paper's starting point) could not be loaded through "
            f"open_clip: {str(error).split(' Offline,')[0]} Offline, give them as a file: --clip-weights PATH "
            "(OpenAI's ViT-B-32.pt, or open_clip_pytorch_model.bin of the Hugging Face repository "
            "timm/vit_base_patch32_clip_224.openai), or put that repository in the Hugging Face cache (HF_HOME). "
            "--clip-weights random trains from random towers instead (not the paper's model)."
        ) from None


def _trained_variant(args: argparse.Namespace) -> str | None:
    """The variant a model trained on a shipped attribute set is (``--attributes`` or the preset's); None
    (the default variant) for an attribute file of one's own."""
    from iqa_plugins.archs.pretrained_cfgs import EXIQA

    name = args.attributes or (get_preset(args.preset).attributes if args.preset else None)
    return name if any(name == cfg.dataset for cfg in EXIQA.variants.values()) else None


def _shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Every world-th item from rank: disjoint shards that together hold each item exactly once."""
    return dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))


def _phase_dataset(args: argparse.Namespace, model, phase: str, train: bool) -> tuple[Dataset, bool]:
    """The data set of one split phase for the phase being trained, and whether it gives whole images
    (one per batch: the crops input scores images at their own resolution, which batch only at one size)."""
    from iqa_plugins.train.exiqa_phases import StrengthsDataset

    size = int(model.config["image_size"])
    crops = model.config["input"] == "crops"
    rows = folder_split_rows(args.data, args.split_index, phase)
    learns_from_crops = crops and train and args.phase == 1  # random crops for distortion identification
    whole = crops and not learns_from_crops
    if args.phase == 1:
        data = StrengthsDataset(args.data, model.attribute_set.distortion_slugs,
                                phase=phase if rows is not None else None, split_index=args.split_index,
                                image_size=None if whole else size, random_crops=learns_from_crops)
    else:
        data = MOSDataset(args.data / args.meta_csv, args.data / "images", rows, None if whole else size)
    return data, whole


def _train_loader(args: argparse.Namespace, train_set: Dataset, whole: bool, rank: int, world: int) -> DataLoader:
    batch = 1 if whole else args.batch_size
    if args.phase == 1 and world > 1:  # equal shard lengths (DDP steps together), reshuffled every epoch
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed)
        return DataLoader(train_set, batch_size=batch, sampler=sampler, num_workers=args.workers)
    return DataLoader(_shard(train_set, rank, world), batch_size=batch, shuffle=True, num_workers=args.workers)


def _train(args: argparse.Namespace, model, loader: DataLoader, preset: ExIQAPreset | None, device: str,
           progress: TrainingProgress) -> dict[str, Any]:
    """The phase's training, with the command line's settings, else the preset's, else the paper's."""
    from iqa_plugins.train import exiqa_phases as phases

    if args.phase == 1:
        mode = args.mode or (preset.mode if preset else "prompt")
        epochs = args.epochs or (preset.phase1_epochs if preset else DEFAULT_PHASE1_EPOCHS)
        lr = args.lr or (preset.phase1_lr if preset else None)
        return phases.train_phase1(model, loader, epochs, lr, mode=mode, device=device, progress=progress)
    epochs = args.epochs or (preset.phase2_epochs if preset else DEFAULT_PHASE2_EPOCHS)
    return phases.train_phase2(model, loader, epochs, args.lr or 1e-3, mos_range=_mos_range(args),
                               lower_better=args.lower_better, batch_size=args.batch_size, device=device,
                               progress=progress, seed=args.seed)


def _mos_range(args: argparse.Namespace) -> tuple[float, float] | None:
    return tuple(args.mos_range) if args.mos_range else None


def _evaluate_and_save(args: argparse.Namespace, model, held_out: str, device: str) -> dict[str, Any]:
    """The held-out figures of the trained model; writes the checkpoint."""
    from iqa_plugins.archs.exiqa_arch import save_pretrained
    from iqa_plugins.train import exiqa_phases as phases

    held_set, whole = _phase_dataset(args, model, held_out, False)
    held_loader = DataLoader(held_set, batch_size=1 if whole else args.batch_size, shuffle=False,
                             num_workers=args.workers)
    if args.phase == 1:
        figures = phases.evaluate_distortions(model, held_loader, device=device)
    else:
        figures = phases.evaluate_quality(model, held_loader, mos_range=_mos_range(args),
                                          lower_better=args.lower_better, device=device)
    save_pretrained(model.cpu(), args.out, metadata={"trained_by": f"iqa-plugins train exiqa --phase {args.phase}"})
    return figures


def run_phase(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train one phase as the arguments say; returns the evaluation figures (also written as JSON), on rank 0
    (None on the other ranks of a ``--launcher pytorch`` run)."""
    from iqa_plugins.train.options import init_distributed

    if args.data is None or args.out is None:
        raise ValueError("exiqa needs --data (a generator or converter output folder) and --out (the checkpoint to "
                         "write)")
    if args.phase is None:
        raise ValueError("exiqa needs --phase 1 or --phase 2")
    preset = get_preset(args.preset) if args.preset else None
    rank, world = init_distributed(args.launcher)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    held_out = "test" if (folder_split_rows(args.data, args.split_index, "test") or []) else "val"  # data checked first
    for phase in ("train", held_out):
        require_readable(_image_paths(args, phase), f"--data {str(args.data)!r} ({phase} images)")
    model = _model(args, preset).to(device)
    train_set, whole = _phase_dataset(args, model, "train", True)
    label = f"exiqa phase {args.phase}" + (f" ({args.preset})" if preset else "")
    progress = TrainingProgress(label, enabled=rank == 0 and not getattr(args, "quiet", False))
    history = _train(args, model, _train_loader(args, train_set, whole, rank, world), preset, device, progress)
    summary = progress.summary()  # of the training alone
    report = None
    if rank == 0:  # the held-out figures and the files: once
        figures = _evaluate_and_save(args, model, held_out, device)
        report = {"phase": args.phase, "held_out": held_out, "figures": figures, "summary": summary,
                  "epoch_loss": history.get("epoch_loss"), "checkpoint": str(args.out)}
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=1, default=float))
    if world > 1:
        torch.distributed.barrier()
    return report


def train_exiqa(args: argparse.Namespace) -> int:
    if args.prepare:
        from iqa_plugins.train.exiqa_datasets import prepare_dataset

        if args.source is None or args.data is None:
            raise ValueError("--prepare needs --source (the data set's folder) and --data (the folder to write)")
        counts = prepare_dataset(args.prepare, args.source, args.data)
        print(f"{args.prepare}: {counts['images']} images of {counts['references']} references "
              f"({counts['train']} train, {counts['test']} test; {counts['scored']} with scores) -> {args.data}")
        if args.phase is None:
            return 0
    report = run_phase(args)
    if report is None:
        return 0
    figures = report["figures"]
    print(report["summary"])
    if args.phase == 1:
        print(f"phase 1 on {report['held_out']}: accuracy {figures['accuracy']:.4f} RMSE {figures['rmse']:.4f}")
    else:
        print(f"phase 2 on {report['held_out']}: SRCC {figures['srcc']:.4f} PLCC {figures['plcc']:.4f}")
    print(f"weights: {args.out}")
    if args.install_to_cache:
        from iqa_plugins.train.runner import install_to_cache

        print(f"installed to the cache: {install_to_cache(args.out, 'ExIQA', _trained_variant(args))}")
    return 0
