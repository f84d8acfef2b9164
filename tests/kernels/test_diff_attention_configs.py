"""Tile selection, shared-memory model, FLOP model and compile-check helpers of the diff-attention kernels.

No GPU and no compile: what the autotuner may pick on sm_80/sm_90 is decided on the CPU from the targets'
shared memory, so it is tested here; `make compile-check` compiles those picks for the real targets.
"""

from __future__ import annotations

import pytest
import torch

from iqa_plugins.kernels.diff_attention import compile_check, flops
from iqa_plugins.kernels.diff_attention import triton_kernels as tk

SM80, SM90 = tk.SMEM_LIMITS[(8, 0)], tk.SMEM_LIMITS[(9, 0)]


def _args(M: int, N: int, D: int, DV: int) -> dict[str, int]:
    return {"M": M, "N": N, "D": D, "DV": DV}


@pytest.mark.parametrize("kernel, table", [("fwd", tk.FWD_CONFIGS), ("bwd_kv", tk.BWD_CONFIGS), ("bwd_q", tk.BWD_CONFIGS)])
@pytest.mark.parametrize("d", [64, 384, 512])
@pytest.mark.parametrize("elem", [2, 4])
@pytest.mark.parametrize("limit", [SM80, SM90])
def test_selected_configs_fit_the_modelled_shared_memory(kernel, table, d, elem, limit):
    chosen = tk.select_configs(kernel, table, _args(577, 577, d, d), elem, limit)
    assert 1 <= len(chosen) <= tk.MAX_CANDIDATES
    for c in chosen:
        assert tk.smem_bytes(kernel, {**c.kwargs, "num_stages": c.num_stages}, d, d, elem) <= limit
        assert all(v <= max(16, 1 << (max(577, d) - 1).bit_length()) for v in c.kwargs.values())
    keys = [(tuple(c.kwargs.items()), c.num_warps, c.num_stages) for c in chosen]
    assert len(set(keys)) == len(keys)


def test_no_config_left_is_a_clear_error():
    with pytest.raises(tk.NoConfigFits, match=r"no bwd_kv configuration fits in 50000 bytes .*d=384"):
        tk.select_configs("bwd_kv", tk.BWD_CONFIGS, _args(577, 577, 384, 384), 4, 50_000)


def test_model_grows_with_stages_tiles_and_element_size():
    base = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_D": 128, "BLOCK_DV": 128, "num_stages": 2}
    for kernel in ("fwd", "bwd_kv", "bwd_q"):
        b = tk.smem_bytes(kernel, base, 384, 384, 2)
        assert tk.smem_bytes(kernel, {**base, "num_stages": 3}, 384, 384, 2) > b
        assert tk.smem_bytes(kernel, {**base, "BLOCK_N": 64}, 384, 384, 2) > b
        assert tk.smem_bytes(kernel, base, 384, 384, 4) > b
        assert tk.smem_bytes(kernel, {**base, "num_stages": 1}, 384, 384, 2) < b


@pytest.mark.parametrize("elem", [2, 4])
@pytest.mark.parametrize("limit", [SM80, SM90])
def test_decode_heuristic_tiles_fit(elem, limit):
    cfg = tk.decode_config(384, 384, elem, limit)
    assert cfg["BLOCK_M"] == 16 and cfg["BLOCK_D"] == (64 if elem == 4 else 128)
    assert cfg["BLOCK_DV"] == (256 if elem == 4 else 512)
    assert tk.smem_bytes("fwd", cfg, 384, 384, elem) <= limit
    assert tk._SPLIT_GRAIN % cfg["BLOCK_N"] == 0  # a split never starts inside a key block


def test_decode_heuristic_prefers_wider_key_blocks_when_memory_allows():
    assert tk.decode_config(384, 384, 2, SM90)["BLOCK_N"] > tk.decode_config(384, 384, 4, SM80)["BLOCK_N"]


def test_every_case_of_the_compile_table_has_configs_on_both_targets():
    jobs, without_config, covers = compile_check.plan_jobs(list(compile_check.TARGETS), "drexperts")
    assert without_config == []
    covered = {(j.target, *c) for j in jobs for c in covers[j]}
    for target in compile_check.TARGETS:
        for case in compile_check.CASES:
            for dtype in compile_check.DTYPES:
                for direction in ("fwd", "bwd"):
                    assert (target, case, dtype, direction) in covered
    # DR.Experts' decode calls in fp32 and bf16 are assembled by ptxas (registers, spills)
    assert {(j.target, j.dtype) for j in jobs if j.ptxas} == {(t, d) for t in compile_check.TARGETS for d in ("fp32", "bf16")}


def test_alpha_of_any_strides_is_passed_without_a_copy():
    per_head = torch.rand(10)
    view = tk._alpha_bh(per_head.expand(64, 10), 64, 10, per_head.device)
    assert view.data_ptr() == per_head.data_ptr() and view.stride() == (0, 1)


@pytest.mark.parametrize("shape", [(64, 10, 577, 577, 384, 384), (64, 10, 1, 577, 384, 384), (64, 12, 197, 197, 64, 64),
                                   (8, 12, 577, 577, 32, 32), (4, 8, 256, 256, 512, 512), (4, 8, 300, 200, 128, 128)])
def test_fused_backward_executes_at_most_1_3x_two_flash_attention_2_backwards(shape):
    executed = flops.fused_backward_flops(shape)
    assert flops.useful_flops(shape)[1] <= executed <= 1.3 * flops.flash2_backward_flops(shape)


def test_i32_pointer_offsets_are_detected():
    ttir = "\n".join([
        "%5 = tt.addptr %arg0, %4 : !tt.ptr<f32>, i64 loc(#loc3)",
        "%9 = tt.addptr %8, %7 : tensor<16x64x!tt.ptr<bf16>>, tensor<16x64xi64> loc(#loc9)",
        "%12 = tt.addptr %11, %10 : tensor<16x!tt.ptr<f32>>, tensor<16xi32> loc(#loc12)",
        "%13 = arith.muli %1, %2 : i32 loc(#loc1)",
    ])
    assert compile_check._i32_addptrs(ttir) == 1


def test_compile_problems_name_each_limit():
    ok = {"ok": True, "smem": 1000, "smem_limit": 2000, "i32_addptr": 0, "local": 0}
    assert compile_check.problems(ok) == []
    bad = {**ok, "smem": 3000, "local": 8, "i32_addptr": 2}
    text = "; ".join(compile_check.problems(bad))
    assert "shared memory 3000 B > 2000 B" in text and "spills" in text and "32-bit" in text
    assert compile_check.problems({"ok": False, "error": "CompilationError: x"}) == ["CompilationError: x"]
