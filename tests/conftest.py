"""Suite-wide helpers: running fresh interpreters and the project's commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# `python -m X` and `python -c` put the working directory first on sys.path; from the repository root that
# exposes the top-level kernels/ folder as a package named `kernels`, the name of the Hugging Face package that
# transformers imports (the compiled scorer then loads twice). -P (Python 3.11+) leaves the directory out; -I
# does too on older interpreters.
PYTHON = [sys.executable, "-P" if sys.version_info >= (3, 11) else "-I"]

# `python -m pytest` from the repository root put it on this process's path before pytest started.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != REPO]


def run_fresh(args: list[str], env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run a command in a fresh process (new interpreter: auto-registration is exercised for real)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd)


@pytest.fixture
def fresh():
    return run_fresh


@pytest.fixture
def python_cmd() -> list[str]:
    """This interpreter, without the working directory on sys.path."""
    return list(PYTHON)


@pytest.fixture
def console_script():
    """Path of an installed console script (iqa-plugins, pyiqa) next to this interpreter."""

    def find(name: str) -> str:
        path = VENV_BIN / name
        if not path.exists():
            pytest.fail(f"console script {name!r} is not installed next to {sys.executable}")
        return str(path)

    return find
