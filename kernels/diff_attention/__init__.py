"""Dual-softmax differential attention: fused Triton op, literal reference and two-SDPA baseline."""

from .op import CPU_USES_TRITON, diff_attention, uses_triton
from .reference import diff_attention_reference, diff_attention_sdpa

__all__ = ["CPU_USES_TRITON", "diff_attention", "diff_attention_reference", "diff_attention_sdpa", "uses_triton"]
