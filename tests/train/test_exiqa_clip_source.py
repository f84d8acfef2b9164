"""Where a new ExIQA model's CLIP comes from: OpenAI's ViT-B/32 through open_clip by default (here from a
Hugging Face cache the test fills with a checkpoint in open_clip's own format: no network), a clear error
offline, random towers only on request."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_plugins.train import cli as train_cli
from iqa_plugins.train.exiqa_datasets import prepare_dataset

HF_REPO = "timm/vit_base_patch32_clip_224.openai"  # where open_clip finds OpenAI's ViT-B-32 weights


def _fake_openai_cache(hf_home: Path) -> dict[str, torch.Tensor]:
    """Fill HF_HOME with ``open_clip_pytorch_model.bin`` of ViT-B-32-quickgelu: every key and shape of the real
    file and OpenAI's logit scale (100), with random values kept small on disk (strided views of short
    random vectors); returns the state dict."""
    import open_clip

    shapes = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device="meta").state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in shapes.items():
        base = torch.randn(sum(value.shape) + 1, generator=generator) * 0.02
        state[key] = base.as_strided(tuple(value.shape), (1,) * value.dim()) if value.dim() else base[0].clone()
    state["logit_scale"] = torch.tensor(math.log(100.0))
    repo = hf_home / "hub" / f"models--{HF_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    torch.save(state, snapshot / "open_clip_pytorch_model.bin")
    return state


def _csiq_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for ref in ("1600", "aerial_city", "boston", "bridge"):
        for kind, folder in (("AWGN", "awgn"), ("contrast", "contrast")):
            path = root / "CSIQ" / "dst_imgs" / folder / f"{ref}.{kind}.{1 + len(ref) % 4}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    prepare_dataset("csiq", root / "CSIQ", root / "data", train_ratio=0.5)
    return root / "data"


def _run(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "iqa_plugins", "train", "exiqa", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_paper_preset_trains_from_openai_weights_through_open_clip(tmp_path):
    state = _fake_openai_cache(tmp_path / "hf")
    data = _csiq_data(tmp_path)
    out = tmp_path / "p1.pth"
    done = _run(["--phase", "1", "--data", str(data), "--preset", "csiq", "--epochs", "1", "--batch-size", "4",
                 "--out", str(out), "--quiet"], tmp_path / "hf", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOM" not in done.stderr
    from iqa_plugins.archs.exiqa_arch import clip_fingerprint
    from iqa_plugins.weights import load_checkpoint

    checkpoint = load_checkpoint(out)
    # CLIP stayed OpenAI's (prompt tuning): the checkpoint names the weights instead of copying them.
    assert checkpoint["clip"]["pretrained"] == "openai" and "clip_state_dict" not in checkpoint
    assert checkpoint["clip"]["logit_scale"] == pytest.approx(100.0)
    assert checkpoint["config"]["num_prompts"] == 15 and checkpoint["config"]["clip_model"] == "ViT-B-32-quickgelu"
    assert len(checkpoint["attributes"]["distortions"]) == 6
    # The weights behind the cached text features are the cache's file (the fingerprint covers every tensor).
    assert checkpoint["clip"]["sha256"] == clip_fingerprint(SimpleNamespace(state_dict=lambda: state))


@pytest.mark.slow
def test_paper_config_offline_names_how_to_provide_the_weights(tmp_path):
    data = _csiq_data(tmp_path)
    (tmp_path / "hf").mkdir()
    done = _run(["--phase", "1", "--data", str(data), "--preset", "csiq", "--out", str(tmp_path / "p1.pth")],
                tmp_path / "hf", tmp_path)
    assert done.returncode == 2 and not (tmp_path / "p1.pth").exists()
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("iqa-plugins train: OpenAI's CLIP ViT-B-32-quickgelu weights")
    assert "--clip-weights PATH" in message and "--clip-weights random" in message and HF_REPO in message


def test_random_clip_only_on_request_and_said_loudly(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    data = _csiq_data(tmp_path)
    common = ["exiqa", "--phase", "1", "--data", str(data), "--config", "small", "--attributes", "csiq",
              "--epochs", "1", "--batch-size", "4", "--quiet"]
    assert train_cli.main(parser.parse_args([*common, "--out", str(tmp_path / "a.pth")])) == 2
    assert "--clip-weights random" in capsys.readouterr().err and not (tmp_path / "a.pth").exists()
    assert train_cli.main(parser.parse_args([*common, "--clip-weights", "random", "--out", str(tmp_path / "b.pth")])) == 0
    assert "RANDOM towers (--clip-weights random)" in capsys.readouterr().err
