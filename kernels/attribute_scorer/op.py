"""torch.ops.iqa_plugins.attribute_scores: fake kernel, autograd, public wrapper and fallback.

The op itself (schema, CPU and optional CUDA kernels) lives in the C++ extension `_C`; importing it
registers the schema. Without the extension, `attribute_scores` runs the pure-PyTorch reference and
says so once per process.
"""

from __future__ import annotations

import warnings
import weakref

import torch

from .reference import attribute_scores_reference, group_softmax
from .validation import check_group_values, check_inputs

try:
    from . import _C  # noqa: F401  (loading the library registers iqa_plugins::attribute_scores)

    EXTENSION_LOADED = True
    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # not built (IQA_PLUGINS_NO_EXT=1, no compiler) or built for another torch
    EXTENSION_LOADED = False
    EXTENSION_ERROR = str(exc)

OP_NAME = "iqa_plugins::attribute_scores"
_NORM_EPS = 1e-12  # same as torch.nn.functional.normalize and the C++ kernel
_fallback_reported = False
# Device types whose compiled kernel rejects out-of-range group_index values itself with a clean error (the CPU
# loop does). Elsewhere (CUDA) a bad value could only trip a device-side assert, a sticky error that leaves the
# process's CUDA context unusable, so the wrapper checks the values on the host before the launch.
KERNEL_CHECKS_GROUP_VALUES = frozenset({"cpu"})
# The last group_index found valid: (weak reference, version counter, num_groups). ExIQA passes the same buffer
# every call, so the host read (a device synchronisation) happens once, again only after an in-place change.
_validated_groups: tuple[weakref.ref, int, int] | None = None


# Which device types have a compiled kernel, looked up once (torch.compile cannot trace the lookup).
_COMPILED_KERNELS: dict[str, bool] = {
    device_type: EXTENSION_LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, key)
    for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def _has_kernel_for(device_type: str) -> bool:
    return EXTENSION_LOADED and _COMPILED_KERNELS.get(device_type, False)


def attribute_scores_backend(device: torch.device | str | None = None) -> str:
    """Which implementation `attribute_scores` uses for tensors on `device`.

    Returns "compiled-cpu", "compiled-cuda" or "reference". With no device: CUDA if available, else CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return f"compiled-{device_type}" if _has_kernel_for(device_type) else "reference"


def _report_fallback(device_type: str) -> None:
    global _fallback_reported
    if _fallback_reported:
        return
    _fallback_reported = True
    why = f"the C++ extension did not load ({EXTENSION_ERROR})" if not EXTENSION_LOADED else (
        f"the C++ extension has no {device_type} kernel"
    )
    warnings.warn(
        f"iqa_plugins.kernels.attribute_scores: {why}; using the slower pure-PyTorch reference. "
        "Build it with `make build` (or `pip install -e .` with a C++ compiler).",
        RuntimeWarning,
        stacklevel=3,
    )


def _check_group_values_once(group_index: torch.Tensor, num_groups: int) -> None:
    """check_group_values, skipped when this very tensor, unchanged since, passed it with this num_groups."""
    global _validated_groups
    tracked = not group_index.is_inference()  # inference tensors have no version counter
    if tracked and _validated_groups is not None:
        ref, version, groups = _validated_groups
        if ref() is group_index and version == group_index._version and groups == num_groups:
            return
    check_group_values(group_index, num_groups)
    if tracked:
        _validated_groups = (weakref.ref(group_index), group_index._version, num_groups)


def _launch(
    image_emb: torch.Tensor, text_diff: torch.Tensor, group_index: torch.Tensor, weight_logits: torch.Tensor,
    scale: float, num_groups: int, normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return torch.ops.iqa_plugins.attribute_scores.default(
            image_emb, text_diff, group_index, weight_logits, float(scale), int(num_groups), bool(normalize)
        )
    except RuntimeError as exc:  # value errors found by the CPU kernel (group_index range)
        if "group_index values" in str(exc):
            raise ValueError(str(exc).splitlines()[0]) from exc
        raise


def attribute_scores(
    image_emb: torch.Tensor,
    text_pos: torch.Tensor,
    text_neg: torch.Tensor | None,
    scale: float,
    group_index: torch.Tensor,
    weight_logits: torch.Tensor,
    num_groups: int,
    normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ExIQA scoring head for a batch (Eqs. 6 and 7 of the paper).

    Args:
        image_emb: (B, D) image embeddings.
        text_pos: (A, D) embeddings of the positive prompts ("There is {a} in the photo."), or, when
            `text_neg` is None, the precomputed difference t_pos - t_neg (the form ExIQA caches).
        text_neg: (A, D) embeddings of the negative prompts, or None (see `text_pos`).
        scale: logit scale s (CLIP's `logit_scale.exp()`); a fixed Python float.
        group_index: (A,) int64/int32, the distortion of each attribute, in [0, num_groups); any order,
            groups of any size (a group with no attribute gets probability 0).
        weight_logits: (A,) logits of the attribute weights; softmax within each group gives w_ad.
        num_groups: G, the number of distortions.
        normalize: L2-normalise each image embedding first (eps 1e-12, as F.normalize).

    Returns:
        attr_probs (B, A) with P(a|I) = sigmoid(s <e, t_pos_a - t_neg_a>) (the two-way softmax), and
        dist_probs (B, G) with P(d|I) = sum_{a in d} softmax_d(weight_logits)_a P(a|I).
        Same dtype as image_emb; float16/bfloat16 are computed in float32.

    Differentiable in image_emb, text_pos, text_neg and weight_logits. Raises ValueError on shape,
    device or value errors and TypeError on dtype errors, naming the argument. On CUDA the group_index values
    are read on the host before the launch (once per tensor while it is unchanged; not while torch.compile
    traces, where the kernel's device-side assert is the only check).
    """
    check_inputs(image_emb, text_pos, text_neg, scale, group_index, weight_logits, num_groups)
    if not _has_kernel_for(image_emb.device.type):
        _report_fallback(image_emb.device.type)
        return attribute_scores_reference(
            image_emb, text_pos, text_neg, scale, group_index, weight_logits, num_groups, normalize
        )
    if image_emb.device.type not in KERNEL_CHECKS_GROUP_VALUES and not torch.compiler.is_compiling():
        _check_group_values_once(group_index, num_groups)
    text_diff = text_pos if text_neg is None else text_pos - text_neg
    if group_index.dtype != torch.int64:
        group_index = group_index.long()
    return _launch(image_emb, text_diff, group_index, weight_logits, scale, num_groups, normalize)


if EXTENSION_LOADED:

    @torch.library.register_fake(OP_NAME)
    def _attribute_scores_fake(image_emb, text_diff, group_index, weight_logits, scale, num_groups, normalize):
        return (
            image_emb.new_empty((image_emb.shape[0], text_diff.shape[0])),
            image_emb.new_empty((image_emb.shape[0], num_groups)),
        )

    def _setup_context(ctx, inputs, output) -> None:
        image_emb, text_diff, group_index, weight_logits, scale, num_groups, normalize = inputs
        ctx.save_for_backward(image_emb, text_diff, group_index, weight_logits, output[0])
        ctx.scale, ctx.num_groups, ctx.normalize = scale, num_groups, normalize

    def _backward(ctx, grad_attr, grad_dist):
        image_emb, text_diff, group_index, weight_logits, attr = ctx.saved_tensors
        out_dtype = image_emb.dtype
        work = torch.promote_types(out_dtype, torch.float32)
        emb, diff, logits, p = (x.to(work) for x in (image_emb, text_diff, weight_logits, attr))
        weights = group_softmax(logits, group_index, ctx.num_groups)

        # d loss / d P(a|I): directly, and through P(d|I) = sum_a w_a P(a|I).
        grad_p = grad_dist.to(work)[:, group_index] * weights
        if grad_attr is not None:
            grad_p = grad_p + grad_attr.to(work)
        grad_z = grad_p * p * (1 - p) * ctx.scale  # sigmoid'; z = s <e_hat, t>

        if ctx.normalize:
            norm = emb.norm(dim=-1, keepdim=True)
            inv = 1.0 / norm.clamp_min(_NORM_EPS)
            emb_hat = emb * inv
        else:
            emb_hat = emb
        grad_emb_hat = grad_z @ diff
        grad_diff = grad_z.transpose(0, 1) @ emb_hat
        if ctx.normalize:
            # d(e/|e|)/de = (I - e_hat e_hat^T) / |e|; below eps the clamp makes it I / eps.
            radial = (grad_emb_hat * emb_hat).sum(-1, keepdim=True) * emb_hat
            grad_emb = (grad_emb_hat - torch.where(norm > _NORM_EPS, radial, 0.0)) * inv
        else:
            grad_emb = grad_emb_hat

        # Softmax within each group: dL/dl_a = w_a (g_a - sum_{a' in group(a)} w_a' g_a').
        grad_w = (grad_dist.to(work)[:, group_index] * p).sum(0)
        group_mean = logits.new_zeros(ctx.num_groups).index_add(0, group_index, weights * grad_w)
        grad_logits = weights * (grad_w - group_mean[group_index])
        return (
            grad_emb.to(out_dtype),
            grad_diff.to(text_diff.dtype),
            None,
            grad_logits.to(weight_logits.dtype),
            None,
            None,
            None,
        )

    torch.library.register_autograd(OP_NAME, _backward, setup_context=_setup_context)
