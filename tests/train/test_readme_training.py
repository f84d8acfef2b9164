"""Every command of the README's training section, as printed, on tiny data.

Placeholders (DATA, PRISTINE_DIR, GEN_DIR, TID_DIR) become tiny data sets in the data sets' own layouts, and
options appended at the end shrink what the README runs at full size (model sizes, epochs, splits, workers):
every option the README prints is kept, so a command that misses a required one fails here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iqa_plugins.cli import main as cli_main

README = Path(__file__).resolve().parents[2] / "README.md"
SMALL_DREXPERTS = [
    "--set", "network.config={base: small, img_size: 32}", "--set", "network.num_crops=2",
    "--set", "datasets.train.augment.random_crop=32", "--set", "datasets.train.batch_size_per_gpu=4",
    "--set", "datasets.train.dataset_enlarge_ratio=1", "--set", "train.total_epoch=1",
    "--set", "datasets.train.num_worker_per_gpu=0", "--set", "datasets.val.num_worker_per_gpu=0",
    "--device", "cpu",
]
SMALL_EXIQA = ["--config", "small", "--clip-weights", "random", "--epochs", "1", "--batch-size", "4"]


def readme_training_commands() -> list[str]:
    section = README.read_text().split("\n## Training\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _images(folder: Path, n: int, size=(48, 40)) -> list[str]:
    rng = np.random.default_rng(n)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(n):
        level = (k + 0.5) / n
        img = np.clip(level + 0.15 * rng.standard_normal((size[1], size[0], 3)), 0, 1)
        names.append(f"{k:03d}.jpg")
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / names[-1])
    return names


def _meta(path: Path, names: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_name", "MOS"])
        writer.writerows((name, 10 * (k + 1) / len(names)) for k, name in enumerate(names))


def _tid2013(root: Path) -> None:
    rng = np.random.default_rng(3)
    lines = []
    for ref in range(1, 6):
        for dist, level in ((1, 2), (8, 4), (17, 5)):
            name = f"i{ref:02d}_{dist:02d}_{level}.bmp"
            path = root / "distorted_images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
            lines.append(f"{rng.uniform(0, 9):.5f} {name}")
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    data = root / "DATA"
    _meta(data / "meta_info_KonIQ10kDataset.csv", _images(data / "koniq10k" / "1024x768", 12))
    _meta(data / "meta_info_LIVEChallengeDataset.csv", _images(data / "LIVEC" / "Images", 17))  # pyiqa drops 7
    _tid2013(data / "tid2013")
    from iqa_plugins.train.demo import collect_photos

    photos = collect_photos(root / "photos_all", size=(96, 80))
    pristine = root / "PRISTINE_DIR"
    pristine.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        (pristine / photos[name].name).write_bytes(photos[name].read_bytes())
    return root


def _shrunk(command: str) -> list[str]:
    argv = shlex.split(command)
    if "drexperts" in argv:
        extra = SMALL_DREXPERTS + (["--splits", "2"] if "--splits" in argv else ["--splits", "1"])
        if "livec" in argv:  # its recipe enlarges photos under 384 px to 384 before cropping
            extra += ["--set", "datasets.train.augment.adaptive_resize=32"]
        return argv + extra
    if "generate" in argv:
        return argv + ["--variants", "3", "--max-distortions", "2", "--no-progress"]
    if "exiqa" in argv and "--phase" in argv:
        return argv + (SMALL_EXIQA if "--init" not in argv else ["--epochs", "2", "--batch-size", "4"])
    return argv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_every_readme_training_command_runs(places, capfd, monkeypatch):
    commands = readme_training_commands()
    assert len(commands) == 9 and commands[0] == "iqa-plugins train --list"
    monkeypatch.chdir(places)
    outputs, errors = {}, {}
    for command in commands:
        argv = _shrunk(command)
        if argv[0] == "torchrun":
            torchrun = Path(sys.executable).with_name("torchrun")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                   "PET_MASTER_PORT": str(_free_port()),
                   "PATH": os.pathsep.join([str(torchrun.parent), os.environ.get("PATH", "")])}
            done = subprocess.run([str(torchrun), *argv[1:]], capture_output=True, text=True, env=env, timeout=600)
            assert done.returncode == 0, (command, done.stderr[-3000:])
            outputs[command] = done.stdout
            continue
        assert argv[0] == "iqa-plugins", command
        code = cli_main(argv[1:])
        captured = capfd.readouterr()
        assert code == 0, (command, captured.err[-3000:])
        outputs[command] = captured.out
        errors[command] = captured.err

    listing = outputs[commands[0]]
    assert "drexperts recipes (--dataset): bid, flive, koniq10k, livec, spaq" in listing
    assert "exiqa-set:" in listing and "tid2013:" in listing
    koniq = outputs[commands[1]]
    assert re.search(r"^split 1/2: drexperts_koniq10k_split01: \d+ steps", koniq, re.M)
    assert "Network:" not in koniq + errors[commands[1]]  # the network printout is --verbose only
    assert "epoch 1/1" in errors[commands[1]] and "loss=" in errors[commands[1]]  # the progress bars
    weights = Path(re.search(r"^weights: (.+)$", koniq, re.M)[1])
    assert weights.name == "drexperts.pth" and weights.is_file()
    livec = outputs[commands[2]]
    assert "weights: " in livec and "LIVEC SRCC" in livec
    for name in ("p1.pth", "exiqa.pth", "tid_p1.pth", "tid.pth"):
        assert (places / name).is_file(), name
    tid_report = json.loads((places / "tid.pth.json").read_text())
    assert tid_report["held_out"] == "test" and tid_report["figures"]["num_images"] == 3
    from iqa_plugins.weights import load_checkpoint

    tid = load_checkpoint(places / "tid_p1.pth")
    assert len(tid["attributes"]["distortions"]) == 24  # the preset's own attribute set
    full = load_checkpoint(places / "p1.pth")
    assert full["config"]["num_prompts"] == 0 and "clip_state_dict" in full  # the whole CLIP was fine-tuned
