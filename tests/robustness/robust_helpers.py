"""Helpers of the bad-input and fault battery: running commands in-process, small images, bad files
of every kind, reading outputs back strictly."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from iqa_plugins.scoring_output import read_rows

CHEAP = "piqe"  # pyiqa NR metrics that need no weights download
OTHER = "entropy"


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(argv: list[str]) -> Result:
    """``iqa-plugins ARGV`` in this process (the command's own main, argument parsing included)."""
    from iqa_plugins.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return Result(int(code), out.getvalue(), err.getvalue())


def save_random_png(path: Path, size=(32, 40), seed: int | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def bomb_png(path: Path, side: int = 50000) -> Path:
    """A valid PNG header claiming side x side pixels (a decompression bomb) with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def make_bad_file(kind: str, folder: Path) -> Path:
    """One bad input of ``kind`` in ``folder``; returns the path as the user would see it."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "not_an_image":
        (path := folder / "fake.jpg").write_text("not an image")
    elif kind == "empty_file":
        (path := folder / "empty.png").write_bytes(b"")
    elif kind == "truncated_png":
        good = save_random_png(folder / "whole.tmp.png", size=(64, 64))
        data = good.read_bytes()
        good.unlink()
        (path := folder / "truncated.png").write_bytes(data[: len(data) // 2])
    elif kind == "too_small":
        path = save_random_png(folder / "tiny.png", size=(4, 4))
    elif kind == "bomb":
        path = bomb_png(folder / "bomb.png")
    elif kind == "dangling_symlink":
        os.symlink(folder / "gone.png", path := folder / "dangling.png")
    elif kind == "symlink_loop":
        os.symlink(folder / "loop.png", path := folder / "loop.png")
    elif kind == "directory_named_png":
        (path := folder / "folder.png").mkdir()
        save_random_png(path / "inner.png")  # walked into: a good image, not a bad one
        return path / "inner.png"
    else:
        raise ValueError(kind)
    return path


BAD_KINDS = ["not_an_image", "empty_file", "truncated_png", "too_small", "bomb", "dangling_symlink", "symlink_loop"]


def rows_of(output: Path) -> list[dict]:
    """Every row of a score file; fails the test if the file is not wholly parseable."""
    _, rows = read_rows(output)
    return rows


def error_lines(output: Path) -> list[dict]:
    path = Path(f"{output}.errors.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
