"""Learning-rate schedules as pure functions of the global step (so a resume is exact).

What torch loop gives the same rates (tests/test_torch_parity.py runs these loops):
- `step` / `exponential`: `StepLR(opt, step_epochs, gamma)` / `ExponentialLR(opt, gamma)`, their
  `.step()` called once at the end of every epoch.
- `cosine`: `CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch, eta_min=min_lr)`, its `.step()`
  called after every batch (cosine decays per step, step/exponential per epoch).
- warm-up over W = warmup_epochs * steps_per_epoch steps: the rate of step s is multiplied by
  min(1, (s + 1) / W) while s < W; for a whole W that is `LinearLR(opt, start_factor=1/W,
  total_iters=W - 1)` stepped after every batch, chained with the schedule above (both
  schedulers on one optimizer, each stepped at its own cadence). Except cosine with min_lr > 0:
  torch's chained CosineAnnealingLR adds eta_min after the warm-up factor, so there the torch
  equivalent is one `LambdaLR` of the product min(1, (s + 1) / W) * cosine(s) / base_lr.
"""

import math
from dataclasses import dataclass

import numpy as np

from .config import ScheduleConfig


def lr_at(step: int, base_lr: float, steps_per_epoch: int, total_steps: int, s: ScheduleConfig) -> float:
    """The learning rate of (0-based) global step `step`."""
    epoch = step // steps_per_epoch
    if s.name == "step":
        lr = base_lr * s.gamma ** (epoch // s.step_epochs)
    elif s.name == "exponential":
        lr = base_lr * s.gamma ** epoch
    elif s.name == "cosine":
        lr = s.min_lr + (base_lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    else:
        lr = base_lr
    warmup = s.warmup_epochs * steps_per_epoch
    if warmup > 0 and step < warmup:
        lr *= min(1.0, (step + 1) / warmup)  # a fractional last warm-up step never overshoots
    return lr


def lrs_for(step0: int, n: int, base_lr: float, steps_per_epoch: int, total_steps: int,
            s: ScheduleConfig) -> np.ndarray:
    return np.array([lr_at(step0 + i, base_lr, steps_per_epoch, total_steps, s) for i in range(n)])


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every global step of one run (steps_per_epoch, total_steps fixed)."""

    base_lr: float
    steps_per_epoch: int
    total_steps: int
    config: ScheduleConfig

    def lr(self, step: int) -> float:
        return lr_at(step, self.base_lr, self.steps_per_epoch, self.total_steps, self.config)

    def lrs(self, step0: int, n: int) -> np.ndarray:
        """(n,) learning rates of steps step0 .. step0 + n - 1."""
        return lrs_for(step0, n, self.base_lr, self.steps_per_epoch, self.total_steps, self.config)
