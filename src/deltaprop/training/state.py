"""Where a run is: the `State` every checkpoint carries as JSON, and its validation on resume.

    state = state_from_checkpoint(meta["state"], path, epochs=10, n_train=54000, batch=128)

The checksum proves a checkpoint is intact, not that deltaprop wrote it, so a state read back is
checked field by field (types, ranges) and against the run (epoch, position and step must fit
its epochs, rows and batch size) before training continues from it; every problem is a
CheckpointError naming the file, and resume then falls back to an older checkpoint.
"""

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .._values import is_int, is_number
from ..errors import CheckpointError


@dataclass
class State:
    """Where a run is; JSON in every checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    pos: int = 0  # rows of this epoch's permutation already trained on
    step: int = 0  # global optimizer steps taken
    epoch_rng: dict | None = None  # shuffling RNG state at the start of `epoch`
    loss_sum: float = 0.0  # this epoch so far: sum over steps of batch loss * batch rows
    correct: int | float = 0  # rows classified correctly (with sample weights: weighted, see the trainer)
    seen: int = 0
    train_seconds: float = 0.0
    history: list = field(default_factory=list)  # per-epoch metrics; not in checkpoints (metrics.jsonl)
    best: float | None = None  # early stopping
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False


def is_metrics(m) -> bool:
    """One epoch's metrics: names mapped to finite numbers."""
    return isinstance(m, dict) and all(isinstance(k, str) and is_number(v) and math.isfinite(v)
                                       for k, v in m.items())


def _same(a, b) -> bool:
    """Equal as JSON values, types included (1 and 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def checkpoint_state(state: State) -> dict:
    """What a checkpoint stores of `state`: everything but the history, so a checkpoint's header
    stays the same size however long the run (the history is metrics.jsonl)."""
    return {k: v for k, v in state.__dict__.items() if k != "history"}


def state_from_checkpoint(raw, path: Path, *, epochs: int, n_train: int, batch: int) -> State:
    """The checkpoint's `state` as a State, if it is one this run can continue from (its history
    is empty unless the checkpoint is of the older format that carried it)."""
    steps_per_epoch = math.ceil(n_train / batch)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: invalid training state in the metadata: {what}")

    names = [f.name for f in fields(State)]
    if not isinstance(raw, dict):
        raise bad(f"expected a JSON object, got {type(raw).__name__}")
    raw = dict(raw)
    old_format = "history" in raw  # checkpoints once carried the history, growing every epoch
    raw.setdefault("history", [])
    if set(raw) != set(names):
        missing, extra = sorted(set(names) - set(raw)), sorted(set(raw) - set(names))
        raise bad("; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                            + ([f"unknown {', '.join(extra)}"] if extra else [])))
    for k in ("epoch", "pos", "step", "seen", "best_epoch", "bad_epochs"):
        if not is_int(raw[k]) or raw[k] < 0:
            raise bad(f"{k} must be an integer >= 0, got {raw[k]!r}")
    if not (is_number(raw["correct"]) and math.isfinite(raw["correct"]) and raw["correct"] >= 0):
        raise bad(f"correct must be a number >= 0, got {raw['correct']!r}")
    for k in ("loss_sum", "train_seconds", "best"):
        v = raw[k]
        if not (k == "best" and v is None) and not (is_number(v) and math.isfinite(v)):
            raise bad(f"{k} must be a finite number, got {v!r}")
    if not isinstance(raw["finished"], bool):
        raise bad(f"finished must be true or false, got {raw['finished']!r}")
    if not (isinstance(raw["history"], list) and all(is_metrics(m) for m in raw["history"])):
        raise bad("history must be a list of per-epoch metrics (names and finite numbers)")
    gen = np.random.default_rng(0).bit_generator
    try:  # the shuffling RNG state must be one numpy accepts for this generator, exactly as written
        gen.state = raw["epoch_rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise bad(f"epoch_rng is not a {type(gen).__name__} state ({exc})") from None
    if not _same(gen.state, raw["epoch_rng"]):  # numpy converts a float where an int belongs
        raise bad(f"epoch_rng is not a {type(gen).__name__} state exactly as numpy writes it "
                  "(a value of the wrong type)")
    st = State(**raw)
    if st.epoch > epochs or (old_format and len(st.history) != st.epoch):
        raise bad(f"epoch {st.epoch} with {len(st.history)} epochs of history, in a run of {epochs}")
    if not st.correct <= st.seen <= st.pos <= n_train or (st.pos and not st.seen):
        raise bad(f"position {st.pos} (seen {st.seen}, correct {st.correct}) does not fit "
                  f"{n_train} training rows")
    if st.step != st.epoch * steps_per_epoch + math.ceil(st.pos / batch):
        raise bad(f"step {st.step} does not match epoch {st.epoch}, position {st.pos} "
                  f"({steps_per_epoch} steps per epoch)")
    return st
