"""Losses the recipes need that pyiqa lacks (registered in pyiqa's LOSS_REGISTRY by ``registry``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SmoothL1Loss(nn.Module):
    """Smooth L1 (Huber with ``beta``) between predicted and subjective scores, as the DR.Experts authors train."""

    def __init__(self, loss_weight: float = 1.0, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.loss_weight = float(loss_weight)
        self.beta = float(beta)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Computed in fp32 even under autocast: MOS on a 0-100 scale squares past fp16's comfort.
        loss = F.smooth_l1_loss(pred.float(), target.float(), beta=self.beta, reduction=self.reduction)
        return self.loss_weight * loss
