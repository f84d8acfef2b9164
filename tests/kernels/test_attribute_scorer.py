"""Compiled ExIQA attribute scorer vs its literal PyTorch reference, autograd, fallback, errors.

With IQA_PLUGINS_REQUIRE_EXT=1 (set by CI) a missing C++ extension fails the compiled tests instead
of skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from iqa_plugins.kernels import (
    attribute_scores,
    attribute_scores_backend,
    attribute_scores_reference,
)
from iqa_plugins.kernels.attribute_scorer import op as scorer_op


def require_compiled() -> None:
    """Skip without the C++ extension, or fail when CI demands it (IQA_PLUGINS_REQUIRE_EXT=1)."""
    if scorer_op.EXTENSION_LOADED:
        return
    reason = f"attribute_scorer C++ extension not built ({scorer_op.EXTENSION_ERROR}); run `make build`"
    if os.environ.get("IQA_PLUGINS_REQUIRE_EXT") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def compiled() -> None:
    require_compiled()


def random_groups(num_attr: int) -> tuple[torch.Tensor, int]:
    """Random uneven assignment in shuffled order: groups 0 and 1 hold one attribute each, the others
    share the rest at random (possibly leaving one empty); A = 1 gets an empty second group."""
    if num_attr == 1:
        return torch.zeros(1, dtype=torch.long), 2
    num_groups = max(3, num_attr // 5)
    group = torch.randint(2, num_groups, (num_attr,))
    group[torch.randperm(num_attr)[:2]] = torch.tensor([0, 1])
    return group, num_groups


def clip_like(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random embeddings of norm ~1, as CLIP features, so that s <e, t> lands in the sigmoid's live range."""
    return torch.randn(*shape, dtype=dtype) / shape[-1] ** 0.5


def make_inputs(batch: int, num_attr: int, dim: int, dtype: torch.dtype = torch.float32):
    group, num_groups = random_groups(num_attr)
    return {
        "image_emb": clip_like(batch, dim, dtype=dtype) * (1 + torch.rand(batch, 1, dtype=dtype)),
        "text_pos": clip_like(num_attr, dim, dtype=dtype),
        "text_neg": clip_like(num_attr, dim, dtype=dtype),
        "scale": float(torch.empty(1).uniform_(10.0, 100.0)),
        "group_index": group,
        "weight_logits": torch.randn(num_attr, dtype=dtype) * 2,
        "num_groups": num_groups,
    }


def test_backend_reports_compiled(compiled) -> None:
    assert attribute_scores_backend("cpu") == "compiled-cpu"
    assert attribute_scores_backend() in {"compiled-cpu", "compiled-cuda", "reference"}


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dim", [512, 768])
@pytest.mark.parametrize("num_attr", [1, 125, 1000])
@pytest.mark.parametrize("batch", [1, 3, 257])
def test_matches_reference_fp32(compiled, batch: int, num_attr: int, dim: int, normalize: bool) -> None:
    inputs = make_inputs(batch, num_attr, dim)
    attr, dist = attribute_scores(**inputs, normalize=normalize)
    attr_ref, dist_ref = attribute_scores_reference(**inputs, normalize=normalize)
    assert attr.shape == (batch, num_attr) and dist.shape == (batch, inputs["num_groups"])
    assert attr.dtype == dist.dtype == torch.float32
    torch.testing.assert_close(attr, attr_ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(dist, dist_ref, rtol=0, atol=2e-5)
    # Most probabilities must be unsaturated, or the comparison proves little.
    if attr.numel() >= 100:
        assert ((attr > 1e-3) & (attr < 1 - 1e-3)).float().mean() > 0.3


@pytest.mark.parametrize("normalize", [False, True])
def test_matches_reference_fp64_and_difference_form(compiled, normalize: bool) -> None:
    inputs = make_inputs(17, 125, 512, dtype=torch.float64)
    attr, dist = attribute_scores(**inputs, normalize=normalize)
    attr_ref, dist_ref = attribute_scores_reference(**inputs, normalize=normalize)
    torch.testing.assert_close(attr, attr_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(dist, dist_ref, rtol=0, atol=1e-12)
    # Passing the single difference matrix (text_neg=None) is the same model.
    diff_inputs = dict(inputs, text_pos=inputs["text_pos"] - inputs["text_neg"], text_neg=None)
    attr_diff, dist_diff = attribute_scores(**diff_inputs, normalize=normalize)
    torch.testing.assert_close(attr_diff, attr_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(dist_diff, dist_ref, rtol=0, atol=1e-12)


def test_group_semantics(compiled) -> None:
    """Weights are a softmax within each group, empty groups score 0, singleton groups copy their attribute."""
    inputs = make_inputs(6, 9, 64, dtype=torch.float64)
    inputs.update(group_index=torch.tensor([3, 0, 3, 1, 3, 0, 4, 0, 3]), num_groups=5)  # group 2 empty
    attr, dist = attribute_scores(**inputs)
    logits = inputs["weight_logits"]
    for g, members in {0: [1, 5, 7], 1: [3], 3: [0, 2, 4, 8], 4: [6]}.items():
        w = logits[members].softmax(0)
        torch.testing.assert_close(dist[:, g], attr[:, members] @ w, rtol=0, atol=1e-12)
    assert torch.equal(dist[:, 2], torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(dist[:, 1], attr[:, 3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_computed_in_fp32(compiled, dtype: torch.dtype) -> None:
    inputs = make_inputs(5, 125, 512, dtype=dtype)
    attr, dist = attribute_scores(**inputs, normalize=True)
    attr_ref, dist_ref = attribute_scores_reference(**inputs, normalize=True)
    assert attr.dtype == dist.dtype == dtype
    torch.testing.assert_close(attr.float(), attr_ref.float(), rtol=0, atol=1e-2)
    torch.testing.assert_close(dist.float(), dist_ref.float(), rtol=0, atol=1e-2)


@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck(compiled, normalize: bool) -> None:
    group = torch.tensor([2, 0, 2, 1, 0, 2, 0])  # uneven, group 1 a singleton
    emb = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(7, dtype=torch.float64, requires_grad=True)

    def fn(e, tp, tn, wl):
        return attribute_scores(e, tp, tn, 0.7, group, wl, 3, normalize)

    assert torch.autograd.gradcheck(fn, (emb, pos, neg, logits))
    # Gradients agree with autograd through the reference too (text_neg=None form here).
    diff = (pos - neg).detach().requires_grad_(True)
    outs = attribute_scores(emb, diff, None, 0.7, group, logits, 3, normalize)
    outs_ref = attribute_scores_reference(emb, diff, None, 0.7, group, logits, 3, normalize)
    cot = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, (emb, diff, logits), cot)
    grads_ref = torch.autograd.grad(outs_ref, (emb, diff, logits), cot)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(compiled, dtype: torch.dtype) -> None:
    group = torch.tensor([1, 0, 1, 1, 3, 0])  # group 2 empty
    for requires_grad, normalize in [(False, False), (True, True), (True, False)]:
        args = (
            torch.randn(4, 8, dtype=dtype, requires_grad=requires_grad),
            torch.randn(6, 8, dtype=dtype, requires_grad=requires_grad),
            group,
            torch.randn(6, dtype=dtype, requires_grad=requires_grad),
            2.5,
            4,
            normalize,
        )
        torch.library.opcheck(torch.ops.iqa_plugins.attribute_scores.default, args)


def test_stable_for_huge_scale(compiled) -> None:
    inputs = make_inputs(33, 125, 512)
    inputs["image_emb"] = inputs["image_emb"] * 1e4
    for scale in (1e6, 1e30):
        attr, dist = attribute_scores(**dict(inputs, scale=scale))
        attr_ref, dist_ref = attribute_scores_reference(**dict(inputs, scale=scale))
        for out in (attr, dist):
            assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
        # Saturated: both 0 and 1 occur, and agree with the reference.
        assert (attr < 1e-6).any() and (attr > 1 - 1e-6).any()
        torch.testing.assert_close(attr, attr_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(dist, dist_ref, rtol=0, atol=1e-6)
    emb = inputs["image_emb"].detach().requires_grad_(True)
    attr, dist = attribute_scores(**dict(inputs, image_emb=emb, scale=1e6))
    (attr.sum() + dist.sum()).backward()
    assert torch.isfinite(emb.grad).all()


def test_fallback_reports_once_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = make_inputs(7, 125, 512)
    expected = attribute_scores_reference(**inputs, normalize=True)
    monkeypatch.setattr(scorer_op, "EXTENSION_LOADED", False)
    monkeypatch.setattr(scorer_op, "EXTENSION_ERROR", "simulated: _C missing")
    monkeypatch.setattr(scorer_op, "_fallback_reported", False)
    assert attribute_scores_backend("cpu") == "reference"
    with pytest.warns(RuntimeWarning, match="simulated: _C missing.*pure-PyTorch reference"):
        first = attribute_scores(**inputs, normalize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second message would raise here
        second = attribute_scores(**inputs, normalize=True)
    for out in (first, second):
        torch.testing.assert_close(out[0], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(out[1], expected[1], rtol=0, atol=0)


@pytest.mark.parametrize("use_reference", [False, True])
def test_errors_name_the_argument(use_reference: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if use_reference:
        monkeypatch.setattr(scorer_op, "EXTENSION_LOADED", False)
        monkeypatch.setattr(scorer_op, "_fallback_reported", True)
    else:
        require_compiled()
    good = make_inputs(2, 6, 8)

    def call(**changes):
        return attribute_scores(**dict(good, **changes))

    with pytest.raises(ValueError, match="image_emb"):
        call(image_emb=torch.randn(8))
    with pytest.raises(ValueError, match="text_pos"):
        call(text_pos=torch.randn(6, 9))
    with pytest.raises(ValueError, match="text_neg"):
        call(text_neg=torch.randn(5, 8))
    with pytest.raises(ValueError, match="weight_logits"):
        call(weight_logits=torch.randn(5))
    with pytest.raises(ValueError, match="group_index"):
        call(group_index=torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="group_index"):
        call(group_index=torch.tensor([0, 1, 2, 3, 4, good["num_groups"]]))
    with pytest.raises(ValueError, match="group_index"):
        call(group_index=torch.tensor([0, -1, 0, 0, 0, 0]))
    with pytest.raises(TypeError, match="group_index"):
        call(group_index=torch.zeros(6))
    with pytest.raises(TypeError, match="text_neg"):
        call(text_neg=good["text_neg"].double())
    with pytest.raises(TypeError, match="weight_logits"):
        call(weight_logits=good["weight_logits"].half())
    with pytest.raises(TypeError, match="image_emb"):
        call(image_emb=torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="text_pos is on meta"):
        call(text_pos=good["text_pos"].to("meta"))
    with pytest.raises(ValueError, match="num_groups"):
        call(num_groups=0)
    with pytest.raises(ValueError, match="scale"):
        call(scale=float("nan"))


def test_op_rejects_bad_input_directly(compiled) -> None:
    """The C++ op checks its own inputs too (it can be called without the wrapper)."""
    good = make_inputs(2, 6, 8)
    args = [good["image_emb"], good["text_pos"], good["group_index"], good["weight_logits"], 1.0, good["num_groups"], False]
    with pytest.raises(RuntimeError, match="text_diff"):
        torch.ops.iqa_plugins.attribute_scores(*args[:1], torch.randn(6, 3), *args[2:])
    with pytest.raises(RuntimeError, match="group_index"):
        torch.ops.iqa_plugins.attribute_scores(*args[:2], good["group_index"].int(), *args[3:])


@pytest.mark.slow
def test_torch_compile_fullgraph(compiled) -> None:
    """The wrapper and the op trace into one graph (fake kernel + no graph breaks)."""
    inputs = make_inputs(4, 30, 64)
    fn = torch.compile(lambda e: attribute_scores(**dict(inputs, image_emb=e), normalize=True), fullgraph=True)
    attr, dist = fn(inputs["image_emb"])
    attr_ref, dist_ref = attribute_scores_reference(**inputs, normalize=True)
    torch.testing.assert_close(attr, attr_ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(dist, dist_ref, rtol=0, atol=2e-5)


def test_device_kernels_get_group_values_checked_on_host_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's host-side check, run on CPU by treating the CPU as a device whose kernel does not check
    group_index values: a bad value raises ValueError before any launch; a good tensor is read once and read
    again only after an in-place change or with another num_groups."""
    launches, reads = [], []
    real_check = scorer_op.check_group_values
    monkeypatch.setattr(scorer_op, "KERNEL_CHECKS_GROUP_VALUES", frozenset())
    monkeypatch.setattr(scorer_op, "_has_kernel_for", lambda device_type: True)
    monkeypatch.setattr(scorer_op, "_launch", lambda *args: launches.append(args) or (None, None))
    monkeypatch.setattr(scorer_op, "check_group_values", lambda g, n: reads.append(n) or real_check(g, n))
    monkeypatch.setattr(scorer_op, "_validated_groups", None)
    inputs = make_inputs(3, 12, 16)
    groups = inputs["group_index"]
    for bad in (groups.clone().fill_(inputs["num_groups"]), torch.where(groups == 0, -1, groups)):
        with pytest.raises(ValueError, match=r"group_index values must lie in \[0, num_groups"):
            attribute_scores(**dict(inputs, group_index=bad))
    assert launches == []
    attribute_scores(**inputs)
    attribute_scores(**inputs)
    assert len(launches) == 2 and len(reads) == 3  # two bad tensors, then the good one once
    groups[5] = inputs["num_groups"] + 3  # in place: the version counter moves, the values are read again
    with pytest.raises(ValueError, match="group_index"):
        attribute_scores(**inputs)
    groups[5] = 0
    attribute_scores(**inputs)
    with pytest.raises(ValueError, match="group_index"):  # fewer groups than the values need
        attribute_scores(**dict(inputs, num_groups=int(groups.max())))
    assert len(launches) == 3 and len(reads) == 6


needs_cuda_kernel = pytest.mark.skipif(
    not torch.cuda.is_available() or attribute_scores_backend("cuda") != "compiled-cuda",
    reason="needs a CUDA device and the scorer built with IQA_PLUGINS_BUILD_CUDA=1",
)


@pytest.mark.gpu
@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 512), (257, 125, 512), (64, 1000, 768), (5, 40000, 64)])
def test_gpu_cuda_kernel_matches_reference(shape, normalize: bool, dtype: torch.dtype) -> None:
    """The CUDA kernel (shared-memory group sums, and the dense path for many groups) against the float64
    reference on the same inputs, within twice the error of the reference itself run in the same dtype on the
    GPU (the rounding that dtype's dot products of this length and scale incur)."""
    batch, num_attr, dim = shape
    inputs = make_inputs(batch, num_attr, dim, dtype=dtype)
    if num_attr == 40000:  # more groups than shared memory holds: the kernel's dense GEMM path
        inputs.update(group_index=torch.randperm(num_attr) % 20000, num_groups=20000)
    as_double = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                 for k, v in inputs.items()}
    exact = attribute_scores_reference(**as_double, normalize=normalize)
    on_gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    same_dtype = attribute_scores_reference(**on_gpu, normalize=normalize)
    out = attribute_scores(**on_gpu, normalize=normalize)
    floor = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-3}[dtype]
    for got, ref, ref_same in zip(out, exact, same_dtype):
        assert got.is_cuda and got.dtype == dtype and torch.isfinite(got).all()
        tol = 2 * (ref_same.double().cpu() - ref).abs().max().item() + floor
        torch.testing.assert_close(got.double().cpu(), ref, rtol=0, atol=tol)


@pytest.mark.gpu
@needs_cuda_kernel
def test_gpu_bad_group_index_is_a_value_error_and_cuda_stays_usable() -> None:
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in make_inputs(4, 30, 64).items()}
    bad = inputs["group_index"].clone()
    bad[7] = inputs["num_groups"]
    with pytest.raises(ValueError, match="group_index"):
        attribute_scores(**dict(inputs, group_index=bad))
    attr, dist = attribute_scores(**inputs)  # no sticky device error: the launch never happened
    ref = attribute_scores_reference(**inputs)
    torch.testing.assert_close(dist, ref[1], rtol=0, atol=2e-5)


CUDA_SOURCE = Path(scorer_op.__file__).parent / "csrc" / "attribute_scorer_cuda.cu"
NVCC_ARCHS = ("80", "90")  # A100, H100/H200: the targets setup.py builds for without a visible GPU


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [Path(CUDA_HOME) / "bin" / "nvcc"] if CUDA_HOME else []
    found = shutil.which("nvcc")
    candidates += [Path(found)] if found else []
    return next((str(c) for c in candidates if c.is_file()), None)


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (CUDA toolkit not installed)")
def test_cuda_source_compiles_for_a100_and_h100_without_warnings(tmp_path: Path) -> None:
    """The scorer's .cu compiles with nvcc for sm_80 and sm_90 with the extension build's flags, no warning from
    the project's own code (torch's headers are system headers), and no register spills."""
    from torch.utils import cpp_extension

    includes = [flag for path in cpp_extension.include_paths(device_type="cuda") for flag in ("-isystem", path)]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in NVCC_ARCHS]
    cmd = [
        _nvcc(), "-c", str(CUDA_SOURCE), "-o", str(tmp_path / "scorer.o"), *gencode, "-std=c++20", "-O3",
        *cpp_extension.COMMON_NVCC_FLAGS, "-DIQA_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}", "-Xcompiler", "-fPIC", *includes,
        "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror", "-Xptxas", "-v",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{log[-4000:]}"
    compiled_for = set(re.findall(r"Compiling entry function '\S+' for 'sm_(\d+)'", log))
    assert compiled_for == set(NVCC_ARCHS), log[-2000:]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    assert spills and not any(spills), f"register spills:\n{log[-2000:]}"
