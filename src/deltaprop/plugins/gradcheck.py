"""Numerical check of an activation's derivative (central differences, float64, many points).

Points where the function has a kink (left and right one-sided differences disagree, e.g. relu at
0) are skipped: no derivative exists there to compare against.
"""

from dataclasses import dataclass

import numpy as np

from .activation import Activation

H = 1e-5
TOLERANCE = 1e-5
POINTS = np.concatenate([np.linspace(-8.0, 8.0, 801) + 0.00731, np.linspace(-1.0, 1.0, 200) + 1e-3])


@dataclass(frozen=True)
class CheckResult:
    name: str
    worst_error: float  # max |analytic - numeric| / max(1, |numeric|)
    worst_at: float
    points: int

    @property
    def ok(self) -> bool:
        return bool(self.worst_error <= TOLERANCE)


def check_derivative(act: Activation) -> CheckResult:
    """Compare `act.derivative` with central differences of `act.forward` at many points."""
    f, df = act.forward, act.derivative
    worst, where, used = 0.0, float("nan"), 0
    for x in POINTS:
        x = float(x)
        fp, fm, f0 = float(f(x + H)), float(f(x - H)), float(f(x))
        right, left = (fp - f0) / H, (f0 - fm) / H
        if abs(right - left) > 1e-3 * max(1.0, abs(right)):
            continue  # a kink: not differentiable here
        numeric = (fp - fm) / (2 * H)
        analytic = float(df(f0 if act.derivative_of == "output" else x))
        err = abs(analytic - numeric) / max(1.0, abs(numeric))
        if not np.isfinite(err):
            err = float("inf")
        used += 1
        if err > worst or not np.isfinite(worst):
            worst, where = err, x
    return CheckResult(act.name, worst, where, used)
