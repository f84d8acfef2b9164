"""``iqa-plugins train exiqa --phase 1|2``: ExIQA's two phases on a generator output folder.

Phase 1 reads ``strengths.csv`` (the 25 distortion strengths) and ``split.pkl``; phase 2 reads a pyiqa meta CSV
(image name, MOS; default ``meta_info.csv``) with the same split. Both save the project's compact checkpoint
(``--out``), evaluate on the held-out phase and write ``<out>.json`` with the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from iqa_plugins.io import require_readable
from iqa_plugins.split_files import split_rows


class MOSDataset(Dataset):
    """Images of a pyiqa meta CSV (first column image name, second MOS), resized and centre-cropped to
    ``image_size`` as ExIQA's "resize" input does, so that they batch (None: as read, for the "crops" input).
    Items: (image (3, H, W) in [0, 1], MOS (1,))."""

    def __init__(self, meta_csv: Path, image_dir: Path, rows: list[int] | None, image_size: int | None) -> None:
        if not meta_csv.is_file():
            raise FileNotFoundError(f"--meta-info {str(meta_csv)!r} does not exist")
        with meta_csv.open(newline="") as handle:
            table = list(csv.reader(handle))[1:]
        if rows is not None:
            table = [table[i] for i in rows]
        self.items = [(image_dir / r[0], float(r[1])) for r in table]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from iqa_plugins.archs.exiqa_arch import resize_center_crop
        from iqa_plugins.io import read_image

        path, mos = self.items[index]
        image = torch.from_numpy(read_image(path).copy()).permute(2, 0, 1).unsqueeze(0)
        if self.image_size is not None:
            image = resize_center_crop(image, self.image_size).clamp(0, 1)
        return image.squeeze(0).float(), torch.tensor([mos], dtype=torch.float32)


def add_exiqa_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--data", type=Path, help="generator output folder (strengths.csv, split.pkl, images/)")
    group.add_argument("--meta-csv", default="meta_info.csv", help="phase 2: MOS table inside --data")
    group.add_argument("--mos-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="phase 2: MOS scale mapped to [0, 1] (default: MOS already in [0, 1])")
    group.add_argument("--config", default=None,
                       help="ExIQA config for a new model: paper (default), small, or a JSON object of overrides "
                            "(e.g. '{\"base\": \"small\", \"input\": \"crops\", \"num_crops\": 25}')")
    group.add_argument("--init", help="checkpoint to start from (phase 2: the phase-1 result)")
    group.add_argument("--clip-weights", help="local CLIP checkpoint for a new paper-size model")
    group.add_argument("--mode", choices=["prompt", "full"], default="prompt", help="phase 1: what trains")
    group.add_argument("--epochs", type=int, default=None, help="default: 100 (phase 1), 50 (phase 2)")
    group.add_argument("--lr", type=float, help="peak learning rate (default: the paper's)")
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--workers", type=int, default=0, help="data loading processes")
    group.add_argument("--split-index", type=int, default=1, help="which split of split.pkl")
    group.add_argument("--out", type=Path, help="where to write the trained compact checkpoint")


def _rows(data: Path, split_index: int, phase: str) -> list[int] | None:
    split_file = data / "split.pkl"
    if not split_file.is_file():
        return None
    return split_rows(split_file, split_index, phase)  # untrusted like any data file: no code runs


def _model(args: argparse.Namespace):
    from iqa_plugins.archs.exiqa_arch import ExIQA

    if args.init:
        return ExIQA(pretrained=True, pretrained_model_path=args.init)
    config = args.config or "paper"
    if config.lstrip().startswith("{"):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config is not valid JSON: {error}") from None
    return ExIQA(pretrained=False, config=config, clip_weights_path=args.clip_weights,
                 clip_pretrained="openai" if args.clip_weights else None)


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Train one phase as the arguments say; returns the evaluation figures (also written as JSON)."""
    from iqa_plugins.archs.exiqa_arch import save_pretrained
    from iqa_plugins.train import exiqa_phases as phases

    if args.data is None or args.out is None:
        raise ValueError("exiqa needs --data (a generator output folder) and --out (the checkpoint to write)")
    if args.phase is None:
        raise ValueError("exiqa needs --phase 1 or --phase 2")
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    held_out = "test" if (_rows(args.data, args.split_index, "test") or []) else "val"  # data checked first
    model = _model(args).to(device)
    size = int(model.config["image_size"])
    crops = model.config["input"] == "crops"

    def loader(phase: str, train: bool) -> DataLoader:
        rows = _rows(args.data, args.split_index, phase)
        # The crops input trains on random crops and scores whole images at their own resolution, which
        # batch only when they share a size: one image per batch then.
        learns_from_crops = crops and train and args.phase == 1
        whole = crops and not learns_from_crops
        if args.phase == 1:
            dataset = phases.StrengthsDataset(args.data, model.attribute_set.distortion_slugs,
                                              phase=phase if rows is not None else None,
                                              split_index=args.split_index, image_size=None if whole else size,
                                              random_crops=learns_from_crops)
        else:
            dataset = MOSDataset(args.data / args.meta_csv, args.data / "images", rows, None if whole else size)
        images = dataset.images if args.phase == 1 else [path for path, _ in dataset.items]
        require_readable(images, f"--data {str(args.data)!r} ({phase} images)")
        return DataLoader(dataset, batch_size=1 if whole else args.batch_size, shuffle=train,
                          num_workers=args.workers)

    train_loader = loader("train", True)
    mos_range = tuple(args.mos_range) if args.mos_range else None
    if args.phase == 1:
        history = phases.train_phase1(model, train_loader, args.epochs or 100, args.lr, mode=args.mode, device=device)
        figures = phases.evaluate_distortions(model, loader(held_out, False), device=device)
    else:
        history = phases.train_phase2(model, train_loader, args.epochs or 50, args.lr or 1e-3,
                                      mos_range=mos_range, batch_size=args.batch_size, device=device)
        figures = phases.evaluate_quality(model, loader(held_out, False), mos_range=mos_range, device=device)
    save_pretrained(model.cpu(), args.out, metadata={"trained_by": f"iqa-plugins train exiqa --phase {args.phase}"})
    report = {"phase": args.phase, "held_out": held_out, "figures": figures,
              "epoch_loss": history.get("epoch_loss"), "checkpoint": str(args.out)}
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1, default=float))
    return report


def train_exiqa(args: argparse.Namespace) -> int:
    report = run_phase(args)
    figures = report["figures"]
    if args.phase == 1:
        print(f"phase 1 on {report['held_out']}: accuracy {figures['accuracy']:.4f} RMSE {figures['rmse']:.4f}")
    else:
        print(f"phase 2 on {report['held_out']}: SRCC {figures['srcc']:.4f} PLCC {figures['plcc']:.4f}")
    print(f"weights: {args.out}")
    if args.install_to_cache:
        from iqa_plugins.train.runner import install_to_cache

        print(f"installed to the cache: {install_to_cache(args.out, 'ExIQA')}")
    return 0
