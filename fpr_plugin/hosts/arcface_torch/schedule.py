"""Stand-ins for arcface_torch's ``PolynomialLRWarmup``, with the host's constructor ``(optimizer, warmup_iters, total_iters)``.

- :func:`step_decay_scheduler`: the recipes' step decay (``lr_steps``). arcface_torch
  has one schedule (linear warmup, then polynomial decay); the paper divides
  the rate by 10 at fixed epochs. Follows :func:`fpr_plugin.train.schedule.lr_at_step`.
- :class:`PolynomialWarmupLR`: the host's own schedule, for torch releases whose
  ``LRScheduler`` no longer takes ``verbose`` (the host's class passes it and
  fails there). Linear warmup to the base rate over ``warmup_iters`` steps,
  then ``(1 - (t - w) / (T - w)) ** power`` down to 0 at ``total_iters``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fpr_plugin.train.schedule import lr_at_step

__all__ = ["PolynomialWarmupLR", "host_scheduler_works", "step_decay_scheduler"]


def host_scheduler_works() -> bool:
    """True when this torch's ``LRScheduler`` still takes ``verbose`` (the host's scheduler passes it)."""
    import inspect

    return "verbose" in inspect.signature(torch.optim.lr_scheduler.LRScheduler.__init__).parameters


def polynomial_warmup_factor(step: int, warmup_iters: int, total_iters: int, power: float = 1.0) -> float:
    """Multiplier of the base rate at ``step`` in arcface_torch's schedule."""
    if step == 0:
        return 1.0
    if step <= warmup_iters:
        return step / warmup_iters
    if step > total_iters or total_iters <= warmup_iters:
        return 0.0
    return (1.0 - (step - warmup_iters) / (total_iters - warmup_iters)) ** power


class PolynomialWarmupLR(torch.optim.lr_scheduler.LambdaLR):
    """arcface_torch's warmup + polynomial schedule on any torch release."""

    def __init__(self, optimizer, warmup_iters: int, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1, **_ignored) -> None:
        super().__init__(optimizer, lambda step: polynomial_warmup_factor(step, warmup_iters, total_iters, power), last_epoch)


def step_decay_scheduler(steps_per_epoch: int, lr_steps: Sequence[float], lr_decay: float, warmup_epoch: float):
    """A ``PolynomialLRWarmup``-compatible scheduler class for step decay at epochs ``lr_steps``."""
    params = dict(steps_per_epoch=int(steps_per_epoch), lr_steps=[float(e) for e in lr_steps],
                  lr_decay=float(lr_decay), warmup_epoch=float(warmup_epoch))

    class StepDecayLR(torch.optim.lr_scheduler.LambdaLR):
        """Warmup then ``lr_decay`` at each epoch of ``lr_steps`` (the host's ``step()`` is called per batch)."""

        def __init__(self, optimizer, warmup_iters: int = 0, total_iters: int = 0, **_ignored) -> None:
            super().__init__(optimizer, lambda step: lr_at_step(step, base_lr=1.0, **params))

    return StepDecayLR
