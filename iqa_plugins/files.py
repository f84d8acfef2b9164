"""Atomic file writes: a reader, or a run killed mid-write, never sees a truncated file under the final name.

Each write goes to a uniquely named temporary file in the target's folder (same file system, so the final
``os.replace`` is atomic; unique, so two processes writing the same target never share a temporary file).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _normal_permissions(path: Path) -> None:
    """Give a temporary file (mkstemp makes them 0600) the mode a plain ``open`` would: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; when the block ends normally it becomes ``path``.

    When the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _normal_permissions(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that an interrupted :func:`atomic_path` left in ``folder``."""
    return sorted(Path(folder).glob(".*.part"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))
