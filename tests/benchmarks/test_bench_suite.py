"""The benchmark suite (benchmarks/run.py) runs end to end in quick mode and writes valid results, and its
helpers compute what they claim. Timings are never asserted: only that they exist and are sane."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_modules():
    """benchmarks/common.py, run.py and report.py, imported the way run.py imports them (folder on sys.path)."""
    sys.path.insert(0, str(BENCH))
    try:
        import common
        import report
        import run

        yield common, run, report
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_quick")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--mode", "quick", "--out", str(out), "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return out, proc


@pytest.mark.slow
def test_quick_mode_writes_valid_results(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, f"run.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    payload = json.loads((out / "results.json").read_text())
    assert payload["schema"] == "iqa_plugins.bench/1" and payload["mode"] == "quick"
    env = payload["environment"]
    assert env["device"] and env["device_slug"] == "cpu" and env["torch"] == torch.__version__
    datetime.datetime.fromisoformat(env["date"])  # a real timestamp
    floors = payload["floors"]
    assert floors["bandwidth_GBps"] > 0 and all(v > 0 for v in floors["matmul_TFLOPs"].values())

    bench_files = sorted(p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py"))
    results = payload["results"]
    assert results, "quick mode measured nothing"
    assert {r["suite"] for r in results} <= set(bench_files)
    assert "peers" in {r["suite"] for r in results}
    for r in results:
        assert r["name"] and r["test"] and isinstance(r["params"], dict)
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["rounds"] >= 1
        assert r["items_per_s"] is None or r["items_per_s"] > 0
    peer = next(r for r in results if r["suite"] == "peers")
    assert peer["variant"] == "topiq_nr" and peer["extra"]["weights"] == "random"
    assert peer["peak_memory_bytes"] is None or peer["peak_memory_bytes"] >= 0
    # every case pytest saw is accounted for: measured, skipped with a reason, or failed
    assert all(s["reason"] for s in payload["skipped"]) and payload["failures"] == []
    assert any("quick mode" in s["reason"] for s in payload["skipped"])

    report = (out / "REPORT.md").read_text()
    assert report.startswith("# Benchmarks on ") and "| suite |" in report and "## peers" in report
    pngs = sorted(out.glob("plot_*.png"))
    assert pngs and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    for png in pngs:
        assert f"]({png.name})" in report
    # the benchmark files' own JSON went into the run's folder, not into the repository's results
    assert all(json.loads(p.read_text()) for p in (out / "suites").rglob("*.json"))


def test_normalise_and_speedups(bench_modules):
    _, run, report = bench_modules

    def entry(impl: str, n: int, median: float) -> dict:
        return {
            "name": f"test_k[{impl}-{n}]",
            "fullname": f"benchmarks/bench_kern.py::test_k[{impl}-{n}]",
            "group": None,
            "params": {"impl": impl, "batch": n},
            "extra_info": {"peak_memory_bytes": 2048},
            "stats": {"min": median / 2, "max": median * 2, "mean": median, "median": median, "iqr": 0.0, "rounds": 3},
        }

    records = [
        run.normalise_benchmark(entry(i, n, m))
        for i, n, m in [
            ("literal_reference", 4, 0.8),
            ("fast", 4, 0.2),
            ("literal_reference", 8, 1.2),
            ("fast", 8, 0.6),
        ]
    ]
    first = records[0]
    assert first["suite"] == "kern" and first["variant"] == "literal_reference" and first["test"] == "test_k"
    assert first["median_ms"] == pytest.approx(800.0) and first["items_per_s"] == pytest.approx(5.0)
    assert first["peak_memory_bytes"] == 2048
    (summary,) = report.speedups(records)
    assert (summary["variant"], summary["baseline"], summary["cases"]) == ("fast", "literal_reference", 2)
    assert (summary["min"], summary["median"], summary["max"]) == pytest.approx((2.0, 3.0, 4.0))


def test_floor_and_diff_attention_cost(bench_modules):
    common, _, report = bench_modules
    floors = {"bandwidth_GBps": 100.0, "matmul_TFLOPs": {"float32": 1.0, "bfloat16": 4.0}}
    assert common.floor_seconds(1e9, 1e9, floors) == pytest.approx(1e-2)  # memory-bound: 1 GB at 100 GB/s
    assert common.floor_seconds(1e6, 1e13, floors, "bfloat16") == pytest.approx(2.5)  # compute-bound
    bytes_moved, flops = report._diff_attention_cost({"B": 2, "H": 3, "M": 1, "N": 10, "d": 4, "dv": 4})
    assert bytes_moved == 4 * 6 * (2 * 4 + 2 * 40 + 40 + 4) and flops == 6 * (4 * 40 + 2 * 40)


def test_helpers_measure_what_they_claim(bench_modules):
    common, _, _ = bench_modules
    assert common.device_slug("cpu") == "cpu"
    stats = common.summarize_times([3.0, 1.0, 2.0])
    assert (stats["median_s"], stats["min_s"], stats["max_s"], stats["rounds"]) == (2.0, 1.0, 3.0, 3)
    big = 64 * 2**20
    peak = common.peak_memory_bytes(lambda: torch.ones(big // 4).sum(), "cpu")
    if peak is not None:  # None off Linux
        assert big * 0.9 <= peak < big * 4
    with pytest.raises(ValueError, match="reps"):
        common.time_callable(lambda: None, "cpu", reps=0)
