"""What goes into a run besides its config, and what comes out: the progress callbacks, where a
run without a checkpoint starts (warm starts, partial fits), and the result."""

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


class LineReporter(Reporter):
    """A line per epoch on stdout (the Python API's `progress=True`)."""

    def start(self, run_dir, epochs, steps_per_epoch, resumed):
        self.epochs = epochs
        print(f"run {run_dir}: {'resuming from ' + resumed if resumed else 'starting'}; {epochs} epoch(s)", flush=True)

    def epoch_end(self, metrics: dict):
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step"))
        print(f"epoch {metrics['epoch']}/{self.epochs} {shown}", flush=True)

    def note(self, text: str):
        print(text, flush=True)
