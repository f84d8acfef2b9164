"""Pure-PyTorch differential attention: the literal computation, the two-SDPA baseline, and the
reference forward/backward (with saved row statistics) that the custom op runs on CPU tensors.

All functions take q1, q2 (B, H, M, d), k1, k2 (B, H, N, d), v (B, H, N, dv) and compute, per slice,
O = (softmax(Q1 K1^T s) - alpha softmax(Q2 K2^T s)) V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _alpha_4d(alpha: float | Tensor, like: Tensor) -> float | Tensor:
    """alpha broadcast over the (M, dv) dims of an output: (B, H) -> (B, H, 1, 1)."""
    if isinstance(alpha, Tensor):
        return alpha.reshape(*alpha.shape, 1, 1) if alpha.dim() > 0 else alpha
    return alpha


def diff_attention_reference(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: float | Tensor, scale: float | None = None
) -> Tensor:
    """Literal differential attention: both softmax matrices materialised, as the authors compute it.

    Runs in the inputs' dtype (it is the baseline a user would otherwise run); differentiable by autograd.
    """
    scale = q1.shape[-1] ** -0.5 if scale is None else scale
    p1 = torch.softmax((q1 @ k1.transpose(-2, -1)) * scale, dim=-1)
    p2 = torch.softmax((q2 @ k2.transpose(-2, -1)) * scale, dim=-1)
    return (p1 - _alpha_4d(alpha, p2) * p2) @ v


def diff_attention_sdpa(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: float | Tensor, scale: float | None = None
) -> Tensor:
    """Strong baseline: two fused `scaled_dot_product_attention` calls combined as o1 - alpha * o2."""
    scale = q1.shape[-1] ** -0.5 if scale is None else scale
    o1 = F.scaled_dot_product_attention(q1, k1, v, scale=scale)
    o2 = F.scaled_dot_product_attention(q2, k2, v, scale=scale)
    return o1 - _alpha_4d(alpha, o2) * o2


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def forward_with_stats(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor, scale: float, save_o2: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of the op's forward: (O, O2 or empty, lse1, lse2) in fp32 (fp64 for fp64) arithmetic.

    alpha is a (B, H) float tensor; lse are the natural-log row log-sum-exps of the scaled scores, in the
    accumulation dtype (fp32, or fp64 for fp64 inputs).
    """
    acc = _acc_dtype(q1)
    s1 = (q1.to(acc) @ k1.to(acc).transpose(-2, -1)) * scale
    s2 = (q2.to(acc) @ k2.to(acc).transpose(-2, -1)) * scale
    lse1 = torch.logsumexp(s1, dim=-1)
    lse2 = torch.logsumexp(s2, dim=-1)
    vf = v.to(acc)
    o2 = torch.exp(s2 - lse2.unsqueeze(-1)) @ vf
    o = torch.exp(s1 - lse1.unsqueeze(-1)) @ vf - alpha.to(acc)[..., None, None] * o2
    o2_saved = o2 if save_o2 else q1.new_empty(0)  # kept in fp32 (fp64): it feeds the cancelling dalpha sum
    return o.to(q1.dtype), o2_saved, lse1, lse2


def backward_from_stats(
    do: Tensor,
    q1: Tensor,
    k1: Tensor,
    q2: Tensor,
    k2: Tensor,
    v: Tensor,
    alpha: Tensor,
    o: Tensor,
    o2: Tensor,
    lse1: Tensor,
    lse2: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reference of the op's backward from the saved (O, O2, lse1, lse2).

    With dP = dO V^T, r2 = rowsum(dO * O2) and r1 = rowsum(dO * O1) = rowsum(dO * O) + alpha r2:
    dS1 = P1 (dP - r1), dS2 = -alpha P2 (dP - r2), dV = (P1 - alpha P2)^T dO, dalpha = -sum(dO * O2).
    Returns (dq1, dk1, dq2, dk2, dv, dalpha) with dalpha of shape (B, H) in fp32 (fp64 for fp64).
    """
    acc = _acc_dtype(q1)
    q1f, k1f, q2f, k2f, vf, dof = (t.to(acc) for t in (q1, k1, q2, k2, v, do))
    a = alpha.to(acc)[..., None, None]
    p1 = torch.exp((q1f @ k1f.transpose(-2, -1)) * scale - lse1.to(acc).unsqueeze(-1))
    p2 = torch.exp((q2f @ k2f.transpose(-2, -1)) * scale - lse2.to(acc).unsqueeze(-1))
    r2 = (dof * o2.to(acc)).sum(-1, keepdim=True)
    r1 = (dof * o.to(acc)).sum(-1, keepdim=True) + a * r2
    dp = dof @ vf.transpose(-2, -1)
    ds1 = p1 * (dp - r1) * scale
    ds2 = -a * p2 * (dp - r2) * scale
    dv = (p1 - a * p2).transpose(-2, -1) @ dof
    grads = (ds1 @ k1f, ds1.transpose(-2, -1) @ q1f, ds2 @ k2f, ds2.transpose(-2, -1) @ q2f, dv)
    dalpha = -r2.squeeze(-1).sum(-1)
    return (*(g.to(q1.dtype) for g in grads), dalpha)
