"""``iqa-plugins convert``: official DR.Experts (and DA-CLIP) checkpoints to the compact file the metric loads."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from iqa_plugins.archs.pretrained_cfgs import DREXPERTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert an official DR.Experts checkpoint (ckpt_epoch_N.pth or its state dict; optionally plus a separate "
        "daclip_ViT-B-32.pt) into the compact checkpoint the 'drexperts' metric loads."
    )
    parser.add_argument("checkpoint", help="official DR.Experts checkpoint (ckpt_epoch_N.pth or a bare state dict)")
    parser.add_argument("--daclip", default=None, help="separate DA-CLIP checkpoint (daclip_ViT-B-32.pt), if the "
                        "DR.Experts checkpoint lacks the head.* weights")
    parser.add_argument("-o", "--output", required=True, help="compact checkpoint to write (e.g. DRExperts_koniq10k.pth)")
    datasets = sorted(cfg.dataset for cfg in DREXPERTS.variants.values())
    parser.add_argument("--dataset", choices=datasets, default="koniq10k", help="training dataset: sets the test-time resize, crop count and MOS range (default koniq10k)")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), default=None, help="override the resize")
    parser.add_argument("--no-resize", action="store_true", help="no resize before cropping")
    parser.add_argument("--num-crops", type=int, default=None, help="override the number of test crops")
    parser.add_argument("--mos-range", type=float, nargs=2, metavar=("LO", "HI"), default=None)
    parser.add_argument("--config", default="paper", help="architecture size config (default paper)")


def main(args: argparse.Namespace) -> int:
    from iqa_plugins.archs.drexperts_arch import DRExperts, save_pretrained

    protocol = {**copy.deepcopy(dict(DREXPERTS.variant(args.dataset).protocol)), "dataset": args.dataset,
                "lower_better": False}
    if args.resize is not None:
        protocol["resize"] = list(args.resize)
    if args.no_resize:
        protocol["resize"] = None
    if args.num_crops is not None:
        if args.num_crops < 1:
            raise SystemExit("--num-crops must be >= 1")
        protocol["num_crops"] = args.num_crops
    if args.mos_range is not None:
        protocol["mos_range"] = list(args.mos_range)
    paths = [args.checkpoint] + ([args.daclip] if args.daclip else [])
    model = DRExperts(pretrained=True, pretrained_model_path=paths, config=args.config)
    source = " + ".join(Path(p).name for p in paths)
    out = save_pretrained(model, args.output, source=source, protocol=protocol)
    print(f"wrote {out} ({sum(v.numel() for v in model.state_dict().values() if v is not None):,} values; "
          f"protocol {protocol})")
    return 0
