"""The DR.Experts learning-rate schedule, stepped every iteration.

Linear warm-up from ``warmup_lr`` to the optimiser's lr over ``warmup_iters``, then the lr times
``gamma ** (t // step_iters)`` (t counts iterations from the start of training). With the authors' numbers
(3 warm-up epochs, 3-epoch steps, gamma 0.1, 9 epochs) that is 2e-7 -> 2e-4 over epochs 0-2, 2e-5 for 3-5
and 2e-6 for 6-8.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupStepLR(LRScheduler):
    """Per-iteration linear warm-up followed by step decay; ``step()`` once per optimiser step."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_iters: int,
        step_iters: int,
        warmup_lr: float = 2e-7,
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if step_iters < 1:
            raise ValueError(f"step_iters must be >= 1, got {step_iters}")
        self.warmup_iters = int(warmup_iters)
        self.step_iters = int(step_iters)
        self.warmup_lr = float(warmup_lr)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        """Learning rate of a group whose peak lr is ``base_lr`` at iteration ``t`` (0-based)."""
        if t < self.warmup_iters:
            return self.warmup_lr + (base_lr - self.warmup_lr) * t / self.warmup_iters
        return base_lr * self.gamma ** (t // self.step_iters)

    def get_lr(self) -> list[float]:
        return [self.lr_at(base_lr, self.last_epoch) for base_lr in self.base_lrs]
