"""Learning rate by step: linear warmup, then step decay at given epochs (pure functions)."""

from __future__ import annotations

import bisect
from typing import Sequence

import torch

__all__ = ["lr_at_step", "StepDecaySchedule"]


def lr_at_step(
    step: int,
    *,
    base_lr: float,
    steps_per_epoch: int,
    lr_steps: Sequence[float] = (),
    lr_decay: float = 0.1,
    warmup_epoch: float = 0.0,
) -> float:
    """Learning rate of the 0-based optimisation ``step``.

    The epoch of a step is ``step / steps_per_epoch``; the rate is
    ``base_lr * lr_decay ** (number of lr_steps <= epoch)``. During the first
    ``warmup_epoch`` epochs it rises linearly, ``(step + 1) / warmup_steps`` of that.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    epoch = step / steps_per_epoch
    lr = base_lr * lr_decay ** bisect.bisect_right(list(lr_steps), epoch)
    warmup_steps = round(warmup_epoch * steps_per_epoch)
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


class StepDecaySchedule:
    """Sets an optimizer's learning rate from :func:`lr_at_step` before each step.

    Stateless: the rate is a function of the step and the config, so a checkpoint stores nothing of it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        steps_per_epoch: int,
        lr_steps: Sequence[float] = (),
        lr_decay: float = 0.1,
        warmup_epoch: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.params = dict(
            base_lr=float(base_lr),
            steps_per_epoch=int(steps_per_epoch),
            lr_steps=[float(e) for e in lr_steps],
            lr_decay=float(lr_decay),
            warmup_epoch=float(warmup_epoch),
        )

    def lr(self, step: int) -> float:
        """Learning rate of ``step``."""
        return lr_at_step(step, **self.params)

    def apply(self, step: int) -> float:
        """Set every parameter group's rate for ``step``; returns it."""
        value = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = value
        return value
