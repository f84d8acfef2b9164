"""Pure-PyTorch ExIQA attribute scorer in the paper's literal form (Eqs. 6 and 7).

This is the semantic definition the compiled op is tested against, and the fallback used when the
C++ extension is not built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import check_group_values, check_inputs


def group_weight_matrix(group_index: torch.Tensor, weight_logits: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(A, G) matrix W with W[a, g] = softmax of the logits of group g, evaluated at a (0 outside g).

    Each column sums to 1 over its attributes (Eq. 7: w_ad >= 0, sum_a w_ad = 1); a group with no
    attribute has an all-zero column.
    """
    member = group_index.long().unsqueeze(0) == torch.arange(num_groups, device=group_index.device).unsqueeze(1)
    # A finite fill (not -inf) keeps empty groups NaN-free; the mask then zeroes them.
    masked = weight_logits.unsqueeze(0).masked_fill(~member, torch.finfo(weight_logits.dtype).min)
    return (masked.softmax(dim=1) * member).transpose(0, 1)


def group_softmax(weight_logits: torch.Tensor, group_index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(A,) weights w_a: the softmax of the logits within a's group (the one non-zero of row a of
    `group_weight_matrix`). Differentiable; the form the backward pass and the ExIQA model use."""
    return group_weight_matrix(group_index, weight_logits, num_groups).sum(dim=1)


def attribute_scores_reference(
    image_emb: torch.Tensor,
    text_pos: torch.Tensor,
    text_neg: torch.Tensor | None,
    scale: float,
    group_index: torch.Tensor,
    weight_logits: torch.Tensor,
    num_groups: int,
    normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribute and distortion probabilities, literally: similarities to the concatenated positive and
    negative prompts, a softmax over each (positive, negative) pair, then group-softmax-weighted sums.

    Same arguments and results as `attribute_scores`; `text_neg=None` means `text_pos` already holds
    the difference t_pos - t_neg, which is the pair (difference, zero vector) in the literal form.
    float16/bfloat16 inputs are computed in float32 and cast back.
    """
    check_inputs(image_emb, text_pos, text_neg, scale, group_index, weight_logits, num_groups)
    check_group_values(group_index, num_groups)
    out_dtype = image_emb.dtype
    work_dtype = torch.promote_types(out_dtype, torch.float32)
    if text_neg is None:
        text_neg = torch.zeros_like(text_pos)
    emb, pos, neg, logits = (x.to(work_dtype) for x in (image_emb, text_pos, text_neg, weight_logits))
    if normalize:
        emb = F.normalize(emb, dim=-1)

    num_attr = pos.shape[0]
    prompts = torch.cat([pos, neg], dim=0)  # (2A, D): all positive prompts, then all negative ones
    sims = scale * emb @ prompts.transpose(0, 1)  # (B, 2A)
    pairs = torch.stack([sims[:, :num_attr], sims[:, num_attr:]], dim=-1)  # (B, A, 2)
    attr = pairs.softmax(dim=-1)[..., 0]  # Eq. 6: P(a|I)
    dist = attr @ group_weight_matrix(group_index, logits, num_groups)  # Eq. 7: P(d|I)
    dist = dist.clamp(max=1.0)  # rounded weights may sum to 1 + ulp
    return attr.to(out_dtype), dist.to(out_dtype)
