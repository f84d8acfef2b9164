"""`iqa-plugins train` (DR.Experts small through pyiqa, ExIQA phases) and `iqa-plugins demo --tiny`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from tiny_setup import small_drexperts_options

from iqa_plugins.train import cli as train_cli
from iqa_plugins.train import demo


@pytest.mark.slow
def test_train_command_drexperts_small_installs_loadable_weights(tiny_set, tmp_path, python_cmd):
    images, meta = tiny_set
    options = tmp_path / "small.yml"
    options.write_text(yaml.safe_dump(small_drexperts_options(images, meta)))
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")}
    done = subprocess.run(
        [*python_cmd, "-m", "iqa_plugins", "train", "drexperts", "--opt", str(options), "--device", "cpu",
         "--root", str(tmp_path), "--set", "train.total_epoch=2", "--install-to-cache", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cached = tmp_path / "torch_home" / "hub" / "pyiqa" / "DRExperts_koniq10k.pth"
    assert cached.is_file() and "installed to the cache" in done.stdout
    compact = tmp_path / "experiments" / "demo_drexperts" / "drexperts.pth"
    pyiqa_format = compact.parent / "models" / "pyiqa_params_final.pth"
    assert f"weights: {compact}" in done.stdout
    assert not list(compact.parent.rglob("net_best.pth"))
    umask = os.umask(0)
    os.umask(umask)
    assert compact.stat().st_mode & 0o777 == 0o666 & ~umask

    import pyiqa

    x = torch.rand(2, 3, 40, 48)
    by_path = pyiqa.create_metric("drexperts", device="cpu", pretrained_model_path=str(compact))
    by_params = pyiqa.create_metric("drexperts", device="cpu", pretrained_model_path=str(pyiqa_format),
                                    config=by_path.net.arch_config, num_crops=2)
    assert by_path.net.num_crops == 2  # the test protocol travelled with the compact checkpoint
    torch.testing.assert_close(by_path(x), by_params(x))
    trained = torch.load(pyiqa_format, weights_only=True)["params"]
    assert torch.equal(by_path.net.score.weight, trained["score.weight"])
    # pyiqa's format carries no config: loading it as the default (paper) model says how, briefly.
    from iqa_plugins.archs.drexperts_arch import CheckpointKeyError

    with pytest.raises(CheckpointKeyError) as error:
        pyiqa.create_metric("drexperts", device="cpu", pretrained_model_path=str(pyiqa_format))
    assert "--metric-opt config=small" in str(error.value) and len(str(error.value)) < 1000


def test_train_command_errors_name_the_problem(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.main(parser.parse_args(["drexperts", "--dataset", "nope"])) == 2
    assert "no drexperts recipe" in capsys.readouterr().err
    code = train_cli.main(parser.parse_args(["drexperts", "--dataset", "koniq10k", "--dataroot", str(tmp_path / "x"),
                                             "--meta-info", str(tmp_path / "m.csv")]))
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_demo_seed_and_time_budget_options(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    defaults = parser.parse_args([])
    assert defaults.seed == 123 and defaults.train_seconds == demo.TRAIN_SECONDS  # the README's demo settings
    seed = parser.parse_args(["--seed", "7"]).seed
    opt = demo.drexperts_options(tmp_path, train_images=64, steps=200, batch=32, seed=seed)
    assert opt["manual_seed"] == 7 and opt["train"]["total_iter"] == 200
    # 64 images x 10 crops / 32 = 20 iterations per epoch; the rate drops after 91% of the 200 steps
    assert round(opt["train"]["scheduler"]["decay_epochs"] * 20) == 182
    timed = demo.drexperts_options(tmp_path, train_images=64, steps=200, batch=32, seconds=300.0)["train"]
    # on a time budget the rate drops after 91% of the seconds; the steps only bound the run
    assert timed["scheduler"]["decay_seconds"] == pytest.approx(273.0) and "decay_epochs" not in timed["scheduler"]
    assert opt["datasets"]["train"]["mos_range"] == demo.SCORE_RANGE
    for bad in (["--seed", "-1"], ["--seed", str(2**32)], ["--train-seconds", "0"], ["--finish-within", "-5"],
                ["--started-at", "yesterday"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert bad[0] in capsys.readouterr().err


def test_demo_step_time_leaves_out_the_first_steps():
    # first steps slow (one-time costs), then 0.4 s per step with one 0.6 s step
    stamps = [0.0, 2.5, 3.5, 3.9, 4.3, 4.9, 5.3, 5.7]
    assert demo._steady_step_seconds(stamps) == pytest.approx((5.7 - 3.5) / 5)
    assert demo._steady_step_seconds([0.0, 2.0, 2.5]) == pytest.approx(1.25)  # too few: every step counts
    assert demo.PROBE_STEPS > demo.PROBE_WARMUP_STEPS + 2  # the default probe times steady steps


def test_demo_training_budget_shrinks_to_finish_within_the_goal():
    fit = demo.fitted_training_budget
    assert fit(480, None, 10_000, 500) == 480  # no goal: the cap
    assert fit(480, 900, 300, 100) == 480  # 900 - 300 - 0.75 * 100 - 20 = 505 s left: the cap holds
    assert fit(480, 900, 400, 160) == pytest.approx(360)  # a slower machine: training shrinks
    assert fit(480, 900, 850, 100) == demo.MIN_TRAIN_SECONDS  # past saving: the floor, and a warning
    assert fit(20, 900, 850, 100) == 20  # the floor never raises the cap (--tiny)
    args = argparse.Namespace(finish_within=900.0)
    budget, said = demo._fit_budget(480.0, args, time.time() - 400, 160)
    assert budget == pytest.approx(360, abs=2) and "of --train-seconds 480" in said
    budget, said = demo._fit_budget(480.0, args, time.time() - 850, 100)
    assert budget == demo.MIN_TRAIN_SECONDS and "will run past it" in said
    assert demo._fit_budget(480.0, argparse.Namespace(finish_within=None), 0.0, 100) == (480.0, "")


def test_make_demo_counts_its_goal_from_before_setup():
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[2]
    before = time.time()
    dry = subprocess.run(["make", "-n", "demo", "VENV=/nonexistent-venv"], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    demo_line = next(line for line in lines if " demo --out demo_out" in line)
    assert lines.index(demo_line) > next(i for i, line in enumerate(lines) if "pip install" in line)  # after setup
    args = demo_line.split()
    assert args[args.index("--finish-within") + 1] == "900"
    assert before - 1 <= float(args[args.index("--started-at") + 1]) <= time.time() + 1  # taken when make started
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    parsed = parser.parse_args(args[args.index("demo") + 1:])
    assert parsed.finish_within == 900 and parsed.started_at == float(args[args.index("--started-at") + 1])


def test_demo_progress_line_shows_both_trainings():
    exiqa = {"stage": "phase 1", "step": 120, "expected": 1500, "loss": 0.1734}
    drexperts = {"step": 80, "expected": 1200, "loss": 0.0421, "done": False}
    line = demo._progress_line(61.2, 480, exiqa, drexperts)
    assert line == ("  [  61s of 480s] ExIQA phase-1 step 120 of ~1500 (loss 0.173); "
                    "DR.Experts step 80 of ~1200 (loss 0.042)")
    later = demo._progress_line(470, 480, {**exiqa, "stage": "regressor"}, {**drexperts, "done": True})
    assert "ExIQA quality regressor (after 120 phase-1 steps)" in later and "DR.Experts done (80 steps)" in later
    assert "ExIQA done" in demo._progress_line(475, 480, {**exiqa, "stage": "done"}, drexperts)


@pytest.mark.slow
def test_demo_tiny_runs_every_step(tmp_path, monkeypatch, capsys):
    """Photos -> generated + FR-labelled variants -> both models trained to a time budget -> `pyiqa` and
    `iqa-plugins score` through a demo-local cache -> held-out correlations, explanation figures and report
    pages; the user's cache stays untouched."""
    user_home = tmp_path / "user_torch_home"
    monkeypatch.setenv("TORCH_HOME", str(user_home))
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = tmp_path / "demo"
    assert demo.main(parser.parse_args(["--out", str(out), "--tiny"])) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for metric in ("drexperts", "exiqa"):
        figures = summary["models"][metric]
        assert figures["iqa_plugins_score"]["n"] == 3 and figures["pyiqa_command"]["n"] == 3
        # Both commands load the same demo weights: same ranking of the held-out images.
        assert figures["iqa_plugins_score"]["srcc"] == pytest.approx(figures["pyiqa_command"]["srcc"], abs=1e-6)
        header = (out / f"scores_{metric}.csv").read_text().splitlines()[0].split(",")
        assert header[:2] == ["path", metric] and len(header) > 2  # explanation columns
        assert summary["training"][metric]["steps"] >= 1
        assert len(list((out / "figures" / metric).glob("*.png"))) == 1  # one held-out photo in --tiny
        page = (out / f"report_{metric}.html").read_text()
        assert page.count("<tr data-name=") == 3
        assert str(out / f"report_{metric}.html") in printed
    assert summary["training"]["wall_s"] < 20 + 60  # the budget, plus model set-up and the final save
    labels = (out / "data" / "train" / "meta_info.csv").read_text().splitlines()[1:]
    values = [float(line.split(",")[1]) for line in labels]
    assert len(values) == 9 and all(0 <= v <= 1 for v in values) and len(set(values)) > 1
    assert summary["settings"]["seed"] == 123
    weights = out / "torch_home" / "hub" / "pyiqa" / "DRExperts_koniq10k.pth"
    assert weights.is_file() and f"TORCH_HOME={(out / 'torch_home').resolve()}" in printed
    from iqa_plugins.archs.drexperts_arch import DRExperts

    assert DRExperts(pretrained_model_path=weights).score_scale()["score_range"] == [0.0, 1.0]
    assert "issue" not in printed
    assert not user_home.exists()


CROPS_CONFIG = json.dumps({
    "base": "small", "image_size": 32, "input": "crops", "num_crops": 4,
    "clip_model_cfg": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}})


@pytest.mark.slow
@pytest.mark.parametrize("config", ["small", CROPS_CONFIG])
def test_train_command_exiqa_phases(tmp_path, capsys, config):
    from iqa_plugins.data.generator import generate_dataset

    photos = demo.collect_photos(tmp_path / "all", size=(96, 80))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "tid_I03"):
        (folder / photos[name].name).write_bytes(photos[name].read_bytes())
    data = tmp_path / "data"
    assert generate_dataset(folder, data, variants=3, max_distortions=2, labeller="ssim",
                            split_ratios=(0.6, 0.0, 0.4), progress=False).ok
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    phase1 = tmp_path / "phase1.pth"
    common = ["--data", str(data), "--batch-size", "4", "--epochs", "1", "--device", "cpu"]
    assert train_cli.main(parser.parse_args(
        ["exiqa", "--phase", "1", "--config", config, "--clip-weights", "random", "--out", str(phase1),
         *common])) == 0
    report1 = json.loads(Path(f"{phase1}.json").read_text())
    assert report1["held_out"] == "test" and report1["figures"]["num_images"] == 6
    phase2 = tmp_path / "phase2.pth"
    assert train_cli.main(parser.parse_args(
        ["exiqa", "--phase", "2", "--init", str(phase1), "--out", str(phase2), *common])) == 0
    assert "phase 2 on test: SRCC" in capsys.readouterr().out

    from iqa_plugins.archs.exiqa_arch import ExIQA

    first, second = ExIQA(pretrained_model_path=str(phase1)), ExIQA(pretrained_model_path=str(phase2))
    # Phase 2 trains only the regressor: the distortion part is phase 1's, the regressor changed.
    assert torch.equal(first.weight_logits, second.weight_logits)
    assert not torch.equal(first.regressor[-1].weight, second.regressor[-1].weight)
    assert second.config["input"] == ("crops" if config == CROPS_CONFIG else "resize")
