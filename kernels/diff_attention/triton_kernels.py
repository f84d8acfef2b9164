"""Triton kernels of dual-softmax differential attention, O = (softmax(Q1 K1^T s) - alpha softmax(Q2 K2^T s)) V.

Design (per (batch, head) slice; shapes are arbitrary, every tile is masked):
- Forward: two online-softmax streams in base 2 with two fp32 accumulators over one shared V tile, so V is
  read once. Head dims up to 512 are tiled: QK^T accumulates over BLOCK_D chunks of d, the output is split
  over BLOCK_DV chunks of dv (a grid axis). For few query rows (decode-style, M <= 16) the key axis is split
  over programs (flash-decoding) and a small combine kernel merges the per-split (output, LSE) pairs.
- Backward: recompute P1, P2 from the two saved LSEs. With dP = dO V^T (shared by both streams),
  r2 = rowsum(dO O2) and r1 = rowsum(dO O) + alpha r2: dS1 = P1 (dP - r1), dS2 = -alpha P2 (dP - r2).
  One kernel owns a key block and writes one column chunk of dV, dK1 or dK2; another owns a query block and
  writes one column chunk of dQ1 or dQ2. No atomics, so results are deterministic.

`TRITON_INTERPRET=1` must be set before this module is imported (Triton reads it when decorating). Under the
interpreter every tile is upcast to fp32 before `tl.dot` (its bf16 dot is wrong) and one autotune config is used.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634
# Key-axis granularity of a split in the decode forward (a multiple of every BLOCK_N, so no split is empty).
_SPLIT_GRAIN = 128
_DECODE_MAX_M = 16


def _limits(args: dict) -> dict[str, int]:
    """Largest useful tile per block name: bigger tiles than the (power-of-2) problem only add masked work."""
    return {
        "BLOCK_M": max(16, triton.next_power_of_2(args["M"])),
        "BLOCK_N": max(16, triton.next_power_of_2(args["N"])),
        "BLOCK_D": max(16, triton.next_power_of_2(max(args["D"], args["DV"]))),
        "BLOCK_DV": max(16, triton.next_power_of_2(args["DV"])),
        "BLOCK_OUT": max(16, triton.next_power_of_2(max(args["D"], args["DV"]))),
    }


def _prune(configs, named_args, **kwargs):  # noqa: ANN001, ANN202 (Triton's autotune hook signature)
    """Clamp tile sizes to the problem and drop the duplicates this creates."""
    limits = _limits({**named_args, **kwargs})
    kept = {}
    for c in configs:
        kw = {k: min(v, limits[k]) for k, v in c.kwargs.items()}
        key = (tuple(kw.items()), c.num_warps, c.num_stages)
        kept.setdefault(key, triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
    return list(kept.values())


# Interpreter tiles: large (fewer numpy-level steps) yet below 384, so d = 384 still runs the chunk loops and
# their masked tails.
_INTERP_CAPS = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 128, "BLOCK_DV": 256, "BLOCK_OUT": 256}


def _tuned(names: tuple[str, ...], table: list[tuple[int, ...]], key: list[str]):  # noqa: ANN202
    """Autotune over rows of (*block sizes, num_warps, num_stages) on GPUs; fixed tiles under the interpreter,
    which cannot benchmark several configs ("0 active drivers")."""
    if INTERPRET:
        return triton.heuristics(
            {n: (lambda args, n=n: min(_INTERP_CAPS[n], _limits(args)[n])) for n in names}
        )
    configs = [triton.Config(dict(zip(names, r[:-2])), num_warps=r[-2], num_stages=r[-1]) for r in table]
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _prune})


# Rows: BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, num_warps, num_stages. BLOCK_M = 16 rows serve decode (M <= 16)
# with the whole dv in one program where it fits, so K1/K2 are streamed once per slice.
_FWD_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV")
_FWD_TABLE = [
    (64, 64, 64, 64, 4, 3), (128, 64, 64, 64, 8, 3), (64, 128, 64, 64, 4, 2), (128, 128, 64, 64, 8, 2),
    (64, 64, 128, 128, 4, 2), (128, 64, 128, 128, 8, 2), (64, 32, 128, 256, 8, 2), (64, 64, 128, 256, 8, 2),
    (32, 64, 128, 512, 8, 2),
    (16, 64, 64, 64, 4, 3), (16, 128, 64, 64, 4, 3), (16, 64, 128, 128, 4, 3), (16, 128, 128, 128, 4, 2),
    (16, 64, 128, 256, 4, 2), (16, 64, 128, 512, 8, 2), (16, 32, 128, 512, 4, 2),
]
# Rows: BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_OUT, num_warps, num_stages.
_BWD_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_OUT")
_BWD_TABLE = [
    (32, 64, 64, 64, 4, 2), (64, 64, 64, 64, 4, 2), (64, 128, 64, 64, 8, 2), (32, 128, 128, 128, 8, 2),
    (64, 64, 128, 128, 8, 2), (32, 64, 128, 128, 4, 2), (16, 64, 128, 128, 4, 2),
]
_FWD_KEY = ["M_BUCKET", "N_BUCKET", "D", "DV", "IS_SPLIT", "SAVE_O2"]
_BWD_KEY = ["M_BUCKET", "N_BUCKET", "D", "DV"]


@triton.jit
def _scores(
    a_ptr, b_ptr, offs_m, offs_n, M, N, stride_am, stride_bn,
    K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """A[offs_m, :K] @ B[offs_n, :K]^T in fp32, accumulated over BLOCK_K chunks (rows/cols out of range = 0)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + offs_k[None, :],
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0,
        )
        bt = tl.load(
            b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None],
            mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            bt = bt.to(tl.float32)
        acc = tl.dot(a, bt, acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def _dot_cast(a, b, acc, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc + a @ b, with a (fp32) cast to b's dtype as in flash attention (or everything fp32 when UPCAST)."""
    if UPCAST:
        return tl.dot(a, b.to(tl.float32), acc, input_precision=DOT_PREC)
    return tl.dot(a.to(b.dtype), b, acc, input_precision=DOT_PREC)


@_tuned(_FWD_NAMES, _FWD_TABLE, _FWD_KEY)
@triton.jit
def _fwd_kernel(
    Q1, K1, Q2, K2, V, ALPHA, O, O2, LSE1, LSE2,
    sq1b, sq1h, sq1m, sk1b, sk1h, sk1n, sq2b, sq2h, sq2m, sk2b, sk2h, sk2n, svb, svh, svn,
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
    bhs = rest % n_slices
    pid_v = rest // n_slices
    bh = bhs // num_splits
    split = bhs % num_splits
    b = bh // H
    h = bh % H

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    q1_ptr = Q1 + b * sq1b + h * sq1h
    q2_ptr = Q2 + b * sq2b + h * sq2h
    k1_ptr = K1 + b * sk1b + h * sk1h
    k2_ptr = K2 + b * sk2b + h * sk2h
    v_ptr = V + b * svb + h * svh
    n_start = split * n_per_split
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
            v_ptr + offs_n[:, None] * svn + offs_v[None, :],
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
    out_off = bhs * M * DV + offs_m[:, None] * DV + offs_v[None, :]
    out_mask = row_ok[:, None] & (offs_v[None, :] < DV)
    if IS_SPLIT:  # per-split normalised partials, merged by _combine_kernel
        tl.store(O + out_off, o1, mask=out_mask)
        tl.store(O2 + out_off, o2, mask=out_mask)
    else:
        alpha = tl.load(ALPHA + bh)
        tl.store(O + out_off, (o1 - alpha * o2).to(O.dtype.element_ty), mask=out_mask)
        if SAVE_O2:
            tl.store(O2 + out_off, o2.to(O2.dtype.element_ty), mask=out_mask)
    lse_mask = row_ok & (pid_v == 0)
    tl.store(LSE1 + bhs * M + offs_m, (m1 + tl.log2(l1)) / 1.4426950408889634, mask=lse_mask)
    tl.store(LSE2 + bhs * M + offs_m, (m2 + tl.log2(l2)) / 1.4426950408889634, mask=lse_mask)


@triton.jit
def _combine_kernel(
    O1P, O2P, LSE1P, LSE2P, ALPHA, O, O2, LSE1, LSE2, M, num_splits,
    DV: tl.constexpr, SAVE_O2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Merge per-split (o_s, lse_s) of both streams: lse = logsumexp_s lse_s, o = sum_s exp(lse_s - lse) o_s."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_v = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    row_ok = offs_m < M
    mask = row_ok[:, None] & (offs_v[None, :] < DV)

    mx1 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    mx2 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    for s in range(0, num_splits):
        base = (bh * num_splits + s) * M
        mx1 = tl.maximum(mx1, tl.load(LSE1P + base + offs_m, mask=row_ok, other=0.0))
        mx2 = tl.maximum(mx2, tl.load(LSE2P + base + offs_m, mask=row_ok, other=0.0))
    w1 = tl.zeros((BLOCK_M,), tl.float32)
    w2 = tl.zeros((BLOCK_M,), tl.float32)
    o1 = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    o2 = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for s in range(0, num_splits):
        base = (bh * num_splits + s) * M
        e1 = tl.exp(tl.load(LSE1P + base + offs_m, mask=row_ok, other=0.0) - mx1)
        e2 = tl.exp(tl.load(LSE2P + base + offs_m, mask=row_ok, other=0.0) - mx2)
        off = base * DV + offs_m[:, None] * DV + offs_v[None, :]
        o1 += e1[:, None] * tl.load(O1P + off, mask=mask, other=0.0)
        o2 += e2[:, None] * tl.load(O2P + off, mask=mask, other=0.0)
        w1 += e1
        w2 += e2
    o1 = o1 / w1[:, None]
    o2 = o2 / w2[:, None]
    alpha = tl.load(ALPHA + bh)
    out_off = bh * M * DV + offs_m[:, None] * DV + offs_v[None, :]
    tl.store(O + out_off, (o1 - alpha * o2).to(O.dtype.element_ty), mask=mask)
    if SAVE_O2:
        tl.store(O2 + out_off, o2.to(O2.dtype.element_ty), mask=mask)
    lse_mask = row_ok & (pid_v == 0)
    tl.store(LSE1 + bh * M + offs_m, mx1 + tl.log(w1), mask=lse_mask)
    tl.store(LSE2 + bh * M + offs_m, mx2 + tl.log(w2), mask=lse_mask)


@triton.jit
def _probs(s, lse_ptr, offs_m, offs_n, M, N, qk_scale):
    """P = exp(s * scale - lse) from raw scores and the saved natural-log LSE (0 outside the valid tile)."""
    lse = tl.load(lse_ptr + offs_m, mask=offs_m < M, other=0.0)
    # Mask before exp2: padded keys score 0, which can exceed a very negative row LSE and overflow.
    valid = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    return tl.exp2(tl.where(valid, s * qk_scale - lse[:, None] * 1.4426950408889634, float("-inf")))


@_tuned(_BWD_NAMES, _BWD_TABLE, _BWD_KEY)
@triton.jit
def _bwd_kv_kernel(
    Q1, K1, Q2, K2, V, DO, ALPHA, LSE1, LSE2, R1, R2, DK1, DK2, DVo,
    sq1b, sq1h, sq1m, sk1b, sk1h, sk1n, sq2b, sq2h, sq2m, sk2b, sk2h, sk2n, svb, svh, svn, sdob, sdoh, sdom,
    H, BH, M, N, qk_scale, scale, M_BUCKET, N_BUCKET,
    D: tl.constexpr, DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_OUT: tl.constexpr,
):
    """One key block, one column chunk of dV (first chunks), dK1 or dK2 (then), looping over all queries."""
    # 1-D grid, key block fastest: concurrent programs share one slice's Q/dO in L2.
    n_blocks = tl.cdiv(N, BLOCK_N)
    pid_n = tl.program_id(0) % n_blocks
    bh = (tl.program_id(0) // n_blocks) % BH
    pid_c = tl.program_id(0) // n_blocks // BH
    b = bh // H
    h = bh % H
    NVC: tl.constexpr = (DV + BLOCK_OUT - 1) // BLOCK_OUT
    NKC: tl.constexpr = (D + BLOCK_OUT - 1) // BLOCK_OUT
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    q1_ptr = Q1 + b * sq1b + h * sq1h
    q2_ptr = Q2 + b * sq2b + h * sq2h
    k1_ptr = K1 + b * sk1b + h * sk1h
    k2_ptr = K2 + b * sk2b + h * sk2h
    v_ptr = V + b * svb + h * svh
    do_ptr = DO + b * sdob + h * sdoh
    alpha = tl.load(ALPHA + bh)

    if pid_c < NVC:  # dV chunk: sum over queries of (P1 - alpha P2)^T dO
        offs_o = pid_c * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
        acc = tl.zeros((BLOCK_N, BLOCK_OUT), tl.float32)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            s1 = _scores(q1_ptr, k1_ptr, offs_m, offs_n, M, N, sq1m, sk1n, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
            s2 = _scores(q2_ptr, k2_ptr, offs_m, offs_n, M, N, sq2m, sk2n, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
            p = _probs(s1, LSE1 + bh * M, offs_m, offs_n, M, N, qk_scale)
            p -= alpha * _probs(s2, LSE2 + bh * M, offs_m, offs_n, M, N, qk_scale)
            do = tl.load(
                do_ptr + offs_m[:, None] * sdom + offs_o[None, :],
                mask=(offs_m[:, None] < M) & (offs_o[None, :] < DV), other=0.0,
            )
            acc = _dot_cast(tl.trans(p), do, acc, UPCAST, DOT_PREC)
        tl.store(
            DVo + bh * N * DV + offs_n[:, None] * DV + offs_o[None, :], acc.to(DVo.dtype.element_ty),
            mask=(offs_n[:, None] < N) & (offs_o[None, :] < DV),
        )
    else:  # dK chunk of stream 1 or 2: sum over queries of dS^T Q
        second = pid_c >= NVC + NKC
        chunk = (pid_c - NVC) % NKC
        if second:
            q_ptr = q2_ptr
            k_ptr = k2_ptr
            sqm = sq2m
            skn = sk2n
            lse_ptr = LSE2 + bh * M
            r_ptr = R2 + bh * M
            out_ptr = DK2
            factor = -alpha * scale
        else:
            q_ptr = q1_ptr
            k_ptr = k1_ptr
            sqm = sq1m
            skn = sk1n
            lse_ptr = LSE1 + bh * M
            r_ptr = R1 + bh * M
            out_ptr = DK1
            factor = scale
        offs_o = chunk * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
        acc = tl.zeros((BLOCK_N, BLOCK_OUT), tl.float32)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            s = _scores(q_ptr, k_ptr, offs_m, offs_n, M, N, sqm, skn, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
            p = _probs(s, lse_ptr, offs_m, offs_n, M, N, qk_scale)
            dp = _scores(do_ptr, v_ptr, offs_m, offs_n, M, N, sdom, svn, DV, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
            r = tl.load(r_ptr + offs_m, mask=offs_m < M, other=0.0)
            ds = p * (dp - r[:, None]) * factor
            q = tl.load(
                q_ptr + offs_m[:, None] * sqm + offs_o[None, :],
                mask=(offs_m[:, None] < M) & (offs_o[None, :] < D), other=0.0,
            )
            acc = _dot_cast(tl.trans(ds), q, acc, UPCAST, DOT_PREC)
        tl.store(
            out_ptr + bh * N * D + offs_n[:, None] * D + offs_o[None, :], acc.to(out_ptr.dtype.element_ty),
            mask=(offs_n[:, None] < N) & (offs_o[None, :] < D),
        )


@_tuned(_BWD_NAMES, _BWD_TABLE, _BWD_KEY)
@triton.jit
def _bwd_q_kernel(
    Q1, K1, Q2, K2, V, DO, ALPHA, LSE1, LSE2, R1, R2, DQ1, DQ2,
    sq1b, sq1h, sq1m, sk1b, sk1h, sk1n, sq2b, sq2h, sq2m, sk2b, sk2h, sk2n, svb, svh, svn, sdob, sdoh, sdom,
    H, BH, M, N, qk_scale, scale, M_BUCKET, N_BUCKET,
    D: tl.constexpr, DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_OUT: tl.constexpr,
):
    """One query block, one column chunk of dQ1 (first chunks) or dQ2, looping over all keys."""
    m_blocks = tl.cdiv(M, BLOCK_M)
    pid_m = tl.program_id(0) % m_blocks
    bh = (tl.program_id(0) // m_blocks) % BH
    pid_c = tl.program_id(0) // m_blocks // BH
    b = bh // H
    h = bh % H
    NKC: tl.constexpr = (D + BLOCK_OUT - 1) // BLOCK_OUT
    second = pid_c >= NKC
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = (pid_c % NKC) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    v_ptr = V + b * svb + h * svh
    do_ptr = DO + b * sdob + h * sdoh
    if second:
        q_ptr = Q2 + b * sq2b + h * sq2h
        k_ptr = K2 + b * sk2b + h * sk2h
        sqm = sq2m
        skn = sk2n
        lse_ptr = LSE2 + bh * M
        r_ptr = R2 + bh * M
        out_ptr = DQ2
        factor = -tl.load(ALPHA + bh) * scale
    else:
        q_ptr = Q1 + b * sq1b + h * sq1h
        k_ptr = K1 + b * sk1b + h * sk1h
        sqm = sq1m
        skn = sk1n
        lse_ptr = LSE1 + bh * M
        r_ptr = R1 + bh * M
        out_ptr = DQ1
        factor = scale
    r = tl.load(r_ptr + offs_m, mask=offs_m < M, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_OUT), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _scores(q_ptr, k_ptr, offs_m, offs_n, M, N, sqm, skn, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
        p = _probs(s, lse_ptr, offs_m, offs_n, M, N, qk_scale)
        dp = _scores(do_ptr, v_ptr, offs_m, offs_n, M, N, sdom, svn, DV, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PREC)
        ds = p * (dp - r[:, None]) * factor
        k = tl.load(
            k_ptr + offs_n[:, None] * skn + offs_o[None, :],
            mask=(offs_n[:, None] < N) & (offs_o[None, :] < D), other=0.0,
        )
        acc = _dot_cast(ds, k, acc, UPCAST, DOT_PREC)
    tl.store(
        out_ptr + bh * M * D + offs_m[:, None] * D + offs_o[None, :], acc.to(out_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < M) & (offs_o[None, :] < D),
    )


def _unit_last_stride(t: Tensor) -> Tensor:
    """Kernels take arbitrary (batch, head, row) strides but need a unit stride along the feature axis."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _bhm_strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 is exact by default; PyTorch's own switch opts into TF32 on GPUs, as for torch.matmul.
    if dtype == torch.float32 and not INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: a small pretend machine, so decode shapes exercise the split path


def num_splits_for(bh: int, m: int, n: int, device: torch.device) -> int:
    """Key-axis splits for decode-style calls: enough programs to fill the machine, each >= _SPLIT_GRAIN keys."""
    if m > _DECODE_MAX_M:
        return 1
    wanted = triton.cdiv(2 * _sm_count(device), bh)
    return max(1, min(wanted, triton.cdiv(n, _SPLIT_GRAIN), 32))


def _buckets(m: int, n: int) -> tuple[int, int]:
    return triton.next_power_of_2(m), triton.next_power_of_2(n)


def forward(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor, scale: float, save_o2: bool,
    num_splits: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused forward: (O, O2 or empty, lse1, lse2); alpha is a (B, H) tensor, lse natural-log fp32 (B, H, M)."""
    q1, k1, q2, k2, v = (_unit_last_stride(t) for t in (q1, k1, q2, k2, v))
    B, H, M, D = q1.shape
    N, DV = v.shape[2], v.shape[3]
    bh = B * H
    dev, dtype = q1.device, q1.dtype
    alpha = alpha.to(device=dev, dtype=torch.float32).expand(B, H).contiguous()
    o = torch.empty(B, H, M, DV, device=dev, dtype=dtype)
    # O2 is kept in fp32: dalpha = -sum(dO O2) is a cancelling reduction, rounding O2 would dominate its error.
    o2 = torch.empty(B, H, M, DV, device=dev, dtype=torch.float32) if save_o2 else q1.new_empty(0)
    lse1 = torch.empty(B, H, M, device=dev, dtype=torch.float32)
    lse2 = torch.empty_like(lse1)
    splits = num_splits_for(bh, M, N, dev) if num_splits is None else num_splits
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

    _fwd_kernel[grid](
        q1, k1, q2, k2, v, alpha, *outs,
        *_bhm_strides(q1), *_bhm_strides(k1), *_bhm_strides(q2), *_bhm_strides(k2), *_bhm_strides(v),
        H, M, N, n_per_split, splits, bh * splits, scale * LOG2E, *_buckets(M, N),
        D=D, DV=DV, IS_SPLIT=splits > 1, SAVE_O2=save_o2, UPCAST=INTERPRET, DOT_PREC=_dot_precision(dtype),
    )
    if splits > 1:
        block_m = max(16, min(64, triton.next_power_of_2(M)))
        block_dv = min(128, max(16, triton.next_power_of_2(DV)))
        _combine_kernel[(bh, triton.cdiv(M, block_m), triton.cdiv(DV, block_dv))](
            *outs, alpha, o, o2, lse1, lse2, M, splits,
            DV=DV, SAVE_O2=save_o2, BLOCK_M=block_m, BLOCK_DV=block_dv,
        )
    return o, o2, lse1, lse2


def backward(
    do: Tensor, q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor,
    o: Tensor, o2: Tensor, lse1: Tensor, lse2: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: (dq1, dk1, dq2, dk2, dv, dalpha (B, H) fp32) from the saved O, O2 and LSEs."""
    q1, k1, q2, k2, v, do = (_unit_last_stride(t) for t in (q1, k1, q2, k2, v, do))
    B, H, M, D = q1.shape
    N, DV = v.shape[2], v.shape[3]
    dev, dtype = q1.device, q1.dtype
    alpha = alpha.to(device=dev, dtype=torch.float32).expand(B, H).contiguous()
    # Row terms (a cheap bandwidth-bound reduction): r2 = rowsum(dO O2), r1 = rowsum(dO O1) = rowsum(dO O) + a r2.
    dof = do.float()
    r2 = (dof * o2.float()).sum(-1)
    r1 = ((dof * o.float()).sum(-1) + alpha[..., None] * r2).contiguous()
    r2 = r2.contiguous()
    dalpha = -r2.sum(-1)
    dq1 = torch.empty(B, H, M, D, device=dev, dtype=dtype)
    dq2 = torch.empty_like(dq1)
    dk1 = torch.empty(B, H, N, D, device=dev, dtype=dtype)
    dk2 = torch.empty_like(dk1)
    dv = torch.empty(B, H, N, DV, device=dev, dtype=dtype)
    strides = (
        *_bhm_strides(q1), *_bhm_strides(k1), *_bhm_strides(q2), *_bhm_strides(k2), *_bhm_strides(v),
        *_bhm_strides(do),
    )
    common = dict(D=D, DV=DV, UPCAST=INTERPRET, DOT_PREC=_dot_precision(dtype))
    scalars = (H, B * H, M, N, scale * LOG2E, scale, *_buckets(M, N))
    lse1, lse2 = lse1.contiguous(), lse2.contiguous()

    def kv_grid(meta: dict) -> tuple[int]:
        chunks = triton.cdiv(DV, meta["BLOCK_OUT"]) + 2 * triton.cdiv(D, meta["BLOCK_OUT"])
        return (triton.cdiv(N, meta["BLOCK_N"]) * B * H * chunks,)

    def q_grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * B * H * 2 * triton.cdiv(D, meta["BLOCK_OUT"]),)

    _bwd_kv_kernel[kv_grid](
        q1, k1, q2, k2, v, do, alpha, lse1, lse2, r1, r2, dk1, dk2, dv, *strides, *scalars, **common
    )
    _bwd_q_kernel[q_grid](q1, k1, q2, k2, v, do, alpha, lse1, lse2, r1, r2, dq1, dq2, *strides, *scalars, **common)
    return dq1, dk1, dq2, dk2, dv, dalpha
