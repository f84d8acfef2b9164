"""`make gpu-check`'s target verdicts read the benchmarks' own JSON files: checked on files in the benchmarks'
formats (a renamed key or case would silently leave a target unmeasured on the GPU machine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCH))


def _diff_record(case: str, impl: str, dtype: str, median_ms: float, gbps: float) -> dict:
    return {"case": case, "impl": impl, "dtype": dtype, "mode": "fwd", "median_ms": median_ms, "GBps": gbps}


def test_targets_are_read_from_benchmark_files(gpu_check, tmp_path: Path) -> None:
    (tmp_path / "diff_attention.json").write_text(json.dumps({
        "floors": {"bandwidth_GBps": 4000.0},
        "records": [
            _diff_record("vit_n197_d64", "fused", "bfloat16", 2.0, 900.0),
            _diff_record("vit_n197_d64", "two_sdpa", "bfloat16", 3.4, 500.0),
            _diff_record("drexperts_m1_n577_d384", "fused", "float32", 0.5, 3000.0),
            _diff_record("drexperts_m1_n577_d384", "fused", "bfloat16", 0.3, 2600.0),
        ],
    }))
    (tmp_path / "drexperts.json").write_text(json.dumps({"fast_vs_literal": {
        "float32/batch64": {"speedup": 4.0}, "bfloat16/batch64": {"speedup": 2.5}, "float32/batch1": {"speedup": 9.0},
    }}))
    result = gpu_check.evaluate_targets(tmp_path)
    measured, met = result["measured"], result["met"]
    assert measured["fused_vs_two_sdpa_n197_d64_bf16"] == pytest.approx(1.7) and met["fused_vs_two_sdpa_n197_d64_bf16"]
    assert measured["m1_n577_d384_bandwidth_fraction"] == pytest.approx(0.65)  # the worse dtype decides
    assert met["m1_n577_d384_bandwidth_fraction"] is False
    assert measured["drexperts_fast_vs_literal_batch64"] == pytest.approx(2.5)  # batch 1 is not the target
    assert measured["drexperts_host_work_ratio_batch1"] is None and met["drexperts_host_work_ratio_batch1"] is None

    (tmp_path / "drexperts_host.json").write_text(json.dumps({"results": {
        "batch1": {"ratio_per_expert_over_heads_median": 6.0, "attention/ratio_per_expert_over_heads_median": 8.0},
        "batch64": {"ratio_per_expert_over_heads_median": 2.0},
    }}))
    (tmp_path / "scoring.json").write_text(json.dumps({
        "summary": {"command_loop_over_bare_loop_torch_defaults": 0.93, "command_loop_over_bare_loop_policy": 0.5},
        "results": {"loop/command": {"images_per_s": 930.0}, "bare_loop/torch_defaults": {"images_per_s": 1000.0}},
    }))
    result = gpu_check.evaluate_targets(tmp_path)
    assert result["measured"]["scoring_command_loop_over_bare_loop"] == 0.93  # against torch's defaults
    assert result["met"]["scoring_command_loop_over_bare_loop"]
    assert result["details"]["scoring_images_per_s"]["loop/command"] == 930.0
    assert result["measured"]["drexperts_host_work_ratio_batch1"] == 6.0
    assert result["met"]["drexperts_host_work_ratio_batch1"]
    assert result["details"]["drexperts_host"]["batch1"]["attention/ratio_per_expert_over_heads_median"] == 8.0

