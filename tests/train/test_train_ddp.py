"""DDP with the real small models: `train drexperts` (validation on) and `train exiqa` phases 1 and 2 under
torchrun with 2 gloo processes stay in step, write their files once and exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tiny_setup import small_drexperts_options


@pytest.fixture(scope="module")
def exiqa_data(tmp_path_factory):
    """A generated ExIQA set: 4 photos x 2 variants, half of the photos held out."""
    from iqa_plugins.data.generator import generate_dataset
    from iqa_plugins.train import demo

    root = tmp_path_factory.mktemp("exiqa_ddp")
    photos = demo.collect_photos(root / "all", size=(96, 80))
    folder = root / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        (folder / photos[name].name).write_bytes(photos[name].read_bytes())
    data = root / "data"
    assert generate_dataset(folder, data, variants=2, max_distortions=2, labeller="ssim",
                            split_ratios=(0.5, 0.0, 0.5), progress=False).ok
    return data


@pytest.mark.slow
def test_ddp_trains_the_real_models_in_step_and_exits(tiny_set, exiqa_data, tmp_path):
    images, meta = tiny_set
    opt = small_drexperts_options(images, meta)
    opt["train"]["total_epoch"] = 2
    opt["val"]["val_freq"] = 1  # also validate mid-training: rank 0 alone, while rank 1 goes on
    options = tmp_path / "small.yml"
    options.write_text(yaml.safe_dump(opt))
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for step, data in (("drexperts", options), ("exiqa1", exiqa_data), ("exiqa2", exiqa_data)):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(worker), step, str(data), str(tmp_path)],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert done.returncode == 0, (step, done.stdout[-2000:] + done.stderr[-3000:])
        for rank in (0, 1):
            info = json.loads((tmp_path / f"{step}_rank{rank}.json").read_text())
            assert info == {"code": 0, "world_size": 2, "left": True}, (step, rank)

    def both(name: str) -> tuple[dict, dict]:
        return tuple(torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=True) for r in (0, 1))

    for name in ("run_training_1", "train_phase1_1", "train_phase2_1"):
        rank0, rank1 = both(name)
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), (name, key)

    drexperts, _ = both("run_training_1")
    assert float(drexperts["dsdm.alpha"]) != 0.5  # trained (initialised at 0.5)
    history = json.loads((tmp_path / "experiments" / "demo_drexperts" / "history.json").read_text())
    assert [h["iter"] for h in history["history"]] == [1, 2]  # mid-training and final validation
    import pyiqa

    metric = pyiqa.create_metric("drexperts", device="cpu",
                                 pretrained_model_path=str(tmp_path / "experiments" / "demo_drexperts" / "drexperts.pth"))
    assert torch.equal(metric.net.score.weight, drexperts["score.weight"])

    phase1, _ = both("train_phase1_1")
    phase2, _ = both("train_phase2_1")
    assert phase1["weight_logits"].abs().max() > 0  # trained from zeros
    assert torch.equal(phase1["prompt_tokens"], phase2["prompt_tokens"])
    assert not torch.equal(phase1["regressor.6.weight"], phase2["regressor.6.weight"])
    report = json.loads(Path(f"{tmp_path / 'p2.pth'}.json").read_text())
    assert report["held_out"] == "test" and report["figures"]["num_images"] == 4
