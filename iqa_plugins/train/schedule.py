"""The learning-rate schedules of both models, stepped every iteration.

DR.Experts (:class:`WarmupStepLR`): linear warm-up from ``warmup_lr`` to the optimiser's lr over ``warmup_iters``, then the lr times
``gamma ** (t // step_iters)`` (t counts iterations from the start of training). With the authors' numbers
(3 warm-up epochs, 3-epoch steps, gamma 0.1, 9 epochs) that is 2e-7 -> 2e-4 over epochs 0-2, 2e-5 for 3-5
and 2e-6 for 6-8. ExIQA (:func:`cosine_warmup_schedule`): linear warm-up, then cosine decay to 0.

Both can also follow a wall-time budget instead of (or besides) a step count, for training that must end by a
deadline whatever the machine's speed (the demo): ``WarmupStepLR(step_seconds=...)`` drops the rate every
``step_seconds`` of wall time, and ``cosine_warmup_schedule(seconds=...)`` decays with the larger of the
step and time fractions, reaching 0 when the budget is spent. Their clock starts when they are built (just
before the first step); a resumed run starts it again.
"""

from __future__ import annotations

import math
import time

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


class WarmupStepLR(LRScheduler):
    """Per-iteration linear warm-up followed by step decay; ``step()`` once per optimiser step."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_iters: int,
        step_iters: int | None = None,
        warmup_lr: float = 2e-7,
        gamma: float = 0.1,
        last_epoch: int = -1,
        *,
        step_seconds: float | None = None,
    ) -> None:
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if (step_iters is None) == (step_seconds is None):
            raise ValueError("give exactly one of step_iters (decay every N iterations) and step_seconds "
                             "(decay every N seconds of wall time)")
        if step_iters is not None and step_iters < 1:
            raise ValueError(f"step_iters must be >= 1, got {step_iters}")
        if step_seconds is not None and not step_seconds > 0:
            raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
        self.warmup_iters = int(warmup_iters)
        self.step_iters = None if step_iters is None else int(step_iters)
        self.step_seconds = None if step_seconds is None else float(step_seconds)
        self.warmup_lr = float(warmup_lr)
        self.gamma = float(gamma)
        self.started = time.monotonic()
        super().__init__(optimizer, last_epoch)

    def decays(self, t: int) -> int:
        """How many times the rate has dropped by iteration ``t`` (or, on wall time, by now)."""
        if self.step_seconds is not None:
            return int((time.monotonic() - self.started) // self.step_seconds)
        return t // self.step_iters

    def lr_at(self, base_lr: float, t: int) -> float:
        """Learning rate of a group whose peak lr is ``base_lr`` at iteration ``t`` (0-based)."""
        if t < self.warmup_iters:
            return self.warmup_lr + (base_lr - self.warmup_lr) * t / self.warmup_iters
        return base_lr * self.gamma ** self.decays(t)

    def get_lr(self) -> list[float]:
        return [self.lr_at(base_lr, self.last_epoch) for base_lr in self.base_lrs]

    def load_state_dict(self, state_dict: dict) -> None:
        # The wall clock of a resumed run starts again: another process's monotonic time means nothing here.
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "started"})


def cosine_warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                           seconds: float | None = None) -> LambdaLR:
    """Per-step learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps`` or, with ``seconds``, at whichever comes first of ``total_steps`` and ``seconds`` of wall
    time (the decay follows the larger of the two fractions)."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got {total_steps}, {warmup_steps}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    started = time.monotonic()

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if seconds is not None:
            progress = max(progress, (time.monotonic() - started) / seconds)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)
