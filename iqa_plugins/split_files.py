"""Reading train/val/test split files (pyiqa's pickle format) without running code from them.

A split file is ``{split_index: {"train": [row, ...], "val": [...], "test": [...]}}`` pickled. It comes
with a data folder, so it is untrusted: plain ``pickle.load`` would run whatever a ``__reduce__`` in it
says. :func:`load_splits` unpickles with an allow-list of no classes at all (dicts, lists, tuples,
strings and numbers need none), plus numpy's scalar type that some split files hold row numbers in,
then checks the structure. Files the project hands to pyiqa (which loads them with plain pickle) are
checked with it first.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from iqa_plugins.files import write_bytes_atomic

__all__ = ["SPLIT_FILE", "SplitFileError", "folder_split_rows", "load_splits", "save_splits", "split_rows"]

SPLIT_FILE = "split.pkl"
"""The split file's name inside a data folder (the generator's and ``prepare``'s output)."""

# (module, name) pairs a split file may reference: numpy integer scalars and their dtype, nothing else.
_ALLOWED = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
}


class SplitFileError(ValueError):
    """A split file is unsafe, unreadable or not in the split format."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}, and split files may hold only "
                                     "dicts, lists and numbers")


def load_splits(path: str | os.PathLike) -> dict[Any, dict[str, list[int]]]:
    """The splits in ``path``, as ``{index: {phase: [row numbers]}}``; never runs code from the file.

    Raises:
        FileNotFoundError: no such file.
        SplitFileError: the file references any class or function, is not a pickle, or has another shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} does not exist")
    try:
        data = _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as error:
        raise SplitFileError(f"split file {str(path)!r} refused: {error}") from None
    if not isinstance(data, dict) or not data:
        raise SplitFileError(f"split file {str(path)!r}: expected {{split index: {{phase: rows}}}}, "
                             f"got {type(data).__name__}")
    splits: dict[Any, dict[str, list[int]]] = {}
    for index, phases in data.items():
        if not isinstance(phases, dict):
            raise SplitFileError(f"split file {str(path)!r}: split {index!r} is not a {{phase: rows}} dict")
        splits[index] = {}
        for phase, rows in phases.items():
            try:
                splits[index][str(phase)] = [_row(r) for r in rows]
            except (TypeError, ValueError):
                raise SplitFileError(f"split file {str(path)!r}: split {index!r} phase {phase!r} is not a list "
                                     "of row numbers") from None
    return splits


def _row(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(value)
    return int(value)


def split_rows(path: str | os.PathLike, split_index: Any, phase: str) -> list[int]:
    """Row numbers of one phase of one split, with an error naming what is missing."""
    splits = load_splits(path)
    if split_index not in splits:
        raise SplitFileError(f"split file {str(path)!r} has no split {split_index!r} (it has {sorted(splits)})")
    if phase not in splits[split_index]:
        raise SplitFileError(f"split file {str(path)!r}: split {split_index!r} has no phase {phase!r}")
    return splits[split_index][phase]


def folder_split_rows(folder: str | os.PathLike, split_index: Any, phase: str) -> list[int] | None:
    """Row numbers of one phase of one split of ``folder``'s split file; None when the folder has none."""
    path = Path(folder) / SPLIT_FILE
    return split_rows(path, split_index, phase) if path.is_file() else None


def save_splits(path: str | os.PathLike, splits: dict[int, dict[str, list[int]]]) -> Path:
    """Write ``splits`` in pyiqa's split format (a protocol-4 pickle of plain dicts and lists), atomically."""
    return write_bytes_atomic(path, pickle.dumps(splits, protocol=4))
