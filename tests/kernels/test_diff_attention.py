"""Tests of the fused differential-attention op against float64 references.

Tests named `test_triton_path_*` run the Triton kernels: on CUDA when a GPU is present, and on CPU tensors when
this module is imported with TRITON_INTERPRET=1. `test_interpreter_subprocess` re-runs this file that way in a
child process (the variable must be set before the kernels are imported, and the rest of the suite imports
them without it), so a plain `pytest tests/` on a CPU machine exercises the kernels through the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from iqa_plugins.kernels import diff_attention, diff_attention_reference, diff_attention_sdpa
from iqa_plugins.kernels.diff_attention import CPU_USES_TRITON, uses_triton
from iqa_plugins.kernels.diff_attention.op import diff_attention_bwd, diff_attention_fwd

HAS_CUDA = torch.cuda.is_available()
# The interpreter run must test the interpreter even on a machine that also has a GPU.
KERNEL_DEVICE = "cpu" if CPU_USES_TRITON else ("cuda" if HAS_CUDA else None)
needs_kernels = pytest.mark.skipif(KERNEL_DEVICE is None, reason="Triton path needs CUDA or TRITON_INTERPRET=1")
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
REPO = Path(__file__).resolve().parents[2]


def make_inputs(
    B: int, H: int, M: int, N: int, d: int, dv: int, *, dtype=torch.float32, device="cpu", noncontig: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Fresh random q1, k1, q2, k2, v (leaf tensors requiring grad); optionally strided views."""
    def one(rows: int, feat: int) -> torch.Tensor:
        if noncontig:  # (B, rows, H, feat) transposed, as a split fused projection gives
            t = torch.randn(B, rows, H, feat, device=device)
            return t.to(dtype).transpose(1, 2).detach().requires_grad_()
        return torch.randn(B, H, rows, feat, device=device).to(dtype).requires_grad_()

    q1, k1, q2, k2 = one(M, d), one(N, d), one(M, d), one(N, d)
    if noncontig:  # v with a non-unit feature stride as well
        v = torch.randn(B, H, dv, N, device=device).to(dtype).transpose(-1, -2).detach().requires_grad_()
    else:
        v = torch.randn(B, H, N, dv, device=device).to(dtype).requires_grad_()
    return q1, k1, q2, k2, v


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a).all(), "non-finite values"
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom > 0 else (a - b).norm().item()


def cancellation_factors(inputs, alpha, grad_out, scale: float | None = None) -> dict[str, float]:
    """For each result, the size of the terms that cancel in it over the size of the result (>= 1, float64).

    Rounding errors scale with the terms, not with their difference, so a relative error bound has to grow with
    this factor: with M = N = 1, O = v - alpha v is tiny next to its terms when alpha is close to 1.
    O = P1 V - alpha P2 V; dV = P1^T dO - alpha P2^T dO; dQ, dK of stream i through dS_i = P_i (dP - r_i);
    dalpha = -sum(dO * O2).
    """
    q1, k1, q2, k2, v = (t.detach().double().cpu() for t in inputs)
    B, H = q1.shape[:2]
    s = q1.shape[-1] ** -0.5 if scale is None else scale
    a = (alpha.detach().double().cpu() if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha)).double())
    a = a.expand(B, H)[..., None, None]
    do = grad_out.detach().double().cpu()
    p1 = torch.softmax(q1 @ k1.transpose(-2, -1) * s, -1)
    p2 = torch.softmax(q2 @ k2.transpose(-2, -1) * s, -1)
    o1, o2 = p1 @ v, p2 @ v
    dp = do @ v.transpose(-2, -1)
    r1 = (do * o1).sum(-1, keepdim=True)
    r2 = (do * o2).sum(-1, keepdim=True)

    def ratio(terms: torch.Tensor, result: torch.Tensor) -> float:
        return max(1.0, terms.norm().item() / max(result.norm().item(), 1e-300))

    stream1 = ratio(p1 * (dp.abs() + r1.abs()), p1 * (dp - r1))
    stream2 = ratio(p2 * (dp.abs() + r2.abs()), p2 * (dp - r2))
    # dalpha is summed to alpha's own shape (a per-head alpha sums over the batch as well)
    alpha_shape = alpha.shape if isinstance(alpha, torch.Tensor) else (B, H)
    dalpha_terms = (do * o2).abs().sum((-1, -2)).sum_to_size(alpha_shape)
    dalpha = (do * o2).sum((-1, -2)).sum_to_size(alpha_shape)
    return {
        "out": ratio(o1.norm() + (a * o2).norm(), o1 - a * o2),
        "v": ratio((p1.transpose(-2, -1) @ do).norm() + (a * p2).transpose(-2, -1).matmul(do).norm(),
                   (p1 - a * p2).transpose(-2, -1) @ do),
        "q1": stream1, "k1": stream1, "q2": stream2, "k2": stream2,
        "alpha": ratio(dalpha_terms, dalpha),
    }


def check_vs_float64(inputs, alpha, tol: float, scale: float | None = None) -> None:
    """Forward and all gradients of `diff_attention` against the literal reference in float64.

    `tol` is the relative error allowed for a well-conditioned result; each result's bound is `tol` times its
    cancellation factor (`cancellation_factors`), so the check is as tight as each case allows.
    """
    out = diff_attention(*inputs, alpha, scale)
    assert out.dtype == inputs[0].dtype and out.shape == (*inputs[0].shape[:3], inputs[4].shape[-1])
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    ref_alpha = alpha.detach().double().requires_grad_() if isinstance(alpha, torch.Tensor) else alpha
    ref = diff_attention_reference(*ref_in, ref_alpha, scale)
    ref.backward(grad_out.double())
    bound = {k: tol * f for k, f in cancellation_factors(inputs, alpha, grad_out, scale).items()}
    assert rel_err(out, ref) < bound["out"], f"output rel err {rel_err(out, ref):.2e} >= {bound['out']:.2e}"
    for name, t, r in zip(("q1", "k1", "q2", "k2", "v"), inputs, ref_in):
        err = rel_err(t.grad, r.grad)
        assert err < bound[name], f"d{name} rel err {err:.2e} >= {bound[name]:.2e}"
    if isinstance(alpha, torch.Tensor) and alpha.requires_grad:
        assert alpha.grad.shape == alpha.shape
        err = rel_err(alpha.grad, ref_alpha.grad)
        assert err < bound["alpha"], f"dalpha rel err {err:.2e} >= {bound['alpha']:.2e}"


# ---------------------------------------------------------------- Triton path (CUDA, or CPU interpreter)

# (B, H, M, N, d, dv): every required N with M in {1, N}, d in {32, 64, 384}, tails not multiple of any block.
TRITON_SHAPES = [
    (1, 1, 1, 1, 32, 32),
    (2, 2, 7, 7, 32, 24),
    (1, 1, 1, 7, 64, 64),
    (1, 1, 50, 50, 64, 64),
    (1, 2, 1, 50, 32, 40),
    (1, 1, 1, 197, 64, 64),
    (1, 1, 197, 197, 32, 32),
    (1, 1, 1, 577, 384, 384),
    (1, 1, 577, 577, 32, 32),
    (2, 1, 70, 50, 384, 40),
]


@needs_kernels
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_path_matches_float64(shape):
    B, H = shape[:2]
    inputs = make_inputs(*shape, device=KERNEL_DEVICE)
    assert uses_triton(inputs[0])
    alpha = (torch.rand(B, H, device=KERNEL_DEVICE) + 0.1).requires_grad_()  # fresh draw: alpha near 1 included
    check_vs_float64(inputs, alpha, tol=2e-5)


@needs_kernels
def test_triton_path_noncontiguous_broadcast_alpha_and_scale():
    inputs = make_inputs(2, 3, 9, 33, 32, 20, device=KERNEL_DEVICE, noncontig=True)
    assert not inputs[0].is_contiguous() and inputs[4].stride(-1) != 1
    alpha = (torch.rand(3, device=KERNEL_DEVICE) + 0.1).requires_grad_()  # per-head, broadcast over batch
    check_vs_float64(inputs, alpha, tol=2e-5, scale=0.37)


@needs_kernels
def test_triton_path_python_float_alpha():
    inputs = make_inputs(1, 2, 12, 19, 32, 16, device=KERNEL_DEVICE)
    check_vs_float64(inputs, 0.8, tol=2e-5)


def with_huge_row_offsets(inputs, offset: float = 2000.0):
    """Give every query row a logit offset of about +-offset * scale (+-250 at d = 64) in both streams.

    Feature 0 of every key is 1 and of every query +-offset, so scores gain a row-constant term: the softmaxes
    (and so the exact outputs and gradients) stay well-conditioned, but exp() of the raw logits overflows
    (or underflows to 0/0) unless the kernel subtracts running row maxima.
    """
    q1, k1, q2, k2, v = (t.detach().clone() for t in inputs)
    M = q1.shape[2]
    signs = torch.where(torch.arange(M, device=q1.device) % 2 == 0, 1.0, -1.0)
    for q, k in ((q1, k1), (q2, k2)):
        q[..., 0] = offset * signs * (0.5 + torch.rand(M, device=q.device))
        k[..., 0] = 1.0
    return [t.requires_grad_() for t in (q1, k1, q2, k2, v)]


@needs_kernels
def test_triton_path_large_logits_stay_finite():
    inputs = with_huge_row_offsets(make_inputs(1, 2, 20, 50, 64, 32, device=KERNEL_DEVICE))
    assert (inputs[0][..., 0].abs() * 64**-0.5).min() > 100  # logits beyond exp's fp32 range
    alpha = torch.tensor([[0.6, 0.3]], device=KERNEL_DEVICE, requires_grad=True)
    # fp32 logits of size ~250 carry ~250 * 2^-24 absolute rounding each, i.e. ~2e-5 relative error in P;
    # the cancelling dalpha sum amplifies that a few times, hence a looser bound than at unit-scale logits.
    check_vs_float64(inputs, alpha, tol=5e-4)


@needs_kernels
@pytest.mark.parametrize("splits", [2, 3])
def test_triton_path_split_n_decode_combine(splits):
    from iqa_plugins.kernels.diff_attention import reference, triton_kernels

    q1, k1, q2, k2, v = (t.detach() for t in make_inputs(1, 2, 5, 300, 32, 48, device=KERNEL_DEVICE))
    alpha = torch.rand(1, 2, device=KERNEL_DEVICE)
    got = triton_kernels.forward(q1, k1, q2, k2, v, alpha, 0.2, True, num_splits=splits)
    want = reference.forward_with_stats(
        *(t.double() for t in (q1, k1, q2, k2, v)), alpha.double(), 0.2, True
    )
    for name, g, w in zip(("o", "o2", "lse1", "lse2"), got, want):
        assert rel_err(g, w) < 1e-5, name


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_path_half_precision(dtype):
    inputs = make_inputs(1, 2, 17, 45, 64, 32, device=KERNEL_DEVICE, dtype=dtype)
    alpha = torch.rand(1, 2, device=KERNEL_DEVICE).requires_grad_()
    check_vs_float64(inputs, alpha, tol=2e-2 if dtype == torch.bfloat16 else 5e-3)


@needs_kernels
def test_triton_path_opcheck():
    q1, k1, q2, k2, v = make_inputs(1, 2, 5, 9, 16, 8, device=KERNEL_DEVICE)
    alpha = torch.rand(1, 2, device=KERNEL_DEVICE, requires_grad=True)
    torch.library.opcheck(diff_attention_fwd, (q1, k1, q2, k2, v, alpha, 0.25, True))


@needs_kernels
def test_triton_path_alpha_expanded_per_head_parameter_is_not_copied():
    from iqa_plugins.kernels.diff_attention import op, triton_kernels

    B, H = 3, 4
    inputs = make_inputs(B, H, 1, 40, 32, 24, device=KERNEL_DEVICE)
    per_head = (torch.rand(H, device=KERNEL_DEVICE) + 0.1).requires_grad_()
    # a per-expert parameter with experts stacked as heads reaches the kernels as a stride-0 view, uncopied
    alpha = op._alpha_tensor(per_head, inputs[0])
    assert alpha.stride() == (0, 1) and alpha.data_ptr() == per_head.data_ptr()
    view = triton_kernels._alpha_bh(alpha.detach(), B, H, alpha.device)
    assert view.data_ptr() == per_head.data_ptr() and view.stride() == (0, 1)
    check_vs_float64(inputs, per_head, tol=2e-5)


@needs_kernels
def test_triton_path_backward_fake_strides_match_for_transposed_inputs():
    """The backward's fake implementation must give the real outputs' strides (opcheck compares them), or
    torch.compile training breaks for inputs that are views of a fused projection."""
    q1, k1, q2, k2, v = (t.detach() for t in make_inputs(2, 3, 5, 7, 16, 8, device=KERNEL_DEVICE, noncontig=True))
    alpha = torch.rand(2, 3, device=KERNEL_DEVICE)
    o, o2, lse1, lse2 = diff_attention_fwd(q1, k1, q2, k2, v, alpha, 0.3, True)
    args = (torch.randn_like(o), q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2, 0.3)
    torch.library.opcheck(diff_attention_bwd, args)


# ---------------------------------------------------------------- reference path and op plumbing (CPU)

cpu_reference_only = pytest.mark.skipif(CPU_USES_TRITON, reason="CPU tensors go through Triton in this process")


@cpu_reference_only
@pytest.mark.parametrize("shape", [(1, 2, 1, 1, 32, 32), (2, 1, 7, 50, 64, 48), (1, 1, 1, 577, 384, 384)])
def test_cpu_without_interpreter_uses_reference(shape):
    inputs = make_inputs(*shape)
    assert not uses_triton(inputs[0])
    alpha = (torch.rand(shape[0], shape[1]) + 0.1).requires_grad_()
    check_vs_float64(inputs, alpha, tol=1e-5)
    with torch.no_grad():
        plain = diff_attention_reference(*inputs, alpha)
        assert rel_err(diff_attention(*inputs, alpha), plain) < 1e-5


def test_importing_kernels_does_not_import_triton_kernels():
    code = (
        "import sys, iqa_plugins.kernels as k; "
        "assert 'iqa_plugins.kernels.diff_attention.triton_kernels' not in sys.modules; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_literal_reference_and_two_sdpa_baseline_agree():
    q1, k1, q2, k2, v = (t.detach().double() for t in make_inputs(2, 3, 11, 23, 16, 12))
    alpha = torch.rand(2, 3, dtype=torch.float64)
    lit = diff_attention_reference(q1, k1, q2, k2, v, alpha)
    sdpa = diff_attention_sdpa(q1, k1, q2, k2, v, alpha)
    # Independent check of the maths: explicit softmax loops over one slice.
    s1 = torch.softmax(q1[1, 2] @ k1[1, 2].T / 4.0, -1)
    s2 = torch.softmax(q2[1, 2] @ k2[1, 2].T / 4.0, -1)
    assert torch.allclose(lit[1, 2], (s1 - alpha[1, 2] * s2) @ v[1, 2], atol=1e-12)
    assert torch.allclose(lit, sdpa, atol=1e-12)


def test_gradcheck_float64_through_op():
    # float64 always runs the reference forward/backward of the op (the kernels are checked against it above).
    q1, k1, q2, k2, v = (t.detach().double().requires_grad_() for t in make_inputs(1, 2, 3, 4, 5, 3))
    alpha = torch.rand(2, dtype=torch.float64, requires_grad=True)  # per head, broadcast over the batch
    assert torch.autograd.gradcheck(lambda *a: diff_attention(*a), (q1, k1, q2, k2, v, alpha))


@cpu_reference_only
def test_opcheck_reference_path():
    q1, k1, q2, k2, v = make_inputs(2, 1, 4, 6, 8, 4)
    alpha = torch.rand(2, 1, requires_grad=True)
    torch.library.opcheck(diff_attention_fwd, (q1, k1, q2, k2, v, alpha, 0.3, True))
    # The inference variant (no O2 saved) is only valid without autograd.
    plain = tuple(t.detach() for t in (q1, k1, q2, k2, v, alpha))
    torch.library.opcheck(diff_attention_fwd, (*plain, 0.3, False))


@cpu_reference_only
def test_opcheck_backward_reference_path_transposed_inputs():
    q1, k1, q2, k2, v = (t.detach() for t in make_inputs(2, 3, 5, 7, 8, 8, noncontig=True))
    alpha = torch.rand(2, 3)
    o, o2, lse1, lse2 = diff_attention_fwd(q1, k1, q2, k2, v, alpha, 0.3, True)
    torch.library.opcheck(diff_attention_bwd, (torch.randn_like(o), q1, k1, q2, k2, v, alpha, o, o2, lse1, lse2, 0.3))


_BLOCK_TRITON = "import sys; sys.modules['triton'] = None\n"  # `import triton` raises ImportError


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_missing_triton_falls_back_to_reference_with_one_warning(interpret):
    code = _BLOCK_TRITON + (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from iqa_plugins.kernels import diff_attention, diff_attention_reference\n"
        "    from iqa_plugins.kernels.diff_attention import uses_triton\n"
        "    q = [torch.randn(1, 2, 3, 8) for _ in range(5)]\n"
        "    out = [diff_attention(*q, 0.5) for _ in range(2)]\n"
        "assert not uses_triton(q[0])\n"
        "assert torch.allclose(out[0], diff_attention_reference(*q, 0.5), atol=1e-6)\n"
        "msgs = [str(w.message) for w in caught if 'Triton' in str(w.message)]\n"
        "print(len(msgs), msgs)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": interpret}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    if interpret == "1":  # the interpreter wanted Triton: one warning naming the cause, not one per call
        assert res.stdout.startswith("1 ") and "cannot be imported" in res.stdout, res.stdout
    else:  # plain CPU tensors never wanted Triton: nothing to warn about
        assert res.stdout.startswith("0 "), res.stdout


def test_old_triton_is_refused_with_a_warning(monkeypatch):
    import triton

    from iqa_plugins.kernels.diff_attention import op

    monkeypatch.setattr(op, "_kernels", None)
    monkeypatch.setattr(op, "_unavailable", None)
    monkeypatch.setattr(triton, "__version__", "3.5.1")
    with pytest.warns(RuntimeWarning, match=r"Triton 3\.5\.1 is older than the supported 3\.6"):
        assert op._triton() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once: a second call must not warn again
        assert op._triton() is None
    monkeypatch.setattr(op, "_unavailable", None)
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    assert op._triton() is not None


@cpu_reference_only
def test_torch_compile_fullgraph_forward_and_backward():
    inputs = make_inputs(1, 2, 3, 10, 16, 8)
    alpha = torch.rand(1, 2, requires_grad=True)

    def block(q1, k1, q2, k2, v, a):
        return diff_attention(q1 * 2.0, k1, q2, k2, v, a).relu().sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    loss = compiled(*inputs, alpha)
    loss.backward()
    grads = [t.grad.clone() for t in (*inputs, alpha)]
    for t in (*inputs, alpha):
        t.grad = None
    block(*inputs, alpha).backward()
    assert torch.allclose(loss, block(*inputs, alpha))
    for g, t in zip(grads, (*inputs, alpha)):
        assert torch.allclose(g, t.grad, atol=1e-6)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: {**a, "q1": a["q1"][0]}, "q1 must be 4-D"),
        (lambda a: {**a, "k2": a["k2"][:, :, :-1]}, "k2 must have shape"),
        (lambda a: {**a, "q2": a["q2"][..., :-1]}, "q2 must have shape"),
        (lambda a: {**a, "v": a["v"][:, :, :-1]}, "v must have shape"),
        (lambda a: {**a, "v": a["v"].half()}, "v has dtype"),
        (lambda a: {**a, "k1": a["k1"].int()}, "k1 has dtype"),
        (lambda a: {**a, "v": a["v"].to("meta")}, "v is on meta"),
        (lambda a: {**a, "alpha": torch.rand(3, 3)}, "alpha of shape"),
        (lambda a: {**a, "alpha": "x"}, "alpha must be a float or a tensor"),
        (lambda a: {**a, "q1": torch.rand(1, 2, 3, 600), "k1": torch.rand(1, 2, 5, 600),
                    "q2": torch.rand(1, 2, 3, 600), "k2": torch.rand(1, 2, 5, 600)}, "exceeds the supported 512"),
    ],
)
def test_bad_inputs_name_the_argument(mutate, match):
    q1, k1, q2, k2, v = (t.detach() for t in make_inputs(1, 2, 3, 5, 8, 4))
    args = mutate({"q1": q1, "k1": k1, "q2": q2, "k2": k2, "v": v, "alpha": 0.5})
    with pytest.raises((ValueError, TypeError), match=match):
        diff_attention(**args)


def _interpreter_works() -> bool:
    import numpy
    import triton

    from iqa_plugins.kernels.diff_attention.op import _version_tuple

    return _version_tuple(triton.__version__) >= (3, 8) or _version_tuple(numpy.__version__) < (2, 4)


@pytest.mark.slow
@pytest.mark.skipif(CPU_USES_TRITON, reason="already running under the interpreter")
@pytest.mark.skipif(not _interpreter_works(), reason="Triton's interpreter needs triton >= 3.8 with numpy >= 2.4")
def test_interpreter_subprocess():
    """Run every `test_triton_path_*` test on CPU through Triton's interpreter; fail if any fails or skips."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-k", "triton_path", "-q", "-p", "no:cacheprovider"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=850)
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, tail
    assert " passed" in tail and " skipped" not in tail and " failed" not in tail, tail


# ---------------------------------------------------------------- GPU only: low precision at real sizes


@pytest.mark.parametrize(
    "shape",
    [(64, 12, 197, 197, 64, 64), (8, 12, 577, 577, 64, 64), (64, 10, 1, 577, 384, 384), (2, 10, 577, 577, 384, 384),
     (3, 5, 1, 1000, 128, 96)],
    ids=lambda s: "x".join(map(str, s)),
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_real_shapes_vs_float64(shape, dtype):
    inputs = make_inputs(*shape, dtype=dtype, device="cuda")
    alpha = (torch.rand(shape[0], shape[1], device="cuda") * 0.8).requires_grad_()
    tol = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 2e-5}[dtype]
    check_vs_float64(inputs, alpha, tol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_tensors_on_another_device_than_the_current_one():
    inputs = make_inputs(2, 3, 17, 45, 64, 32, device="cuda:1")
    alpha = torch.rand(2, 3, device="cuda:1").requires_grad_()
    with torch.cuda.device(0):  # the kernels must launch on cuda:1, where the tensors live
        check_vs_float64(inputs, alpha, tol=2e-5)
