"""The `iqa_plugins::diff_attention_*` torch.library ops and the public `diff_attention` function.

Dispatch (decided per call from the tensors' device):
- CUDA tensors run the Triton kernels; if Triton is missing or older than MIN_TRITON they run the pure-PyTorch
  reference instead, with one warning.
- CPU tensors run the pure-PyTorch reference (`reference.forward_with_stats`/`backward_from_stats`), unless
  `TRITON_INTERPRET=1` was set in the environment when this module was imported: then CPU tensors run the same
  Triton kernels in Triton's interpreter (how CI tests the kernels without a GPU).
- float64 always runs the reference (it exists for gradcheck; the kernels target fp32/fp16/bf16).
Triton is imported lazily on first Triton use (eagerly when interpreting, so the switch is read once).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import torch
from torch import Tensor

from . import reference

CPU_USES_TRITON = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_HEAD_DIM = 512
# The oldest Triton the kernels are compiled with (the Triton of torch 2.11); the interpreter tests need 3.8
# when numpy >= 2.4 (older interpreters fail on `range` over a runtime bound there).
MIN_TRITON = (3, 6)
_kernels: ModuleType | None = None
_unavailable: str | None = None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _triton() -> ModuleType | None:
    """The kernel module, or None (after one warning) when Triton is missing or too old."""
    global _kernels, _unavailable
    if _kernels is None and _unavailable is None:
        try:
            import triton
        except ImportError as exc:
            _unavailable = f"Triton cannot be imported ({exc})"
        else:
            if _version_tuple(triton.__version__) < MIN_TRITON:
                _unavailable = f"Triton {triton.__version__} is older than the supported {'.'.join(map(str, MIN_TRITON))}"
        if _unavailable is None:
            from . import triton_kernels

            _kernels = triton_kernels
        else:
            warnings.warn(
                f"diff_attention: {_unavailable}; running the pure-PyTorch reference instead (same results, "
                "more memory and time)", RuntimeWarning, stacklevel=3,
            )
    return _kernels


if CPU_USES_TRITON:
    _triton()


def uses_triton(t: Tensor) -> bool:
    """Whether the op runs the Triton kernels (rather than the reference) for tensors like t."""
    if t.dtype == torch.float64:
        return False
    wanted = t.device.type == "cuda" or (CPU_USES_TRITON and t.device.type == "cpu")
    return wanted and _triton() is not None


@torch.library.custom_op("iqa_plugins::diff_attention_fwd", mutates_args=())
def diff_attention_fwd(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: Tensor, scale: float, save_o2: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(O, O2 = P2 V or an empty tensor, lse1, lse2); alpha (B, H), O2 and lse (B, H, M, natural log) in fp32
    (fp64 for fp64 inputs); O in the input dtype."""
    if uses_triton(q1):
        return _triton().forward(q1, k1, q2, k2, v, alpha, scale, save_o2)
    return reference.forward_with_stats(q1, k1, q2, k2, v, alpha, scale, save_o2)


@diff_attention_fwd.register_fake
def _(q1, k1, q2, k2, v, alpha, scale, save_o2):  # noqa: ANN001, ANN202
    B, H, M, _ = q1.shape
    dv = v.shape[-1]
    acc = torch.float64 if q1.dtype == torch.float64 else torch.float32
    o = q1.new_empty(B, H, M, dv)
    o2 = q1.new_empty(B, H, M, dv, dtype=acc) if save_o2 else q1.new_empty(0)
    lse = q1.new_empty(B, H, M, dtype=acc)
    return o, o2, lse, torch.empty_like(lse)


@torch.library.custom_op("iqa_plugins::diff_attention_bwd", mutates_args=())
def diff_attention_bwd(
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
    """(dq1, dk1, dq2, dk2, dv, dalpha) with dalpha (B, H) in fp32 (fp64 for fp64 inputs)."""
    if uses_triton(q1):
        return _triton().backward(do, q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2, scale)
    return reference.backward_from_stats(do, q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2, scale)


@diff_attention_bwd.register_fake
def _(do, q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2, scale):  # noqa: ANN001, ANN202
    acc = torch.float64 if q1.dtype == torch.float64 else torch.float32
    dalpha = q1.new_empty(q1.shape[:2], dtype=acc)
    # Both implementations return contiguous gradients, whatever the inputs' strides.
    return (q1.new_empty(q1.shape), k1.new_empty(k1.shape), q2.new_empty(q2.shape), k2.new_empty(k2.shape),
            v.new_empty(v.shape), dalpha)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q1, k1, q2, k2, v, alpha, scale, _ = inputs
    o, o2, lse1, lse2 = output
    ctx.save_for_backward(q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2)
    ctx.scale = scale


def _backward(ctx, do: Tensor, _do2: Tensor, _dlse1: Tensor, _dlse2: Tensor):  # noqa: ANN001, ANN202
    q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2 = ctx.saved_tensors
    if o2.numel() == 0:
        raise RuntimeError("diff_attention_fwd was called with save_o2=False; it cannot be differentiated")
    grads = diff_attention_bwd(do.contiguous(), q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2, ctx.scale)
    dalpha = grads[5].to(alpha.dtype) if ctx.needs_input_grad[5] else None
    return (*grads[:5], dalpha, None, None)


diff_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor) -> None:
    named = {"q1": q1, "k1": k1, "q2": q2, "k2": k2, "v": v}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"diff_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"diff_attention: {name} must be 4-D (B, H, rows, features), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"diff_attention: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16 (float64 runs the reference)")
        if t.dtype != q1.dtype:
            raise TypeError(f"diff_attention: {name} has dtype {t.dtype} but q1 has {q1.dtype}; use one dtype")
        if t.device != q1.device:
            raise ValueError(f"diff_attention: {name} is on {t.device} but q1 is on {q1.device}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"diff_attention: {name} is on unsupported device {t.device}; use cpu or cuda")
        if t.shape[2] < 1 or t.shape[3] < 1:
            raise ValueError(f"diff_attention: {name} has an empty dimension, shape {tuple(t.shape)}")
    B, H, M, d = q1.shape
    N = k1.shape[2]
    expect = {"q2": (B, H, M, d), "k1": (B, H, N, d), "k2": (B, H, N, d)}
    for name, shape in expect.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(
                f"diff_attention: {name} must have shape {shape} to match q1 {tuple(q1.shape)} and k1 "
                f"{tuple(k1.shape)}, got {tuple(named[name].shape)}"
            )
    if tuple(v.shape[:3]) != (B, H, N):
        raise ValueError(f"diff_attention: v must have shape ({B}, {H}, {N}, dv) to match k1, got {tuple(v.shape)}")
    for name, size in (("q1", d), ("v", v.shape[3])):
        if size > MAX_HEAD_DIM:
            raise ValueError(f"diff_attention: {name} feature size {size} exceeds the supported {MAX_HEAD_DIM}")


def _alpha_tensor(alpha: float | Tensor, like: Tensor) -> Tensor:
    B, H = like.shape[:2]
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return torch.full((B, H), float(alpha), device=like.device, dtype=torch.float32)
    if not isinstance(alpha, Tensor):
        raise TypeError(f"diff_attention: alpha must be a float or a tensor, got {type(alpha).__name__}")
    if not alpha.is_floating_point():
        raise TypeError(f"diff_attention: alpha must be a floating-point tensor, got {alpha.dtype}")
    if alpha.device != like.device:
        raise ValueError(f"diff_attention: alpha is on {alpha.device} but q1 is on {like.device}")
    try:
        expanded = alpha.expand(B, H) if alpha.dim() <= 2 else None
    except RuntimeError:
        expanded = None
    if expanded is None:
        raise ValueError(f"diff_attention: alpha of shape {tuple(alpha.shape)} does not broadcast to (B, H) = ({B}, {H})")
    # Autograd of expand/to sums dalpha back to alpha's own shape and dtype.
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    return expanded.to(acc)


def diff_attention(
    q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, alpha: float | Tensor, scale: float | None = None
) -> Tensor:
    """Dual-softmax differential attention O = (softmax(Q1 K1^T s) - alpha softmax(Q2 K2^T s)) V, fused.

    q1, q2: (B, H, M, d); k1, k2: (B, H, N, d); v: (B, H, N, dv); any M, N >= 1; d, dv <= 512.
    alpha: a float or a tensor broadcastable to (B, H) (differentiable). scale defaults to d ** -0.5.
    fp32/fp16/bf16 inputs (one dtype) accumulate in fp32; the output has the input dtype.
    Differentiable w.r.t. q1, k1, q2, k2, v and a tensor alpha; visible to torch.compile as a custom op.
    """
    _check_inputs(q1, k1, q2, k2, v)
    alpha_t = _alpha_tensor(alpha, q1)
    if scale is None:
        scale = q1.shape[-1] ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"diff_attention: scale must be a float or None, got {type(scale).__name__}")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q1, k1, q2, k2, v, alpha_t))
    o, _, _, _ = diff_attention_fwd(q1, k1, q2, k2, v, alpha_t, float(scale), needs_grad)
    return o
