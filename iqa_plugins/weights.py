"""Finding, downloading, verifying and safely loading model checkpoints.

Resolution order for a model's weights:
1. an explicit path given by the caller (always works offline); a bare file name that is not in the current
   folder is looked up in the cache too;
2. the file in pyiqa's cache directory (``torch.hub.get_dir()/pyiqa``, honours ``TORCH_HOME``);
3. a download from the spec's URL, verified against its SHA-256 before it is moved into place.

Checkpoints are loaded with ``weights_only=True``: a checkpoint is untrusted input, and pickle would
otherwise run arbitrary code. When nothing can be found, :class:`WeightsNotFoundError` says which file
was expected, where it was looked for and how to produce it — the caller never silently gets random
weights (``pretrained=False`` asks for those explicitly).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iqa_plugins.files import atomic_path

__all__ = [
    "WeightsSpec",
    "WeightsNotFoundError",
    "ChecksumError",
    "cache_dir",
    "resolve_weights",
    "load_checkpoint",
    "save_checkpoint",
    "sha256sum",
]


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's default checkpoint lives and how to get it."""

    filename: str
    """File name inside the cache directory."""
    url: str | None = None
    """Download address, or None when no weights have been published."""
    sha256: str | None = None
    """Expected SHA-256 of the file at ``url``; required for a download."""
    how_to_make: str = ""
    """Shown when the file is missing: the command that produces it."""


class WeightsNotFoundError(FileNotFoundError):
    """No checkpoint could be found or downloaded."""


class ChecksumError(RuntimeError):
    """A downloaded file does not match its expected SHA-256."""


def cache_dir() -> Path:
    """pyiqa's weight cache (``torch.hub.get_dir()/pyiqa``), shared with pyiqa's own metrics."""
    import torch

    return Path(torch.hub.get_dir()) / "pyiqa"


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str) -> None:
    """Download to a temporary file beside ``target``, verify, then rename atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                out.write(block)
        got = sha256sum(tmp)
        if got != sha256.lower():
            raise ChecksumError(
                f"Checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                f"the file was discarded and {target} left untouched."
            )


def resolve_weights(
    spec: WeightsSpec,
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> Path:
    """Return the checkpoint file for ``spec``: ``path`` if given, else the cache, else a download.

    Raises:
        FileNotFoundError: ``path`` was given and does not exist.
        WeightsNotFoundError: nothing in the cache and nothing (verifiably) downloadable.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if explicit.is_dir():
            raise FileNotFoundError(f"pretrained_model_path={str(path)!r} is a folder, not a checkpoint file.")
        if explicit.is_file():
            return explicit
        if explicit.name == str(path):  # a bare file name: also look in the cache, where downloads go
            cached = cache_dir() / explicit.name
            if cached.is_file():
                return cached
            raise FileNotFoundError(f"pretrained_model_path={str(path)!r}: no such file in the current folder "
                                    f"({Path.cwd()}) nor in the pyiqa cache ({cache_dir()}; set TORCH_HOME to move it).")
        raise FileNotFoundError(f"pretrained_model_path={str(path)!r}: no such file (looked only at that path).")

    cached = cache_dir() / spec.filename
    if cached.is_file():
        return cached

    reasons = []
    if spec.url is None:
        reasons.append("no download address is known for these weights (none have been published)")
    elif spec.sha256 is None:
        reasons.append(f"{spec.url} has no known SHA-256, so it would not be verifiable")
    elif not download:
        reasons.append("downloading was disabled")
    else:
        try:
            _download(spec.url, cached, spec.sha256)
            return cached
        except ChecksumError:
            raise
        except OSError as error:  # URLError is an OSError: offline, DNS, HTTP errors
            reasons.append(f"downloading {spec.url} failed: {error}")

    message = (
        f"Weights file {spec.filename!r} not found. Looked in the pyiqa cache: {cached} "
        f"(set TORCH_HOME to move it); {'; '.join(reasons)}. "
        "Pass pretrained_model_path=PATH to use a checkpoint you have"
    )
    if spec.how_to_make:
        message += f", or produce one with: {spec.how_to_make}"
    raise WeightsNotFoundError(message + ". Use pretrained=False for random weights on purpose.")


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint on the CPU without executing pickled code (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types; name the file in all of them
        raise RuntimeError(
            f"Could not load checkpoint {str(path)!r} safely (weights_only=True): {error}"
        ) from error


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Save atomically: a crash mid-write never leaves a truncated checkpoint under ``path``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
