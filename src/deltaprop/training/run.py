"""What goes into a run besides its config, and what comes out: the progress callbacks, where a
run without a checkpoint starts (warm starts, partial fits), and the result."""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model import Model
from .state import State


class Reporter:
    """Progress callbacks; this base class is silent (the CLI draws bars or lines)."""

    def start(self, run_dir: Path | None, epochs: int, steps_per_epoch: int, resumed: str | None): ...
    def epoch_start(self, epoch: int, steps: int, done: int): ...
    def advance(self, steps: int, loss: float, accuracy: float | None, samples_per_s: float): ...
    def epoch_end(self, metrics: dict): ...
    def note(self, text: str): ...
    def summary(self, text: str): ...  # the model summary (training/summary.py), at the start


@dataclass
class RunResult:
    run_dir: Path | None
    metrics: list[dict]
    model: Model
    stopped_early: bool = False
    state: "State | None" = None  # where the run ended (step, RNG state, early-stopping state)
    opt_state: np.ndarray | None = None  # (2, P) optimizer state after the last step


@dataclass
class Start:
    """Where a run without a checkpoint starts: a previous run's weights and optimizer."""

    theta: np.ndarray  # flat parameters (compute/layout.py)
    opt_state: np.ndarray | None = None  # (2, P); None: fresh
    step: int = 0  # optimizer steps already taken (Adam's bias correction continues from it)
    rng: dict | None = None  # shuffling RNG state to continue from; None: from the seed


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' if n != 1 else ''}"


def format_metrics(metrics: dict) -> str:
    """`loss=0.3 accuracy=0.9 ... samples_per_s=147,796` (samples/s as the progress bar shows it)."""
    parts = []
    for k, v in metrics.items():
        if k in ("epoch", "step"):
            continue
        if k == "samples_per_s":
            parts.append(f"{k}={v:,.0f}")
        else:
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class LineReporter(Reporter):
    """A line when a run starts, one per epoch, and the notes (the CLI off a terminal, and the
    Python API's `progress=True`)."""

    def __init__(self, stream=None):
        self.stream = stream

    def _print(self, text):
        print(text, file=self.stream or sys.stdout, flush=True)

    def start(self, run_dir, epochs, steps_per_epoch, resumed):
        self.epochs = epochs
        how = f"resuming from {resumed}" if resumed else "starting"
        self._print(f"run {run_dir}: {how}; {plural(epochs, 'epoch')} of {plural(steps_per_epoch, 'step')}")

    def epoch_end(self, metrics: dict):
        self._print(f"epoch {metrics['epoch']}/{self.epochs} " + format_metrics(metrics))

    def note(self, text: str):
        self._print(text)

    def summary(self, text: str):
        self._print(text)
