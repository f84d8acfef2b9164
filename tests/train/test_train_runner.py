"""Training through pyiqa's framework on CPU: learning, resume, splits table, checkpoints, DDP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_setup import tiny_options

from iqa_plugins.train.options import finalize_options
from iqa_plugins.train.progress import TrainingProgress
from iqa_plugins.train.runner import make_random_splits, run_training, train_splits


def _dataset_loss(net, images: Path, meta: Path) -> float:
    import csv

    from iqa_plugins.io import read_image

    with meta.open() as handle:
        rows = list(csv.DictReader(handle))
    x = torch.stack([torch.from_numpy(read_image(images / r["dist_name"]).copy()).permute(2, 0, 1) for r in rows])
    y = torch.tensor([[float(r["mos"])] for r in rows])
    with torch.no_grad():
        return float(torch.nn.functional.smooth_l1_loss(net(x), y))


def test_training_changes_weights_and_lowers_loss(tiny_set, tmp_path):
    images, meta = tiny_set
    opt = finalize_options(tiny_options(images, meta, epochs=6), tmp_path)
    from pyiqa.archs import build_network

    torch.manual_seed(opt["manual_seed"])
    start = build_network(dict(opt["network"]))
    before = _dataset_loss(start, images, meta)
    result = run_training(opt, log_level=logging.WARNING)
    net = result.model.get_bare_model(result.model.net)
    after = _dataset_loss(net, images, meta)
    assert after < 0.75 * before, (before, after)
    saved = torch.load(result.checkpoint, weights_only=True)["params"]  # pyiqa's format
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    assert not torch.equal(saved["conv.weight"], start.state_dict()["conv.weight"])
    assert result.iterations == 6 * 3 and "Tiny" in result.final_metrics


def test_time_budget_stops_training_and_records_the_steps_reached(tiny_set, tmp_path):
    images, meta = tiny_set
    opt = tiny_options(images, meta, epochs=6)
    progress = TrainingProgress("tiny", enabled=False, stop_when=lambda p: p.elapsed >= 0)  # spent at once
    result = run_training(finalize_options(opt, tmp_path), log_level=logging.WARNING, progress=progress)
    assert result.iterations == 1 and progress.steps == 1 and result.checkpoint.is_file()


def test_training_steps_score_crops_as_given_and_validation_uses_the_protocol(tiny_set, tmp_path):
    from tiny_setup import TinyProtocolIQA

    images, meta = tiny_set
    opt = tiny_options(images, meta, epochs=1)  # 3 steps of 4 images, then 12 validation images
    opt["network"]["type"] = "TinyProtocolIQA"
    TinyProtocolIQA.calls.clear()
    run_training(finalize_options(opt, tmp_path), log_level=logging.WARNING)
    assert TinyProtocolIQA.calls == [True] * 3 + [False] * 12


def test_the_schedule_counts_epochs_in_the_loaders_iterations(tiny_set, tmp_path):
    images, meta = tiny_set
    opt = tiny_options(images, meta, epochs=4, batch=2, val=False)  # 6 iterations per epoch
    opt["train"]["scheduler"].update(warmup_epochs=1, decay_epochs=2)
    result = run_training(finalize_options(opt, tmp_path), log_level=logging.WARNING)
    schedule = result.model.schedulers[0]
    assert result.iterations == 24 and result.model.iters_per_epoch() == 6
    assert (schedule.warmup_iters, schedule.step_iters) == (6, 12)
    assert "iters_per_epoch" not in result.model.opt["train"]  # passed to the model, not through its options


def test_the_schedule_drops_on_wall_time_with_decay_seconds(tiny_set, tmp_path):
    images, meta = tiny_set
    opt = tiny_options(images, meta, epochs=2, batch=2, val=False)
    opt["train"]["scheduler"].pop("decay_epochs")
    opt["train"]["scheduler"].update(warmup_epochs=0, decay_seconds=3600.0)
    result = run_training(finalize_options(opt, tmp_path), log_level=logging.WARNING)
    schedule = result.model.schedulers[0]
    assert (schedule.step_seconds, schedule.step_iters) == (3600.0, None)
    peak = result.model.opt["train"]["optim"]["lr"]
    assert result.model.optimizer.param_groups[0]["lr"] == pytest.approx(peak)  # an hour has not passed
    opt["train"]["scheduler"]["decay_epochs"] = 1
    with pytest.raises(ValueError, match="exactly one of .*decay_epochs and decay_seconds"):
        run_training(finalize_options(opt, tmp_path / "both"), log_level=logging.WARNING)


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tiny_set, tmp_path):
    images, meta = tiny_set
    base = tiny_options(images, meta, epochs=2, val=False)  # 3 iterations per epoch
    base["logger"]["save_checkpoint_freq"] = 4  # a state in the middle of epoch 1
    straight = run_training(finalize_options(base, tmp_path / "a"), log_level=logging.WARNING)
    expected = {k: v.clone() for k, v in straight.model.get_bare_model(straight.model.net).state_dict().items()}
    state = tmp_path / "a" / "experiments" / "tiny" / "training_states" / "4.state"
    assert state.is_file()

    # Resume from iteration 4 with different initial weights: the state and net_4.pth must be what counts.
    resumed_opt = finalize_options({**base, "manual_seed": 99, "auto_resume": True}, tmp_path / "a")
    resumed = run_training(resumed_opt, log_level=logging.WARNING)
    assert resumed.iterations == 6
    got = resumed.model.get_bare_model(resumed.model.net).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
    lr_straight = straight.model.get_current_learning_rate()
    assert resumed.model.get_current_learning_rate() == pytest.approx(lr_straight)


def test_random_splits_table_reports_medians_of_all_runs(tiny_set, tmp_path):
    images, meta = tiny_set
    opt = finalize_options(tiny_options(images, meta, epochs=1, batch=3), tmp_path)
    table = train_splits(opt, num_splits=3, train_ratio=0.75, seed=5, log_level=logging.WARNING)
    rows = table["splits"]
    assert [r["split"] for r in rows] == [1, 2, 3]
    assert all(r["train_rows"] == 9 and r["val_rows"] == 3 for r in rows)
    stored = json.loads((tmp_path / "experiments" / "tiny" / "results.json").read_text())
    srcc = sorted(r["srcc"] for r in rows)
    assert stored["summary"]["Tiny"]["srcc"]["median"] == pytest.approx(srcc[1])
    assert len(stored["splits"]) == 3
    csv_text = (tmp_path / "experiments" / "tiny" / "results.csv").read_text()
    assert csv_text.count("\n") == 1 + 3 + 1 and "median" in csv_text


def test_make_random_splits_partitions_rows():
    splits = make_random_splits(50, 4, 0.8, seed=1)
    for split in splits.values():
        assert len(split["train"]) == 40 and sorted(split["train"] + split["val"]) == list(range(50))
    assert splits[1]["val"] != splits[2]["val"]
    with pytest.raises(ValueError, match="train_ratio"):
        make_random_splits(10, 1, 1.5, seed=0)


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_in_step(tiny_set, tmp_path):
    images, meta = tiny_set
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), "tiny", str(images), str(meta), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    start = torch.load(tmp_path / "start_rank0.pt", weights_only=True)
    rank0 = torch.load(tmp_path / "final_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "final_rank1.pt", weights_only=True)
    info = json.loads((tmp_path / "info_rank1.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["iterations"] == 4
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not torch.equal(rank0[k], start[k]) for k in rank0)
