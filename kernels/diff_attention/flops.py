"""FLOP counts of differential attention per (B, H, M, N, d, dv) call: the op's useful work, what the fused
Triton kernels execute (padding included), and two FlashAttention-2 backwards as the yardstick.

A product of an (m, k) and a (k, n) matrix counts 2 m k n FLOPs; softmax and elementwise work is not counted.
"""

from __future__ import annotations

Shape = tuple[int, int, int, int, int, int]


def _pow2(x: int) -> int:
    return max(16, 1 << (x - 1).bit_length())


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step


def useful_flops(shape: Shape) -> tuple[int, int]:
    """(forward, backward) minimum: forward S1, S2 and one PV product (P1 - alpha P2 formed first); backward
    dP, dV, dQ1, dQ2, dK1, dK2 (S1, S2 counted in the forward only)."""
    B, H, M, N, d, dv = shape
    s = B * H
    return s * (4 * M * N * d + 2 * M * N * dv), s * (8 * M * N * d + 4 * M * N * dv)


def fused_backward_flops(shape: Shape) -> int:
    """What the fused backward executes. Each of its two kernels recomputes S1, S2 and dP once per tile pair
    (reductions over d and dv in chunks of BLOCK_D = min(128, next_pow2(max(d, dv)))); the key-block kernel then
    accumulates dV, dK1, dK2 and the query-block kernel dQ1, dQ2 over whole rows padded to next_pow2(d/dv)."""
    B, H, M, N, d, dv = shape
    chunk = min(128, _pow2(max(d, dv)))
    recompute = 2 * M * N * (2 * _round_up(d, chunk) + _round_up(dv, chunk))
    wd, wv = _pow2(d), _pow2(dv)
    kv = recompute + 2 * M * N * (wv + 2 * wd)
    q = recompute + 2 * M * N * 2 * wd
    return B * H * (kv + q)


def flash2_backward_flops(shape: Shape) -> int:
    """Two FlashAttention-2 backwards (one per softmax stream): each recomputes S and dP and forms dV, dK, dQ."""
    B, H, M, N, d, dv = shape
    return 2 * B * H * 2 * M * N * (3 * d + 2 * dv)
