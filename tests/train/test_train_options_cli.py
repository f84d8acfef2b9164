"""`train --list`, ExIQA presets and defaults, Eq. 10 for any number of levels, DMOS scales, progress hook."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_plugins.train import cli as train_cli
from iqa_plugins.train import exiqa_phases
from iqa_plugins.train.exiqa_phases import _normalise_mos, distortion_accuracy
from iqa_plugins.train.exiqa_presets import PRESETS
from iqa_plugins.train.options import resize_before_crop
from iqa_plugins.train.progress import TrainingProgress


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return parser


def test_list_without_a_model_and_per_model(capsys):
    assert train_cli.main(_parser().parse_args(["--list"])) == 0
    both = capsys.readouterr().out
    assert "drexperts recipes" in both and "exiqa presets" in both
    assert train_cli.main(_parser().parse_args(["exiqa", "--list"])) == 0
    exiqa = capsys.readouterr().out
    assert "drexperts" not in exiqa and all(f"  {name}: " in exiqa for name in PRESETS)
    assert train_cli.main(_parser().parse_args([])) == 2
    assert "name the model to train" in capsys.readouterr().err


class _Stop(Exception):
    pass


@pytest.mark.parametrize("phase,extra,expected", [
    ("1", ["--preset", "exiqa-set"], {"epochs": 5, "lr": 5e-5, "mode": "full", "num_prompts": 0, "dist": 25}),
    ("1", ["--preset", "live"], {"epochs": 100, "lr": 2e-3, "mode": "prompt", "num_prompts": 15, "dist": 5}),
    ("1", [], {"epochs": 100, "lr": None, "mode": "prompt", "num_prompts": 4, "dist": 25}),
    ("2", [], {"epochs": 100}),
])
def test_presets_and_defaults_reach_the_training_functions(tmp_path, monkeypatch, phase, extra, expected):
    """The command resolves epochs, rate, mode, prompt tokens and attribute set as the paper says."""
    from iqa_plugins.archs.exiqa_arch import load_attribute_set

    seen = {}

    def capture(model, loader, epochs, lr=None, **kwargs):
        seen.update(epochs=epochs, lr=lr, mode=kwargs.get("mode"), num_prompts=model.config["num_prompts"],
                    dist=model.attribute_set.num_distortions)
        raise _Stop

    monkeypatch.setattr(exiqa_phases, f"train_phase{phase}", capture)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    attributes = load_attribute_set(PRESETS[extra[1]].attributes if extra else "kadid10k")
    (data / "strengths.csv").write_text(",".join(["image", *attributes.distortion_slugs]) + "\n"
                                        + ",".join(["a.png"] + ["0"] * attributes.num_distortions) + "\n")
    (data / "meta_info.csv").write_text("dist_name,mos\na.png,0.5\n")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(data / "images" / "a.png")  # checked, not trained on
    config = ["--config", '{"base": "small"}', "--clip-weights", "random"]
    args = ["exiqa", "--phase", phase, "--data", str(data), "--out", str(tmp_path / "o.pth"), *config, *extra]
    with pytest.raises(_Stop):
        train_cli.main(_parser().parse_args(args))
    if phase == "2":
        assert seen["epochs"] == expected["epochs"]
    else:
        assert {k: seen[k] for k in expected} == expected


def test_eq10_follows_the_number_of_levels():
    # 4 levels: strengths 0, .25, .5, .75, 1; intervals [0, .125), [.125, .375), ...
    target = torch.tensor([0.25, 0.25, 0.5, 1.0, 0.0])
    pred = torch.tensor([0.13, 0.37, 0.38, 0.88, 0.13])
    assert distortion_accuracy(pred, target, 4) == pytest.approx(4 / 5)  # only the last, 0.13 for 0, misses
    # per-distortion levels: column 0 has 5 levels, column 1 has 4
    pred2 = torch.tensor([[0.29, 0.3], [0.31, 0.2]])
    target2 = torch.tensor([[0.2, 0.25], [0.2, 0.25]])
    assert distortion_accuracy(pred2, target2, torch.tensor([5, 4])) == pytest.approx(3 / 4)


def test_dmos_scales_become_higher_is_better_targets():
    dmos = torch.tensor([0.0, 25.0, 100.0])
    assert torch.allclose(_normalise_mos(dmos, (0, 100), lower_better=True), torch.tensor([1.0, 0.75, 0.0]))
    assert torch.allclose(_normalise_mos(dmos, (0, 100)), torch.tensor([0.0, 0.25, 1.0]))


def test_resize_comes_before_the_crop_whatever_the_order_given():
    opt = {"datasets": {"train": {"augment": {"hflip": True, "random_crop": 384, "resize": [512, 384]}}}}
    assert list(resize_before_crop(opt)["datasets"]["train"]["augment"]) == ["resize", "hflip", "random_crop"]


def test_progress_records_epochs_and_its_stop_hook_ends_training():
    steps = []
    progress = TrainingProgress("t", enabled=False, stop_when=lambda p: p.steps >= 3,
                                on_step=lambda step, loss: steps.append((step, loss)))
    model = torch.nn.Linear(2, 1)
    loader = [(torch.randn(4, 2), torch.randn(4)) for _ in range(2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stopped_at = None
    for epoch in range(5):
        progress.start_epoch(epoch, 5, len(loader))
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if progress.step(loss.item(), len(x)):
                stopped_at = (epoch, progress.steps)
                break
        progress.end_epoch()
        if stopped_at:
            break
    assert stopped_at == (1, 3) and [s for s, _ in steps] == [1, 2, 3]
    assert len(progress.epoch_loss) == 2 and progress.images == 12
    assert progress.summary().startswith("t: 3 steps in ")


def test_console_shows_bars_and_summary_and_the_network_only_when_verbose(tiny_set, tmp_path, capfd):
    import yaml
    from tiny_setup import tiny_options

    images, meta = tiny_set
    options = tmp_path / "tiny.yml"
    options.write_text(yaml.safe_dump(tiny_options(images, meta, epochs=2)))
    common = ["drexperts", "--opt", str(options), "--device", "cpu", "--root", str(tmp_path)]
    assert train_cli.main(_parser().parse_args(common)) == 0
    out, err = capfd.readouterr()
    assert "Network:" not in out + err
    assert "tiny epoch 1/2" in err and "tiny epoch 2/2" in err and "loss=" in err and "img_s=" in err
    assert out.splitlines()[0].startswith("tiny: 6 steps in ") and "; Tiny SRCC " in out
    assert train_cli.main(_parser().parse_args([*common, "--verbose", "--name", "again"])) == 0
    assert "Network: TinyTrainIQA" in capfd.readouterr().err
