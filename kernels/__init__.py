"""Fused kernels of iqa_plugins (installed as `iqa_plugins.kernels`)."""

from .diff_attention import diff_attention, diff_attention_reference, diff_attention_sdpa
from .attribute_scorer import attribute_scores, attribute_scores_backend, attribute_scores_reference
