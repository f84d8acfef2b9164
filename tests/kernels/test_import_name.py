"""kernels/ is importable only as iqa_plugins.kernels: no process the project runs sees it as `kernels`.

A top-level `kernels` would shadow the Hugging Face package of that name, which transformers imports; the
compiled scorer would then load a second time under another name and abort the process.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import PYTHON, REPO

PROBE = (
    "import importlib.util, json, sys\n"
    "spec = importlib.util.find_spec('kernels')\n"
    "import iqa_plugins.kernels as k\n"
    "print(json.dumps({'kernels': spec.origin if spec else None, 'package': k.__file__}))\n"
)


def _inside_repo(origin: str | None) -> bool:
    return origin is not None and Path(origin).resolve().is_relative_to(REPO)


def _probe(command: list[str]) -> dict:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_this_test_process_does_not_see_the_folder_as_kernels():
    assert REPO not in [Path(entry or ".").resolve() for entry in sys.path]
    spec = importlib.util.find_spec("kernels")
    assert not _inside_repo(spec.origin if spec else None)


def test_console_script_started_in_repo_root(tmp_path):
    # A console script (iqa-plugins, pytest) starts with its own folder first on sys.path, not the working one.
    script = tmp_path / "tool.py"
    script.write_text(PROBE)
    found = _probe([sys.executable, str(script)])
    assert not _inside_repo(found["kernels"])
    assert Path(found["package"]).resolve() == REPO / "kernels" / "__init__.py"


def test_suite_interpreter_command_started_in_repo_root():
    found = _probe([*PYTHON, "-c", PROBE])
    assert not _inside_repo(found["kernels"])
    assert Path(found["package"]).resolve() == REPO / "kernels" / "__init__.py"


def test_plain_python_c_in_repo_root_would_expose_the_folder():
    """The hazard the commands above avoid: without -P the working directory is searched first."""
    found = _probe([sys.executable, "-c", PROBE])
    assert _inside_repo(found["kernels"])


def test_makefile_runs_no_python_with_the_repo_root_on_its_path():
    recipes = [line.strip() for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("\t")]
    risky = [line for line in recipes if re.search(r"\$\(PY\) (-m (?!pip\b)|-c )", line)]
    assert not risky, f"Makefile recipes that put the repository root on sys.path: {risky}"
