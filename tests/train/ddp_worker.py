"""One rank of the 2-process DDP tests (run by torchrun).

``tiny IMAGES META OUT``: trains the tiny arch with --launcher pytorch's set-up (gloo on CPU) and saves its own
parameters before and after. ``drexperts|exiqa1|exiqa2 DATA OUT``: runs one real command under DDP as a user
does (`train drexperts --opt ... --launcher pytorch` with validation on, `train exiqa --phase 1`, `--phase
2`), recording each rank's trained weights through thin wrappers around the training functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

import pyiqa  # noqa: E402,F401
from tiny_setup import register_tiny_arch, tiny_options  # noqa: E402

from iqa_plugins.train import cli as train_cli  # noqa: E402
from iqa_plugins.train import exiqa_phases, runner  # noqa: E402
from iqa_plugins.train.options import finalize_options  # noqa: E402
from iqa_plugins.train.runner import run_training  # noqa: E402


def tiny(images: Path, meta: Path, out: Path) -> None:
    register_tiny_arch()
    opt = finalize_options(tiny_options(images, meta, epochs=2, batch=3, val=False), out, launcher="pytorch")
    rank = opt["rank"]
    from pyiqa.archs import build_network

    torch.manual_seed(opt["manual_seed"])  # DDP broadcasts rank 0's start; this is only the reference copy
    torch.save(build_network(dict(opt["network"])).state_dict(), out / f"start_rank{rank}.pt")
    result = run_training(opt, log_level=logging.WARNING)
    net = result.model.get_bare_model(result.model.net)
    torch.save(net.state_dict(), out / f"final_rank{rank}.pt")
    (out / f"info_rank{rank}.json").write_text(json.dumps({
        "world_size": dist.get_world_size(), "backend": dist.get_backend(), "iterations": result.iterations}))
    dist.destroy_process_group()


def _recording(module, name: str, out: Path, rank: int, weights) -> None:
    """Wrap ``module.name`` so that every call also saves this rank's weights (``weights(args, result)``)."""
    original = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(1)
        torch.save(weights(args, result), out / f"{name}_{len(calls)}_rank{rank}.pt")
        return result

    setattr(module, name, wrapper)


def command(step: str, data: Path, out: Path) -> None:
    """One real command under DDP, as a user runs it (one command per torchrun launch): ``drexperts`` (DATA:
    an options file; validation on), ``exiqa1`` or ``exiqa2`` (DATA: an ExIQA data folder)."""
    rank = int(os.environ["RANK"])
    _recording(runner, "run_training", out, rank,
               lambda args, result: result.model.get_bare_model(result.model.net).state_dict())
    for name in ("train_phase1", "train_phase2"):
        _recording(exiqa_phases, name, out, rank, lambda args, result: args[0].state_dict())
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    common = ["--launcher", "pytorch", "--device", "cpu", "--quiet"]
    exiqa = ["--data", str(data), "--batch-size", "2", "--epochs", "2", *common]
    argv = {
        "drexperts": ["drexperts", "--opt", str(data), "--root", str(out), *common],
        "exiqa1": ["exiqa", "--phase", "1", "--config", "small", "--clip-weights", "random",
                   "--out", str(out / "p1.pth"), *exiqa],
        "exiqa2": ["exiqa", "--phase", "2", "--init", str(out / "p1.pth"), "--out", str(out / "p2.pth"), *exiqa],
    }[step]
    code = train_cli.main(parser.parse_args(argv))
    (out / f"{step}_rank{rank}.json").write_text(json.dumps(
        {"code": code, "world_size": int(os.environ["WORLD_SIZE"]), "left": not dist.is_initialized()}))


if __name__ == "__main__":
    if sys.argv[1] == "tiny":
        tiny(*(Path(a) for a in sys.argv[2:5]))
    else:
        command(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
