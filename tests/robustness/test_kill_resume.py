"""A real ``iqa-plugins score`` process interrupted (Ctrl-C to its process group), resumed and killed
(SIGKILL) mid-run, then resumed to the end: rows written before survive, every image ends up exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from robust_helpers import CHEAP, rows_of, save_random_png

from iqa_plugins.scoring_output import normalise_path

pytestmark = pytest.mark.slow

N_IMAGES = 60
SCRIPT = str(Path(sys.executable).parent / "iqa-plugins")


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    paths = [save_random_png(folder / f"{i:03d}.png", size=(64, 80), seed=i) for i in range(N_IMAGES)]
    return folder, sorted(normalise_path(p) for p in paths)


def _complete_rows(out: Path) -> int:
    if not out.exists():
        return 0
    return max(0, out.read_bytes().count(b"\n") - 1)  # minus the header / metadata line


def _interrupt(command: list[str], out: Path, env: dict, how: str) -> tuple[int, str]:
    """Start ``command``, wait until it has written 3 more rows, send ``how`` to its process group (as
    Ctrl-C in a terminal does, decoding workers included); returns (exit status, stderr)."""
    start = _complete_rows(out)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 240
    while _complete_rows(out) < start + 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, getattr(signal, how))
    _, stderr = process.communicate(timeout=120)
    assert start + 3 <= _complete_rows(out) < N_IMAGES, "the run was not interrupted mid-way"
    return process.returncode, stderr


@pytest.mark.parametrize("fmt, workers", [("csv", "0"), ("jsonl", "1")])
def test_interrupted_then_killed_run_resumes_to_every_image_once(many_images, tmp_path, fmt, workers):
    folder, paths = many_images
    out = tmp_path / f"scores.{fmt}"
    command = [SCRIPT, "score", str(folder), "--metric", CHEAP, "--batch-size", "1", "--workers", workers,
               "-q", "--device", "cpu", "-o", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    code, stderr = _interrupt(command, out, env, "SIGINT")
    assert code == 130, stderr
    assert "iqa-plugins score: interrupted" in stderr and "Traceback" not in stderr
    kept = rows_of(out)  # Ctrl-C lets the row being written finish: the file parses as it is
    assert len({r["path"] for r in kept}) == len(kept)

    code, _ = _interrupt([*command, "--resume"], out, env, "SIGKILL")
    assert code == -signal.SIGKILL

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    rows = rows_of(out)  # strict: every line parses
    assert sorted(r["path"] for r in rows) == paths  # each image exactly once
    assert all(isinstance(r[CHEAP], float) for r in rows)
    assert [r[CHEAP] for r in rows[: len(kept)]] == [r[CHEAP] for r in kept]  # rows before the kill unchanged
