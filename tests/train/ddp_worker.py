"""One rank of the 2-process DDP test (run by torchrun): trains the tiny arch with --launcher pytorch's
set-up (gloo on CPU) and saves its own parameters before and after."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

import pyiqa  # noqa: E402,F401
from tiny_setup import register_tiny_arch, tiny_options  # noqa: E402

from iqa_plugins.train.options import finalize_options  # noqa: E402
from iqa_plugins.train.runner import run_training  # noqa: E402


def main() -> None:
    images, meta, out = (Path(a) for a in sys.argv[1:4])
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


if __name__ == "__main__":
    main()
