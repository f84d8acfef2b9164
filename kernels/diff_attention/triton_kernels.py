"""Triton kernels of dual-softmax differential attention, O = (softmax(Q1 K1^T s) - alpha softmax(Q2 K2^T s)) V.

Design (per (batch, head) slice; shapes are arbitrary, every tile is masked):
- Forward: two online-softmax streams in base 2 with two fp32 accumulators over one shared V tile, so V is
  read once. QK^T accumulates over BLOCK_D chunks of d (head dims up to 512); the output may be split over
  BLOCK_DV chunks of dv (a grid axis). For few query rows (decode-style, M <= 16) the key axis is split over
  programs (flash-decoding), a small combine kernel merges the per-split (output, LSE) pairs, and the tile
  sizes come from a heuristic instead of autotuning (one compile per new shape key).
- Backward: recompute P1, P2 from the two saved LSEs. With dP = dO V^T (shared by both streams),
  r2 = rowsum(dO O2) and r1 = rowsum(dO O) + alpha r2: dS1 = P1 (dP - r1), dS2 = -alpha P2 (dP - r2).
  One kernel owns a key block and accumulates the whole rows of dV, dK1 and dK2 from one recomputation of
  S1, S2 and dP per query block; another owns a query block and accumulates dQ1 and dQ2 the same way.
  No atomics, so results are deterministic.
- Tile sizes are pruned by a shared-memory model (`smem_bytes`) against the device's per-block limit, so a
  launch never picks a configuration the GPU rejects. Address arithmetic is 64-bit.

`TRITON_INTERPRET=1` must be set before this module is imported (Triton reads it when decorating). Under the
interpreter every tile is upcast to fp32 before `tl.dot` (its bf16 dot is wrong) and one config is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634
# Key-axis granularity of a split in the decode forward (a multiple of every decode BLOCK_N, so no split is empty).
_SPLIT_GRAIN = 128
DECODE_MAX_M = 16

# Largest dynamic shared memory one block may opt into, per compute capability (CUDA programming guide);
# used offline and when the driver does not report it.
SMEM_LIMITS = {(8, 0): 166_912, (8, 6): 101_376, (8, 7): 166_912, (8, 9): 101_376, (9, 0): 232_448}


def _pow2(x: int) -> int:
    return max(16, triton.next_power_of_2(x))


def _limits(args: dict) -> dict[str, int]:
    """Largest useful tile per block name: bigger tiles than the (power-of-2) problem only add masked work."""
    return {
        "BLOCK_M": _pow2(args["M"]),
        "BLOCK_N": _pow2(args["N"]),
        "BLOCK_D": _pow2(max(args["D"], args["DV"])),
        "BLOCK_DV": _pow2(args["DV"]),
    }


# ---------------------------------------------------------------- shared-memory model

def smem_bytes(kernel: str, cfg: dict[str, int], D: int, DV: int, elem: int, hopper: bool = False) -> int:
    """Dynamic shared memory (bytes) Triton allocates for one program of `kernel` ("fwd", "bwd_kv", "bwd_q").

    With num_stages >= 2 Triton's software pipeliner keeps (num_stages - 1) copies of every load issued inside
    the main loop (all BLOCK_D chunks of the loop body, as the chunk loop is unrolled), loop-invariant tiles
    once, and the fp32 probability tiles pass through shared memory on their way into `tl.dot`. On Hopper
    (`hopper`) products with 64 or more rows take the warp-group MMA path, which keeps num_stages copies of
    the loop's loads and feeds the probabilities from registers. With one stage nothing is multi-buffered: what
    remains are the operands of the products (the whole-row operands of the backward's accumulating products
    are live together). An upper bound calibrated against Triton 3.8's allocations for sm_80/sm_90; the
    offline compile check prints model and actual side by side and fails if a selectable config exceeds the
    target.
    """
    # products whose row tile (BLOCK_M; BLOCK_N too for the key-block kernel's dK, dV) is 64 or more can use
    # warp-group MMA; fp32 without TF32 keeps the FMA path, so take the larger allocation
    mma_rows = max(cfg["BLOCK_M"], cfg["BLOCK_N"]) if kernel == "bwd_kv" else cfg["BLOCK_M"]
    if hopper and mma_rows >= 64:
        return max(_smem_model(kernel, cfg, D, DV, elem, True), _smem_model(kernel, cfg, D, DV, elem, False))
    return _smem_model(kernel, cfg, D, DV, elem, False)


def _smem_model(kernel: str, cfg: dict[str, int], D: int, DV: int, elem: int, wgmma: bool) -> int:
    bm, bn, bd, stages = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"], cfg["num_stages"]
    copies = stages if wgmma else stages - 1
    if kernel == "fwd":
        per_iter = (2 * bn * D + bn * cfg["BLOCK_DV"]) * elem  # K1, K2 (all chunks) and one V tile
        once = 2 * bm * D * elem  # Q1, Q2: loop-invariant
        if copies < 1:
            per_iter = (2 * bn * bd + bn * cfg["BLOCK_DV"]) * elem  # one chunk of K1 and K2, the V tile
        probs = 0 if wgmma else 2 * bm * bn * 4
        total = max(1, copies) * per_iter + once + probs
    elif kernel in ("bwd_kv", "bwd_q"):
        wd, wv = _pow2(D), _pow2(DV)
        if kernel == "bwd_kv":  # Q1, Q2, dO: chunks for S1, S2, dP and whole rows for the dK1, dK2, dV products
            per_iter = (2 * bm * D + bm * DV + 2 * bm * wd + bm * wv) * elem
            once = (2 * bn * D + bn * DV) * elem  # K1, K2, V of the program's key block
            rows = (2 * bm * wd + bm * wv) * elem
        else:  # K1, K2, V chunks and whole K1, K2 rows; dO rows of the query block stay for dP
            per_iter = (2 * bn * D + bn * DV + 2 * bn * wd) * elem
            once = (2 * bm * D + bm * DV) * elem  # Q1, Q2, dO of the program's query block
            rows = (2 * bn * wd + bm * DV) * elem
        probs = 3 * bm * bn * 4
        if copies >= 1:
            total = copies * per_iter + once + probs
        else:  # whole-row operands plus one chunk pair for each of S1, S2, dP
            total = rows + 3 * (bm + bn) * bd * elem + probs
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return total + _SMEM_SLACK


# Barriers and reduction scratch Triton adds to the tiles (64 B measured; rounded up).
_SMEM_SLACK = 1024


# ---------------------------------------------------------------- configurations

# Rows: BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, num_warps, num_stages, in order of preference (the pruner keeps
# the first few that fit). d <= 64: flash-attention's usual 128/64 tiles (and 64-row tiles for short
# sequences); d = 128: BLOCK_D covers d in one chunk; large d: tiles small enough that K1, K2 (all of d) and a
# V tile fit twice in shared memory (bf16 on sm_80/sm_90, fp32 on sm_90), then 16 x 16 tiles with two stages
# and with one (fp32 at d = 384/512 on sm_80).
_FWD_TABLE = [
    (128, 64, 64, 64, 8, 3), (64, 64, 64, 64, 4, 3), (128, 64, 128, 128, 8, 2), (64, 64, 128, 128, 4, 2),
    (64, 32, 128, 128, 4, 2), (32, 32, 128, 128, 4, 2), (16, 16, 128, 128, 4, 2), (16, 16, 128, 128, 4, 1),
]
# Rows: BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages. The output rows are whole (dV, dK, dQ accumulators
# are (block, next_pow2(d)), so S1, S2 and dP are computed once per tile pair); with d = 384 these
# accumulators take 3 x 16 x 512 fp32 per key block, hence 16-row blocks and 8 warps for large d.
_BWD_TABLE = [
    (64, 64, 64, 4, 2), (32, 64, 64, 4, 2), (64, 32, 64, 4, 2),
    (16, 32, 128, 8, 2), (32, 16, 128, 8, 2), (16, 16, 128, 8, 2), (16, 16, 128, 8, 1),
]
# Configs tried per autotuning key: each one is compiled before it can be timed (seconds each at large d),
# so a new key costs at most this many compiles.
MAX_CANDIDATES = 2
_FWD_KEY = ["M_BUCKET", "N_BUCKET", "D", "DV", "IS_SPLIT", "SAVE_O2"]
_BWD_KEY = ["M_BUCKET", "N_BUCKET", "D", "DV"]
FWD_CONFIGS = [
    triton.Config(dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV"), r[:4])), num_warps=r[4], num_stages=r[5])
    for r in _FWD_TABLE
]
BWD_CONFIGS = [
    triton.Config(dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_D"), r[:3])), num_warps=r[3], num_stages=r[4])
    for r in _BWD_TABLE
]


class NoConfigFits(RuntimeError):
    """No tile configuration of a kernel fits the device's shared memory for this shape and dtype."""


def select_configs(
    kernel: str, configs: Iterable[triton.Config], args: dict[str, Any], elem: int, smem_limit: int,
    hopper: bool = False,
) -> list[triton.Config]:
    """The configs the autotuner may try: tiles clamped to the problem, duplicates and those whose modelled
    shared memory exceeds `smem_limit` dropped, the first MAX_CANDIDATES kept. Raises NoConfigFits if none fits."""
    limits = _limits(args)
    kept: dict[tuple, triton.Config] = {}
    for c in configs:
        kw = {k: min(v, limits[k]) for k, v in c.kwargs.items()}
        if kw["BLOCK_D"] < min(128, limits["BLOCK_D"]):  # d > 64 is reduced in chunks of 128 (fewer unrolled steps)
            continue
        if smem_bytes(kernel, {**kw, "num_stages": c.num_stages}, args["D"], args["DV"], elem, hopper) > smem_limit:
            continue
        key = (tuple(kw.items()), c.num_warps, c.num_stages)
        kept.setdefault(key, triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
        if len(kept) == MAX_CANDIDATES:
            break
    if not kept:
        raise NoConfigFits(
            f"diff_attention: no {kernel} configuration fits in {smem_limit} bytes of shared memory "
            f"(d={args['D']}, dv={args['DV']}, {elem}-byte elements)"
        )
    return list(kept.values())


def decode_config(D: int, DV: int, elem: int, smem_limit: int) -> dict[str, int]:
    """Forward tiles for M <= 16 without autotuning: a decode call is bandwidth-bound, so one program covers
    the whole dv in 16-bit types (K1, K2 are streamed once per split), with the widest key block that fits in
    shared memory twice (prefetch of the next block), else once. fp32 products run on FMA units with their operands in
    registers: 16-key blocks, 64-wide chunks of d and at most 256 output columns per program keep them within
    255 registers (ptxas, sm_90, d = 384: 32-key blocks spill 912 B, 512 columns 8 B)."""
    bd = min(64 if elem == 4 else 128, _pow2(max(D, DV)))
    bdv = min(256, _pow2(DV)) if elem == 4 else _pow2(DV)
    for bn, stages in ((64, 2), (32, 2), (16, 2), (16, 1)):
        if elem == 4 and bn > 16:
            continue
        cfg = {"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_DV": bdv, "num_stages": stages}
        if smem_bytes("fwd", cfg, D, DV, elem) <= smem_limit:
            # 16 x 512 fp32 accumulators (two of them) want 8 warps to stay in registers
            return {**cfg, "num_warps": 8 if bdv >= 256 else 4}
    raise NoConfigFits(
        f"diff_attention: no decode configuration fits in {smem_limit} bytes of shared memory (d={D}, dv={DV})"
    )


@functools.lru_cache(maxsize=None)
def device_smem_limit(index: int) -> int:
    """Per-block opt-in shared memory of CUDA device `index`, as the driver reports it."""
    props = torch.cuda.get_device_properties(index)
    limit = getattr(props, "shared_memory_per_block_optin", 0)
    return limit or SMEM_LIMITS.get((props.major, props.minor), 101_376)


def _autotune_prune(kernel: str) -> Callable[..., list[triton.Config]]:
    def prune(configs, named_args, **kwargs):  # noqa: ANN001, ANN202 (Triton's early_config_prune signature)
        args = {**named_args, **kwargs}
        q = args["Q1"]
        target = Target.of(q.device)
        return select_configs(kernel, configs, args, q.element_size(), target.smem_limit, target.hopper)
    return prune


# Interpreter tiles: large (fewer numpy-level steps) yet below 384, so d = 384 still runs the chunk loops and
# their masked tails.
_INTERP_CAPS = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 128, "BLOCK_DV": 256}


def _tuned(kernel: str, configs: list[triton.Config], key: list[str]):  # noqa: ANN202
    """Autotune over `configs` on GPUs; fixed tiles under the interpreter, which cannot benchmark several
    configs ("0 active drivers")."""
    if INTERPRET:
        names = tuple(configs[0].kwargs)
        return triton.heuristics({n: (lambda args, n=n: min(_INTERP_CAPS[n], _limits(args)[n])) for n in names})
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _autotune_prune(kernel)})


# ---------------------------------------------------------------- kernels

@triton.jit
def _scores(
    a_ptr, b_ptr, offs_m, offs_n, M, N, stride_am, stride_bn,
    K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """A[offs_m, :K] @ B[offs_n, :K]^T in fp32, accumulated over BLOCK_K chunks (rows/cols out of range = 0)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rows_a = offs_m.to(tl.int64)[:, None] * stride_am
    rows_b = offs_n.to(tl.int64)[None, :] * stride_bn
    for k0 in tl.static_range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + (rows_a + offs_k[None, :]), mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        bt = tl.load(b_ptr + (rows_b + offs_k[:, None]), mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            bt = bt.to(tl.float32)
        acc = tl.dot(a, bt, acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def _rows(ptr, offs_r, R, stride_r, COLS: tl.constexpr, WIDTH: tl.constexpr):
    """Rows offs_r of a (R, COLS) matrix with row stride stride_r as a (len(offs_r), WIDTH) tile (0 outside)."""
    offs_c = tl.arange(0, WIDTH)
    return tl.load(
        ptr + (offs_r.to(tl.int64)[:, None] * stride_r + offs_c[None, :]),
        mask=(offs_r[:, None] < R) & (offs_c[None, :] < COLS), other=0.0,
    )


@triton.jit
def _dot_cast(a, b, acc, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc + a @ b, with a (fp32) cast to b's dtype as in flash attention (or everything fp32 when UPCAST)."""
    if UPCAST:
        return tl.dot(a, b.to(tl.float32), acc, input_precision=DOT_PREC)
    return tl.dot(a.to(b.dtype), b, acc, input_precision=DOT_PREC)


# Sizes are not specialised on (Triton would compile again whenever one of them is 1 or divisible by 16):
# one compile serves every batch, head count and sequence length of a (d, dtype, tiles) key;
# alpha's strides likewise (0 for a per-head parameter broadcast over the batch).
_FWD_SIZES = ["H", "M", "N", "n_per_split", "num_splits", "n_slices", "M_BUCKET", "N_BUCKET", "sab", "sah"]
_BWD_SIZES = ["H", "BH", "M", "N", "M_BUCKET", "N_BUCKET", "sab", "sah"]


@triton.jit
def _qkv_slice(Q1, K1, Q2, K2, V, b, h, sq1b, sq1h, sk1b, sk1h, sq2b, sq2h, sk2b, sk2h, svb, svh):
    """Base pointers of the (batch b, head h) slice of Q1, K1, Q2, K2 and V."""
    return (Q1 + (b * sq1b + h * sq1h), K1 + (b * sk1b + h * sk1h), Q2 + (b * sq2b + h * sq2h),
            K2 + (b * sk2b + h * sk2h), V + (b * svb + h * svh))


@triton.jit(do_not_specialize=_FWD_SIZES)
def _fwd_kernel(
    Q1, K1, Q2, K2, V, ALPHA, O, O2, LSE1, LSE2,
    sq1b, sq1h, sq1m, sk1b, sk1h, sk1n, sq2b, sq2h, sq2m, sk2b, sk2h, sk2n, svb, svh, svn, sab, sah,
    H, M, N, n_per_split, num_splits, n_slices, qk_scale, M_BUCKET, N_BUCKET,
    D: tl.constexpr, DV: tl.constexpr, IS_SPLIT: tl.constexpr, SAVE_O2: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # 1-D grid, query block fastest: concurrent programs share one slice's K/V in L2.
    pid = tl.program_id(0)
    m_blocks = tl.cdiv(M, BLOCK_M)
    pid_m = pid % m_blocks
    rest = pid // m_blocks
    bhs = (rest % n_slices).to(tl.int64)
    pid_v = rest // n_slices
    bh = bhs // num_splits
    split = bhs % num_splits
    b = bh // H
    h = bh % H

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr = _qkv_slice(
        Q1, K1, Q2, K2, V, b, h, sq1b, sq1h, sk1b, sk1h, sq2b, sq2h, sk2b, sk2h, svb, svh)
    n_start = (split * n_per_split).to(tl.int32)
    n_end = tl.minimum(N, n_start + n_per_split)

    m1 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    m2 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l1 = tl.zeros((BLOCK_M,), tl.float32)
    l2 = tl.zeros((BLOCK_M,), tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        key_ok = offs_n[None, :] < n_end
        s1 = _scores(q1_ptr, k1_ptr, offs_m, offs_n, M, N, sq1m, sk1n, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
        s2 = _scores(q2_ptr, k2_ptr, offs_m, offs_n, M, N, sq2m, sk2n, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
        s1 = tl.where(key_ok, s1 * qk_scale, float("-inf"))
        s2 = tl.where(key_ok, s2 * qk_scale, float("-inf"))
        m1_new = tl.maximum(m1, tl.max(s1, 1))
        m2_new = tl.maximum(m2, tl.max(s2, 1))
        p1 = tl.exp2(s1 - m1_new[:, None])
        p2 = tl.exp2(s2 - m2_new[:, None])
        c1 = tl.exp2(m1 - m1_new)
        c2 = tl.exp2(m2 - m2_new)
        l1 = l1 * c1 + tl.sum(p1, 1)
        l2 = l2 * c2 + tl.sum(p2, 1)
        v = tl.load(
            v_ptr + (offs_n.to(tl.int64)[:, None] * svn + offs_v[None, :]),
            mask=(offs_n[:, None] < n_end) & (offs_v[None, :] < DV), other=0.0,
        )
        acc1 = _dot_cast(p1, v, acc1 * c1[:, None], UPCAST, DOT_PREC)
        acc2 = _dot_cast(p2, v, acc2 * c2[:, None], UPCAST, DOT_PREC)
        m1 = m1_new
        m2 = m2_new

    o1 = acc1 / l1[:, None]
    o2 = acc2 / l2[:, None]
    # Outputs are contiguous (slices, M, DV) with slices = B*H, or B*H*splits for the split partials.
    row_ok = offs_m < M
    out_off = (bhs * M + offs_m[:, None]) * DV + offs_v[None, :]
    out_mask = row_ok[:, None] & (offs_v[None, :] < DV)
    if IS_SPLIT:  # per-split normalised partials, merged by _combine_kernel
        tl.store(O + out_off, o1, mask=out_mask)
        tl.store(O2 + out_off, o2, mask=out_mask)
    else:
        alpha = tl.load(ALPHA + (b * sab + h * sah)).to(tl.float32)
        tl.store(O + out_off, (o1 - alpha * o2).to(O.dtype.element_ty), mask=out_mask)
        if SAVE_O2:
            tl.store(O2 + out_off, o2.to(O2.dtype.element_ty), mask=out_mask)
    lse_mask = row_ok & (pid_v == 0)
    tl.store(LSE1 + (bhs * M + offs_m), (m1 + tl.log2(l1)) / 1.4426950408889634, mask=lse_mask)
    tl.store(LSE2 + (bhs * M + offs_m), (m2 + tl.log2(l2)) / 1.4426950408889634, mask=lse_mask)


@triton.jit(do_not_specialize=["H", "sab", "sah", "M", "num_splits"])
def _combine_kernel(
    O1P, O2P, LSE1P, LSE2P, ALPHA, O, O2, LSE1, LSE2, H, sab, sah, M, num_splits,
    DV: tl.constexpr, SAVE_O2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Merge per-split (o_s, lse_s) of both streams: lse = logsumexp_s lse_s, o = sum_s exp(lse_s - lse) o_s."""
    bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_v = tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    row_ok = offs_m < M
    mask = row_ok[:, None] & (offs_v[None, :] < DV)

    mx1 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    mx2 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    for s in range(0, num_splits):
        base = (bh * num_splits + s) * M
        mx1 = tl.maximum(mx1, tl.load(LSE1P + (base + offs_m), mask=row_ok, other=0.0))
        mx2 = tl.maximum(mx2, tl.load(LSE2P + (base + offs_m), mask=row_ok, other=0.0))
    w1 = tl.zeros((BLOCK_M,), tl.float32)
    w2 = tl.zeros((BLOCK_M,), tl.float32)
    o1 = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    o2 = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for s in range(0, num_splits):
        base = (bh * num_splits + s) * M
        e1 = tl.exp(tl.load(LSE1P + (base + offs_m), mask=row_ok, other=0.0) - mx1)
        e2 = tl.exp(tl.load(LSE2P + (base + offs_m), mask=row_ok, other=0.0) - mx2)
        off = (base + offs_m[:, None]) * DV + offs_v[None, :]
        o1 += e1[:, None] * tl.load(O1P + off, mask=mask, other=0.0)
        o2 += e2[:, None] * tl.load(O2P + off, mask=mask, other=0.0)
        w1 += e1
        w2 += e2
    o1 = o1 / w1[:, None]
    o2 = o2 / w2[:, None]
    alpha = tl.load(ALPHA + ((bh // H) * sab + (bh % H) * sah)).to(tl.float32)
    out_off = (bh * M + offs_m[:, None]) * DV + offs_v[None, :]
    tl.store(O + out_off, (o1 - alpha * o2).to(O.dtype.element_ty), mask=mask)
    if SAVE_O2:
        tl.store(O2 + out_off, o2.to(O2.dtype.element_ty), mask=mask)
    lse_mask = row_ok & (pid_v == 0)
    tl.store(LSE1 + (bh * M + offs_m), mx1 + tl.log(w1), mask=lse_mask)
    tl.store(LSE2 + (bh * M + offs_m), mx2 + tl.log(w2), mask=lse_mask)


@triton.jit
def _probs(s, lse_ptr, offs_m, offs_n, M, N, qk_scale):
    """P = exp(s * scale - lse) from raw scores and the saved natural-log LSE (0 outside the valid tile)."""
    lse = tl.load(lse_ptr + offs_m, mask=offs_m < M, other=0.0)
    # Mask before exp2: padded keys score 0, which can exceed a very negative row LSE and overflow.
    valid = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    return tl.exp2(tl.where(valid, s * qk_scale - lse[:, None] * 1.4426950408889634, float("-inf")))


@triton.jit
def _score_grads(
    q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr, do_ptr, lse1_ptr, lse2_ptr, r1_ptr, r2_ptr, alpha,
    offs_m, offs_n, M, N, sq1m, sk1n, sq2m, sk2n, svn, sdom, qk_scale, scale,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """For one (query block, key block) tile: P = P1 - alpha P2 and the score gradients dS1, dS2 (scaled by
    the softmax scale), from one recomputation of S1, S2 and dP."""
    s1 = _scores(q1_ptr, k1_ptr, offs_m, offs_n, M, N, sq1m, sk1n, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
    s2 = _scores(q2_ptr, k2_ptr, offs_m, offs_n, M, N, sq2m, sk2n, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
    dp = _scores(do_ptr, v_ptr, offs_m, offs_n, M, N, sdom, svn, DV, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
    p1 = _probs(s1, lse1_ptr, offs_m, offs_n, M, N, qk_scale)
    p2 = _probs(s2, lse2_ptr, offs_m, offs_n, M, N, qk_scale)
    r1 = tl.load(r1_ptr + offs_m, mask=offs_m < M, other=0.0)
    r2 = tl.load(r2_ptr + offs_m, mask=offs_m < M, other=0.0)
    ds1 = p1 * (dp - r1[:, None]) * scale
    ds2 = p2 * (dp - r2[:, None]) * (-alpha * scale)
    return p1 - alpha * p2, ds1, ds2


@triton.jit
def _bwd_program(
    Q1, K1, Q2, K2, V, DO, ALPHA, length, H, BH,
    sq1b, sq1h, sk1b, sk1h, sq2b, sq2h, sk2b, sk2h, svb, svh, sdob, sdoh, sab, sah, BLOCK: tl.constexpr,
):
    """What a backward program works on: its block along ``length`` (fastest in the 1-D grid, so that
    concurrent programs share one slice's other operands in L2), its (batch, head) slice ``bh``, that slice's
    base pointers of Q1, K1, Q2, K2, V and dO, and the head's alpha."""
    blocks = tl.cdiv(length, BLOCK)
    pid = tl.program_id(0) % blocks
    bh = ((tl.program_id(0) // blocks) % BH).to(tl.int64)
    b = bh // H
    h = bh % H
    q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr = _qkv_slice(
        Q1, K1, Q2, K2, V, b, h, sq1b, sq1h, sk1b, sk1h, sq2b, sq2h, sk2b, sk2h, svb, svh)
    alpha = tl.load(ALPHA + (b * sab + h * sah)).to(tl.float32)
    return pid, bh, q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr, DO + (b * sdob + h * sdoh), alpha


@triton.jit(do_not_specialize=_BWD_SIZES)
def _bwd_kv_kernel(
    Q1, K1, Q2, K2, V, DO, ALPHA, LSE1, LSE2, R1, R2, DK1, DK2, DVo,
    sq1b, sq1h, sq1m, sk1b, sk1h, sk1n, sq2b, sq2h, sq2m, sk2b, sk2h, sk2n, svb, svh, svn, sdob, sdoh, sdom,
    sab, sah, H, BH, M, N, qk_scale, scale, M_BUCKET, N_BUCKET,
    D: tl.constexpr, DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    WD: tl.constexpr, WV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One key block: whole rows of dV = (P1 - alpha P2)^T dO, dK1 = dS1^T Q1 and dK2 = dS2^T Q2."""
    # key block fastest: concurrent programs share one slice's Q/dO in L2
    pid_n, bh, q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr, do_ptr, alpha = _bwd_program(
        Q1, K1, Q2, K2, V, DO, ALPHA, N, H, BH,
        sq1b, sq1h, sk1b, sk1h, sq2b, sq2h, sk2b, sk2h, svb, svh, sdob, sdoh, sab, sah, BLOCK_N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)

    acc_v = tl.zeros((BLOCK_N, WV), tl.float32)
    acc_k1 = tl.zeros((BLOCK_N, WD), tl.float32)
    acc_k2 = tl.zeros((BLOCK_N, WD), tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        p, ds1, ds2 = _score_grads(
            q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr, do_ptr, LSE1 + bh * M, LSE2 + bh * M, R1 + bh * M, R2 + bh * M,
            alpha, offs_m, offs_n, M, N, sq1m, sk1n, sq2m, sk2n, svn, sdom, qk_scale, scale,
            D, DV, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC,
        )
        acc_v = _dot_cast(tl.trans(p), _rows(do_ptr, offs_m, M, sdom, DV, WV), acc_v, UPCAST, DOT_PREC)
        acc_k1 = _dot_cast(tl.trans(ds1), _rows(q1_ptr, offs_m, M, sq1m, D, WD), acc_k1, UPCAST, DOT_PREC)
        acc_k2 = _dot_cast(tl.trans(ds2), _rows(q2_ptr, offs_m, M, sq2m, D, WD), acc_k2, UPCAST, DOT_PREC)
    rows = bh * N + offs_n[:, None]
    cols_d = tl.arange(0, WD)[None, :]
    cols_v = tl.arange(0, WV)[None, :]
    row_ok = offs_n[:, None] < N
    tl.store(DVo + (rows * DV + cols_v), acc_v.to(DVo.dtype.element_ty), mask=row_ok & (cols_v < DV))
    tl.store(DK1 + (rows * D + cols_d), acc_k1.to(DK1.dtype.element_ty), mask=row_ok & (cols_d < D))
    tl.store(DK2 + (rows * D + cols_d), acc_k2.to(DK2.dtype.element_ty), mask=row_ok & (cols_d < D))


@triton.jit(do_not_specialize=_BWD_SIZES)
def _bwd_q_kernel(
    Q1, K1, Q2, K2, V, DO, ALPHA, LSE1, LSE2, R1, R2, DQ1, DQ2,
    sq1b, sq1h, sq1m, sk1b, sk1h, sk1n, sq2b, sq2h, sq2m, sk2b, sk2h, sk2n, svb, svh, svn, sdob, sdoh, sdom,
    sab, sah, H, BH, M, N, qk_scale, scale, M_BUCKET, N_BUCKET,
    D: tl.constexpr, DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    WD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One query block: whole rows of dQ1 = dS1 K1 and dQ2 = dS2 K2, looping over all keys."""
    pid_m, bh, q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr, do_ptr, alpha = _bwd_program(
        Q1, K1, Q2, K2, V, DO, ALPHA, M, H, BH,
        sq1b, sq1h, sk1b, sk1h, sq2b, sq2h, sk2b, sk2h, svb, svh, sdob, sdoh, sab, sah, BLOCK_M)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)

    acc_q1 = tl.zeros((BLOCK_M, WD), tl.float32)
    acc_q2 = tl.zeros((BLOCK_M, WD), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        _, ds1, ds2 = _score_grads(
            q1_ptr, k1_ptr, q2_ptr, k2_ptr, v_ptr, do_ptr, LSE1 + bh * M, LSE2 + bh * M, R1 + bh * M, R2 + bh * M,
            alpha, offs_m, offs_n, M, N, sq1m, sk1n, sq2m, sk2n, svn, sdom, qk_scale, scale,
            D, DV, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC,
        )
        acc_q1 = _dot_cast(ds1, _rows(k1_ptr, offs_n, N, sk1n, D, WD), acc_q1, UPCAST, DOT_PREC)
        acc_q2 = _dot_cast(ds2, _rows(k2_ptr, offs_n, N, sk2n, D, WD), acc_q2, UPCAST, DOT_PREC)
    rows = bh * M + offs_m[:, None]
    cols = tl.arange(0, WD)[None, :]
    mask = (offs_m[:, None] < M) & (cols < D)
    tl.store(DQ1 + (rows * D + cols), acc_q1.to(DQ1.dtype.element_ty), mask=mask)
    tl.store(DQ2 + (rows * D + cols), acc_q2.to(DQ2.dtype.element_ty), mask=mask)


fwd_autotuned = _tuned("fwd", FWD_CONFIGS, _FWD_KEY)(_fwd_kernel)
bwd_kv_autotuned = _tuned("bwd_kv", BWD_CONFIGS, _BWD_KEY)(_bwd_kv_kernel)
bwd_q_autotuned = _tuned("bwd_q", BWD_CONFIGS, _BWD_KEY)(_bwd_q_kernel)


# ---------------------------------------------------------------- launchers

@dataclasses.dataclass(frozen=True)
class Target:
    """What the launch plan depends on in a GPU: per-block shared memory and the number of SMs."""

    smem_limit: int
    sm_count: int
    hopper: bool = False  # warp-group MMA (sm_90): pipelined tiles take more shared memory

    @staticmethod
    def of(device: torch.device) -> Target:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            return Target(device_smem_limit(index), props.multi_processor_count, props.major == 9)
        # interpreter: an H100's shared memory and a small pretend machine, so decode shapes exercise the split
        return Target(SMEM_LIMITS[(9, 0)], 2, True)


@dataclasses.dataclass
class Launch:
    """One kernel launch: `kernel` is the plain JIT function; `tuned` launches go through its autotuner (the
    tile configs are pruned at run time), the others carry their tiles in `constexprs`."""

    name: str
    kernel: Any
    grid: Callable[[dict], tuple[int, ...]]
    args: tuple
    constexprs: dict[str, Any]
    tuned: bool

    def run(self) -> None:
        (_AUTOTUNED[self.name] if self.tuned else self.kernel)[self.grid](*self.args, **self.constexprs)


_AUTOTUNED = {"fwd": fwd_autotuned, "bwd_kv": bwd_kv_autotuned, "bwd_q": bwd_q_autotuned}
TUNED_CONFIGS = {"fwd": FWD_CONFIGS, "bwd_kv": BWD_CONFIGS, "bwd_q": BWD_CONFIGS}


def _unit_last_stride(t: Tensor) -> Tensor:
    """Kernels take arbitrary (batch, head, row) strides but need a unit stride along the feature axis."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _bhm_strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 is exact by default; PyTorch's own switch opts into TF32 on GPUs, as for torch.matmul.
    if dtype == torch.float32 and not INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def num_splits_for(bh: int, m: int, n: int, sm_count: int) -> int:
    """Key-axis splits for decode-style calls: enough programs to fill the machine, each >= _SPLIT_GRAIN keys."""
    if m > DECODE_MAX_M:
        return 1
    wanted = triton.cdiv(2 * sm_count, bh)
    return max(1, min(wanted, triton.cdiv(n, _SPLIT_GRAIN), 32))


def _buckets(m: int, n: int) -> tuple[int, int]:
    return triton.next_power_of_2(m), triton.next_power_of_2(n)


def _on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensors' own GPU, not the current one."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _alpha_bh(alpha: Tensor, B: int, H: int, device: torch.device) -> Tensor:
    """alpha as a (B, H) view with any strides (an expanded per-head parameter stays stride 0, uncopied)."""
    if alpha.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        alpha = alpha.float()
    return alpha.to(device).expand(B, H)


def forward_plan(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor, scale: float, save_o2: bool,
    target: Target, num_splits: int | None = None,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], list[Launch]]:
    """Outputs (O, O2 or empty, lse1, lse2), allocated, and the launches that fill them on `target`."""
    q1, k1, q2, k2, v = (_unit_last_stride(t) for t in (q1, k1, q2, k2, v))
    B, H, M, D = q1.shape
    N, DV = v.shape[2], v.shape[3]
    bh = B * H
    dev, dtype = q1.device, q1.dtype
    alpha = _alpha_bh(alpha, B, H, dev)
    o = torch.empty(B, H, M, DV, device=dev, dtype=dtype)
    # O2 is kept in fp32: dalpha = -sum(dO O2) is a cancelling reduction, rounding O2 would dominate its error.
    o2 = torch.empty(B, H, M, DV, device=dev, dtype=torch.float32) if save_o2 else q1.new_empty(0)
    lse1 = torch.empty(B, H, M, device=dev, dtype=torch.float32)
    lse2 = torch.empty_like(lse1)
    splits = num_splits_for(bh, M, N, target.sm_count) if num_splits is None else num_splits
    n_per_split = triton.cdiv(triton.cdiv(N, splits), _SPLIT_GRAIN) * _SPLIT_GRAIN
    splits = triton.cdiv(N, n_per_split)
    if splits == 1:
        n_per_split = N
        outs = (o, o2, lse1, lse2)
    else:
        outs = (
            torch.empty(bh * splits, M, DV, device=dev, dtype=torch.float32),
            torch.empty(bh * splits, M, DV, device=dev, dtype=torch.float32),
            torch.empty(bh * splits, M, device=dev, dtype=torch.float32),
            torch.empty(bh * splits, M, device=dev, dtype=torch.float32),
        )

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * bh * splits * triton.cdiv(DV, meta["BLOCK_DV"]),)

    args = (
        q1, k1, q2, k2, v, alpha, *outs,
        *_bhm_strides(q1), *_bhm_strides(k1), *_bhm_strides(q2), *_bhm_strides(k2), *_bhm_strides(v),
        alpha.stride(0), alpha.stride(1), H, M, N, n_per_split, splits, bh * splits, scale * LOG2E, *_buckets(M, N),
    )
    flags = dict(D=D, DV=DV, IS_SPLIT=splits > 1, SAVE_O2=save_o2, UPCAST=INTERPRET, DOT_PREC=dot_precision(dtype))
    if M <= DECODE_MAX_M:  # heuristic tiles: one compile per key instead of autotuning
        cfg = decode_config(D, DV, q1.element_size(), target.smem_limit)
        launches = [Launch("fwd", _fwd_kernel, grid, args, {**flags, **cfg}, tuned=False)]
    else:
        launches = [Launch("fwd", _fwd_kernel, grid, args, flags, tuned=True)]
    if splits > 1:
        block_m = max(16, min(64, triton.next_power_of_2(M)))
        block_dv = min(128, max(16, triton.next_power_of_2(DV)))
        launches.append(Launch(
            "combine", _combine_kernel, lambda meta: (bh, triton.cdiv(M, block_m), triton.cdiv(DV, block_dv)),
            (*outs, alpha, o, o2, lse1, lse2, H, alpha.stride(0), alpha.stride(1), M, splits),
            dict(DV=DV, SAVE_O2=save_o2, BLOCK_M=block_m, BLOCK_DV=block_dv), tuned=False,
        ))
    return (o, o2, lse1, lse2), launches


def forward(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor, scale: float, save_o2: bool,
    num_splits: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused forward: (O, O2 or empty, lse1, lse2); alpha is (B, H) (any strides), lse natural-log fp32 (B, H, M)."""
    outs, launches = forward_plan(q1, k1, q2, k2, v, alpha, scale, save_o2, Target.of(q1.device), num_splits)
    with _on_device(q1):
        for launch in launches:
            launch.run()
    return outs


def backward_plan(
    do: Tensor, q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor,
    o: Tensor, o2: Tensor, lse1: Tensor, lse2: Tensor, scale: float,
) -> tuple[tuple[Tensor, ...], list[Launch]]:
    """Outputs (dq1, dk1, dq2, dk2, dv contiguous in the input dtype, dalpha (B, H) fp32) and the launches
    that fill the first five (dalpha is computed here)."""
    q1, k1, q2, k2, v, do = (_unit_last_stride(t) for t in (q1, k1, q2, k2, v, do))
    B, H, M, D = q1.shape
    N, DV = v.shape[2], v.shape[3]
    dev, dtype = q1.device, q1.dtype
    alpha = _alpha_bh(alpha, B, H, dev)
    # Row terms (a cheap bandwidth-bound reduction): r2 = rowsum(dO O2), r1 = rowsum(dO O1) = rowsum(dO O) + a r2.
    dof = do.float()
    r2 = (dof * o2.float()).sum(-1)
    r1 = ((dof * o.float()).sum(-1) + alpha.float()[..., None] * r2).contiguous()
    r2 = r2.contiguous()
    dalpha = -r2.sum(-1)
    dq1 = torch.empty(B, H, M, D, device=dev, dtype=dtype)
    dq2 = torch.empty_like(dq1)
    dk1 = torch.empty(B, H, N, D, device=dev, dtype=dtype)
    dk2 = torch.empty_like(dk1)
    dv = torch.empty(B, H, N, DV, device=dev, dtype=dtype)
    strides = (
        *_bhm_strides(q1), *_bhm_strides(k1), *_bhm_strides(q2), *_bhm_strides(k2), *_bhm_strides(v),
        *_bhm_strides(do), alpha.stride(0), alpha.stride(1),
    )
    common = dict(D=D, DV=DV, UPCAST=INTERPRET, DOT_PREC=dot_precision(dtype), WD=_pow2(D))
    scalars = (H, B * H, M, N, scale * LOG2E, scale, *_buckets(M, N))
    ins = (q1, k1, q2, k2, v, do, alpha, lse1.contiguous(), lse2.contiguous(), r1, r2)
    launches = [
        Launch("bwd_kv", _bwd_kv_kernel, lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * B * H,),
               (*ins, dk1, dk2, dv, *strides, *scalars), {**common, "WV": _pow2(DV)}, tuned=True),
        Launch("bwd_q", _bwd_q_kernel, lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * B * H,),
               (*ins, dq1, dq2, *strides, *scalars), common, tuned=True),
    ]
    return (dq1, dk1, dq2, dk2, dv, dalpha), launches


def backward(
    do: Tensor, q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor,
    o: Tensor, o2: Tensor, lse1: Tensor, lse2: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: contiguous (dq1, dk1, dq2, dk2, dv) in the input dtype and dalpha (B, H) fp32, from the
    saved O, O2 and LSEs."""
    outs, launches = backward_plan(do, q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2, scale)
    with _on_device(q1):
        for launch in launches:
            launch.run()
    return outs
