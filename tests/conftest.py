"""Suite-wide helpers: running fresh interpreters and the project's commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def run_fresh(args: list[str], env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run a command in a fresh process (new interpreter: auto-registration is exercised for real)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd)


@pytest.fixture
def fresh():
    return run_fresh


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def console_script():
    """Path of an installed console script (iqa-plugins, pyiqa) next to this interpreter."""

    def find(name: str) -> str:
        path = VENV_BIN / name
        if not path.exists():
            pytest.fail(f"console script {name!r} is not installed next to {sys.executable}")
        return str(path)

    return find
