"""pytest glue for the `bench_*.py` files (pytest-benchmark), used when `benchmarks/run.py` runs them.

- Fixtures `bench_mode` (`quick` | `full`, from $IQA_BENCH_MODE) and `bench_device` (from $IQA_BENCH_DEVICE, else
  CUDA when available) for benchmark files that want to size their shapes themselves.
- Quick mode (CI) trims every parametrised benchmark to its smallest case: for each test function only the
  items whose numeric parameters all sit at their minimum, and whose case-naming parameters (`case`, `shape`,
  `size`, `config`, `dtype`) have the first value listed, run; torch.compile variants and `slow`-marked items are
  skipped with a stated reason, so the whole suite runs end to end in seconds.
- When the driver gives an output folder ($IQA_BENCH_OUT), a benchmark module's own `RESULTS_DIR` is pointed
  there, so a quick CI run never overwrites the results committed under benchmarks/results/.
"""

from __future__ import annotations

from collections import defaultdict
from numbers import Number

import common
import pytest
import torch

# torch.compile variants (not "compiled_op", the project's compiled C++ op, which is cheap to run)
_COMPILE_WORDS = ("torch_compile", "torch.compile", "inductor")
# Parameters naming a whole case (a set of sizes, a dtype): quick mode keeps the first value listed (list the
# smallest, or fp32, first)
CASE_PARAMS = ("case", "shape", "shapes", "size", "config", "dtype")


@pytest.fixture(scope="session")
def bench_mode() -> str:
    return common.bench_mode()


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return common.bench_device()


def _numeric_params(item: pytest.Item) -> dict[str, float]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return {}
    return {k: v for k, v in callspec.params.items() if isinstance(v, Number) and not isinstance(v, bool)}


def _mentions_compile(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    values = callspec.params.values() if callspec is not None else ()
    return any(
        isinstance(v, str) and (v.lower() in ("compile", "compiled") or any(w in v.lower() for w in _COMPILE_WORDS))
        for v in values
    )


def _case_params(item: pytest.Item) -> dict[str, object]:
    callspec = getattr(item, "callspec", None)
    return {k: v for k, v in callspec.params.items() if k in CASE_PARAMS} if callspec is not None else {}


def _quick_skip_reason(item: pytest.Item, minima: dict[str, float], firsts: dict[str, object]) -> str | None:
    if item.get_closest_marker("slow") is not None:
        return "quick mode: marked slow"
    if _mentions_compile(item):
        return "quick mode: torch.compile takes too long for CI"
    larger = [k for k, v in _numeric_params(item).items() if v != minima[k]]
    larger += [k for k, v in _case_params(item).items() if v != firsts[k]]
    if larger:
        return f"quick mode: only the smallest case runs ({', '.join(sorted(larger))} not the first/smallest)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    out = common.results_dir()
    if out is not None:
        for item in items:
            module = getattr(item, "module", None)
            if module is not None and hasattr(module, "RESULTS_DIR"):
                module.RESULTS_DIR = out
    if common.bench_mode() != "quick":
        return
    minima: dict[tuple, dict[str, float]] = defaultdict(dict)
    firsts: dict[tuple, dict[str, object]] = defaultdict(dict)
    for item in items:
        key = (item.path, getattr(item, "originalname", item.name))
        for name, value in _numeric_params(item).items():
            minima[key][name] = min(value, minima[key].get(name, value))
        for name, value in _case_params(item).items():
            firsts[key].setdefault(name, value)
    for item in items:
        key = (item.path, getattr(item, "originalname", item.name))
        reason = _quick_skip_reason(item, minima[key], firsts[key])
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
