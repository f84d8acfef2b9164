"""Progress of a training loop: one tqdm bar per epoch (loss, images/s), and the hook the loops call each step.

Every training loop of the project (the pyiqa-based runner and ExIQA's two phases) reports through a
:class:`TrainingProgress`: ``start_epoch`` before an epoch, ``step`` after every optimiser step,
``end_epoch`` after it. ``step`` returns True when the loop should stop early (``should_stop``); subclasses or
the ``stop_when`` callable decide that (e.g. a time budget), the default never stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm


class TrainingProgress:
    """Per-epoch progress bars and the per-step hook of the training loops.

    Args:
        label: what trains, shown in front of every bar (e.g. "drexperts split 1/10").
        enabled: draw bars (False: silent, e.g. on ranks other than 0 or with ``--quiet``).
        stop_when: called after every step with this object; True ends training after that step.
        on_step: called as ``on_step(step, loss)`` after every step (``step`` counts from 1 over all epochs).
    """

    def __init__(
        self,
        label: str,
        *,
        enabled: bool = True,
        stop_when: Callable[[TrainingProgress], bool] | None = None,
        on_step: Callable[[int, float], Any] | None = None,
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.stop_when = stop_when
        self.on_step = on_step
        self.steps = 0
        self.images = 0
        self.started = time.perf_counter()
        self.last_loss = float("nan")
        self._bar: tqdm | None = None
        self._epoch_losses: list[float] = []
        self.epoch_loss: list[float] = []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        """Open the bar of epoch ``epoch`` (0-based) of ``epochs``, which has ``steps`` steps."""
        self.end_epoch()
        self._epoch_losses = []
        if self.enabled:
            self._bar = tqdm(total=steps, desc=f"{self.label} epoch {epoch + 1}/{epochs}", unit="step",
                             leave=True, dynamic_ncols=True)

    def step(self, loss: float, images: int) -> bool:
        """Record one optimiser step on ``images`` images; returns True when training should stop now."""
        self.steps += 1
        self.images += int(images)
        self.last_loss = float(loss)
        self._epoch_losses.append(self.last_loss)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{self.last_loss:.4g}", img_s=f"{self.images / max(self.elapsed, 1e-9):.1f}",
                                  refresh=False)
        if self.on_step is not None:
            self.on_step(self.steps, self.last_loss)
        return self.should_stop()

    def should_stop(self) -> bool:
        return bool(self.stop_when(self)) if self.stop_when is not None else False

    def end_epoch(self) -> None:
        """Close the current epoch's bar and record its mean loss (no-op when no epoch is open)."""
        if self._epoch_losses:
            self.epoch_loss.append(sum(self._epoch_losses) / len(self._epoch_losses))
            self._epoch_losses = []
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def summary(self) -> str:
        """One line: steps, time, rate and the last epoch's mean loss."""
        self.end_epoch()
        loss = self.epoch_loss[-1] if self.epoch_loss else float("nan")
        return (f"{self.label}: {self.steps} steps in {self.elapsed:.1f}s "
                f"({self.images / max(self.elapsed, 1e-9):.1f} images/s), last epoch's mean loss {loss:.4g}")
