"""The recipe's pieces: schedule, parameter groups, loss, shipped recipes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from iqa_plugins.train.losses import SmoothL1Loss
from iqa_plugins.train.model import weight_decay_groups
from iqa_plugins.train.options import (
    OptionsError, apply_overrides, available_recipes, load_options, merge_options, recipe_path,
)
from iqa_plugins.train import schedule as schedule_module
from iqa_plugins.train.schedule import WarmupStepLR, cosine_warmup_schedule


def test_schedule_is_the_authors_per_iteration_schedule():
    ipe = 7  # iterations per epoch
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2e-4)
    sched = WarmupStepLR(opt, warmup_iters=3 * ipe, step_iters=3 * ipe, warmup_lr=2e-7, gamma=0.1)
    lrs = []
    for _ in range(9 * ipe):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-7)
    warm = lrs[: 3 * ipe]
    assert all(b > a for a, b in zip(warm, warm[1:]))  # strictly increasing, linear
    assert warm[-1] == pytest.approx(2e-7 + (2e-4 - 2e-7) * (3 * ipe - 1) / (3 * ipe))
    assert lrs[3 * ipe: 6 * ipe] == pytest.approx([2e-5] * 3 * ipe)
    assert lrs[6 * ipe:] == pytest.approx([2e-6] * 3 * ipe)


def test_schedule_state_round_trips():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupStepLR(opt, warmup_iters=4, step_iters=2)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = WarmupStepLR(opt2, warmup_iters=4, step_iters=2)
    sched2.load_state_dict(sched.state_dict())
    opt.step(), opt2.step()
    sched.step(), sched2.step()
    # iteration 6: past the 4 warm-up iterations, gamma ** (6 // 2)
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"] == pytest.approx(1e-3)


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_schedule_on_wall_time_drops_every_step_seconds(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(schedule_module, "time", clock)
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupStepLR(opt, warmup_iters=2, step_seconds=10.0, warmup_lr=0.0, gamma=0.1)
    lrs = []
    for seconds in (0, 1, 2, 9.9, 9.9, 10.0, 19.9, 20.0, 35.0):
        clock.now = 1000.0 + seconds
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # step 1 in the warm-up; from step 2 the rate follows the clock, whatever the step count
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.001])
    # a resumed run starts its clock again
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    clock.now = 5000.0
    resumed = WarmupStepLR(opt2, warmup_iters=2, step_seconds=10.0, warmup_lr=0.0, gamma=0.1)
    resumed.load_state_dict(sched.state_dict())
    opt2.step()
    resumed.step()
    assert resumed.started == 5000.0 and opt2.param_groups[0]["lr"] == pytest.approx(1.0)
    for bad in ({}, {"step_iters": 3, "step_seconds": 1.0}):
        with pytest.raises(ValueError, match="exactly one of step_iters"):
            WarmupStepLR(opt, warmup_iters=0, **bad)
    with pytest.raises(ValueError, match="step_seconds must be > 0"):
        WarmupStepLR(opt, warmup_iters=0, step_seconds=0.0)


def test_cosine_on_wall_time_follows_the_larger_fraction(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(schedule_module, "time", clock)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_warmup_schedule(opt, total_steps=10, warmup_steps=0, seconds=100.0)
    lrs = []
    for seconds in (50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 100.0):
        clock.now = 1000.0 + seconds
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # half the time spent: 0.5, until steps 6 and 7 pass half the steps; the budget spent: 0
    assert lrs[:5] == pytest.approx([0.5] * 5)
    assert lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6))) and lrs[6] < lrs[5]
    assert lrs[7] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        cosine_warmup_schedule(opt, total_steps=10, warmup_steps=0, seconds=-1.0)


def test_weight_decay_groups_skip_1d_biases_frozen_and_listed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.alpha = nn.Parameter(torch.tensor(0.5))
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

        def no_weight_decay(self):
            return {"pos_embed"}

    net = Net()
    decay, no_decay = weight_decay_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(net.fc.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(net.fc.bias), id(net.norm.weight), id(net.norm.bias),
                                                 id(net.alpha), id(net.pos_embed)}


def test_smooth_l1_matches_definition():
    pred, target = torch.randn(16, 1) * 3, torch.randn(16, 1) * 3
    diff = (pred - target).abs()
    expected = torch.where(diff < 0.5, 0.5 * diff**2 / 0.5, diff - 0.25).mean()
    assert SmoothL1Loss(beta=0.5)(pred, target) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("dataset", ["koniq10k", "livec", "spaq", "flive", "bid"])
def test_recipes_carry_the_authors_table(dataset):
    table = {"koniq10k": (3, 15, 156, [512, 384]), "livec": (10, 20, 64, None), "spaq": (2, 15, 96, [512, 384]),
             "flive": (2, 5, 192, [512, 384]), "bid": (10, 15, 32, [512, 512])}
    crops, test_crops, batch, resize = table[dataset]
    opt = load_options(recipe_path("drexperts", dataset))
    train = opt["datasets"]["train"]
    assert train["dataset_enlarge_ratio"] == crops and train["batch_size_per_gpu"] == batch
    assert train["augment"].get("resize") == resize and train["augment"]["random_crop"] == 384
    assert train["augment"]["hflip"] and train["augment"]["vflip"] and not train["mos_normalize"]
    assert opt["network"]["type"] == "DRExperts" and opt["network"]["num_crops"] == test_crops
    t = opt["train"]
    assert t["optim"] == {"type": "AdamW", "lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 0.05}
    assert t["total_epoch"] == 9 and t["grad_clip"] == 5.0 and t["mos_loss_opt"]["type"] == "SmoothL1Loss"
    assert t["scheduler"] == {"type": "WarmupStepLR", "warmup_epochs": 3, "warmup_lr": 2e-7, "decay_epochs": 3,
                              "gamma": 0.1}
    assert opt["random_splits"]["train_ratio"] == 0.8


def test_options_overrides_and_errors():
    assert set(available_recipes("drexperts")) == {"koniq10k", "livec", "spaq", "flive", "bid"}
    with pytest.raises(OptionsError, match="no drexperts recipe"):
        recipe_path("drexperts", "nope")
    opt = apply_overrides({"train": {"optim": {"lr": 1.0}}}, ["train.optim.lr=2e-4", "train.total_epoch=3"])
    assert opt["train"]["optim"]["lr"] == 2e-4 and opt["train"]["total_epoch"] == 3
    with pytest.raises(OptionsError, match="KEY.PATH=VALUE"):
        apply_overrides({}, ["novalue"])
    merged = merge_options({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    assert merged == {"a": {"b": 1, "c": 3}}
