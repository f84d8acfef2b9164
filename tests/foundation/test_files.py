"""Atomic writes: unique temporary names, nothing half-written under the final name, normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from iqa_plugins.files import atomic_path, stale_temporaries, write_bytes_atomic, write_text_atomic


def test_two_writers_of_one_target_get_their_own_temporary_files(tmp_path):
    target = tmp_path / "sub" / "scores.csv"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == target.parent
        first.write_text("first")
        second.write_text("second")
        assert stale_temporaries(target.parent) == sorted([first, second])
    assert target.read_text() == "first"  # the outer block ends last and wins
    assert stale_temporaries(target.parent) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "meta.json", "old")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path):
    umask = os.umask(0o027)
    try:
        path = write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
