"""A run directory: every file name in it, the lock that keeps one training process per run, and
the reading and writing of its files. No other module spells these names.

    RUN_DIR/config.toml        the resolved config the run trains (written once, atomically)
    RUN_DIR/metrics.jsonl      one JSON object per epoch
    RUN_DIR/checkpoints/       step-NNNNNNNNNN.safetensors, the newest `keep` kept
    RUN_DIR/model.safetensors  the final model
    RUN_DIR/log.txt            a queued job's output, every attempt
    RUN_DIR/gate.json          a tune trial's rung: the epoch after which it waits for the controller

`NullRunDir()` is a run that keeps nothing (the scikit-learn estimators train in memory): it takes
no lock and writes no file, so the trainer never asks whether it has a directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .._system import atomic_write, describe, dir_locked
from ..errors import ConfigError, WriteError
from . import checkpoints
from .safetensors import write_safetensors

_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


class RunDir:
    persistent = True  # False for NullRunDir

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    def holds_run(self) -> bool:
        """Whether training has written anything here (a checkpoint or the final model)."""
        return self.checkpoint_dir.exists() or self.model_path.exists()

    def remove_stale_temps(self) -> list[Path]:
        """Delete the temp files of writes a kill interrupted (atomic_write's `.NAME.HEX.tmp`);
        call it with the lock held, when no write of this run can be under way."""
        removed = []
        for d in (self.path, self.checkpoint_dir):
            for p in d.glob(".*.tmp") if d.is_dir() else ():
                if _TEMP.match(p.name):
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    # ---- the lock ----------------------------------------------------------------------------
    @contextmanager
    def lock(self, wait: bool = False, on_wait=None):
        """An exclusive lock for the life of a training process, so two processes never train
        the same run at once. A flock on the directory itself: nothing in it is ever replaced
        under the lock (a lock on config.toml was lost when a second `train` replaced that file),
        and no extra file appears in the run directory. Held by another process: a ConfigError,
        or with `wait`, `on_wait(message)` and then wait for it to be released."""
        import fcntl
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise ConfigError(f"run directory {self.path} is in use by another deltaprop process "
                                      "(a train or resume of it is running)") from None
                if on_wait is not None:
                    on_wait(f"run directory {self.path} is in use by another process (an earlier attempt "
                            "of this job, whose worker lost its lease?): waiting for it to end")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise ConfigError(f"cannot lock run directory {self.path}: {exc.strerror or exc}") from None
            yield
        finally:
            os.close(fd)

    def in_use(self) -> bool:
        """Whether a process holds the lock (trains this run) now."""
        return dir_locked(self.path)

    # ---- status.json: how the last process that trained the run ended ------------------------
    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    def write_status(self, status: str, **fields) -> None:
        """running (written at the start: still there after a SIGKILL), finished, interrupted, failed."""
        atomic_write(self.status_path, json.dumps({"status": status, "time": time.time(), **fields},
                                                  sort_keys=True) + "\n")

    def read_status(self) -> dict:
        try:
            found = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) and isinstance(found.get("status"), str) else {}

    # ---- gate.json: a tune trial waits at its pruner's rungs ---------------------------------
    @property
    def gate_path(self) -> Path:
        return self.path / "gate.json"

    def write_gate(self, until_epoch: int | None) -> None:
        """Hold the run after `until_epoch` epochs until the gate moves (None: open)."""
        atomic_write(self.gate_path, json.dumps({"until_epoch": until_epoch}) + "\n")

    def read_gate(self) -> int | None:
        try:
            until = json.loads(self.gate_path.read_text()).get("until_epoch")
        except (OSError, ValueError, AttributeError):
            return None
        return until if isinstance(until, int) and not isinstance(until, bool) else None

    def wait_at_gate(self, epochs_done: int, stop, poll_s: float = 0.05) -> None:
        """After `epochs_done` epochs, wait while the gate holds there (the tune controller has not
        yet told this trial's pruner's verdict) or until `stop()` (a signal: stop at this boundary).
        Waiting changes nothing the run computes."""
        while (until := self.read_gate()) is not None and epochs_done >= until and not stop():
            time.sleep(poll_s)

    # ---- config.toml -------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        atomic_write(self.config_path, text)

    def read_config_text(self) -> str:
        if not self.config_path.is_file():
            raise ConfigError(f"{self.path} is not a run directory: {self.config_path} is missing")
        try:
            return self.config_path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.config_path}: {getattr(exc, 'strerror', None) or exc}") from None

    # ---- metrics.jsonl -----------------------------------------------------------------------
    def write_metrics(self, history: list[dict]) -> None:
        """The whole file: the history up to the checkpoint a run continues from."""
        atomic_write(self.metrics_path, "".join(json.dumps(m, sort_keys=True) + "\n" for m in history))

    def append_metrics(self, metrics: dict) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(metrics, sort_keys=True) + "\n")
        except OSError as exc:
            raise WriteError(f"cannot write {self.metrics_path}: {describe(exc)}") from None

    def read_metrics(self) -> list[dict]:
        """Every epoch's metrics; a line cut short by a kill (or not names and finite numbers)
        is left out."""
        return _read_jsonl(self.metrics_path)

    # ---- steps.jsonl: the step scalars, every logging.every_steps steps -------------------------
    @property
    def steps_path(self) -> Path:
        return self.path / "steps.jsonl"

    def keep_steps(self, up_to: int) -> None:
        """Drop the lines after global step `up_to` (a killed attempt's, past the checkpoint a
        run continues from; they are logged again as the run repeats those steps)."""
        kept = [m for m in self.read_steps() if m["step"] <= up_to]
        if kept or self.steps_path.exists():
            atomic_write(self.steps_path, "".join(json.dumps(m, sort_keys=True) + "\n" for m in kept))

    def append_steps(self, records: list[dict]) -> None:
        if not records:
            return
        try:
            with open(self.steps_path, "a") as f:
                f.write("".join(json.dumps(m, sort_keys=True) + "\n" for m in records))
        except OSError as exc:
            raise WriteError(f"cannot write {self.steps_path}: {describe(exc)}") from None

    def read_steps(self) -> list[dict]:
        """Every step record (a line cut short by a kill is left out)."""
        return [m for m in _read_jsonl(self.steps_path) if isinstance(m.get("step"), int)]

    # ---- checkpoints/ and model.safetensors --------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest step first."""
        return checkpoints.list_checkpoints(self.checkpoint_dir)

    def save_checkpoint(self, step: int, tensors: dict, metadata: dict, keep: int) -> Path | None:
        return checkpoints.save_checkpoint(self.checkpoint_dir, step, tensors, metadata, keep)

    def latest_checkpoint(self, check=None):
        """(path, tensors, metadata, skipped) of the newest valid checkpoint (see io.checkpoints)."""
        return checkpoints.latest_valid(self.checkpoint_dir, check=check)

    def save_model(self, tensors: dict, metadata: dict) -> None:
        write_safetensors(self.model_path, tensors, metadata)

    # ---- log.txt -----------------------------------------------------------------------------
    def open_log(self):
        """log.txt for appending (binary): a job's output, one attempt after another."""
        return open(self.log_path, "ab")

    def attempt_header(self, attempt: int, max_attempts: int, where: str) -> str:
        """The line that opens an attempt's output in log.txt, numbered over the whole log (the
        queue's count restarts at `jobs retry`; the log's does not)."""
        try:
            text = b"\n" + self.log_path.read_bytes()
        except OSError:
            text = b""
        n = text.count(b"\n--- attempt ")
        since = f", try {attempt}/{max_attempts} since the last retry" if n + 1 != attempt else ""
        return f"--- attempt {n + 1} on {where}{since} ---\n"

    def append_log(self, line: str) -> None:
        """A line of the worker's own in the job's log (why an attempt ended)."""
        try:
            with self.open_log() as f:
                f.write(line.encode() + b"\n")
        except OSError:
            pass

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of log.txt joined by ' / ' (why an attempt failed)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4000))
                text = f.read().decode(errors="replace").strip().splitlines()
            return " / ".join(text[-lines:])
        except OSError:
            return "no log"


def _read_jsonl(path: Path) -> list[dict]:
    """The lines of a metrics file that are objects of names and finite numbers."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if isinstance(m, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and math.isfinite(v) for v in m.values()):
            out.append(m)
    return out


class NullRunDir(RunDir):
    """A run kept in memory: no lock, no files, no checkpoints."""

    persistent = False

    def __init__(self):
        self.path = None

    def __repr__(self) -> str:
        return "NullRunDir()"

    def holds_run(self) -> bool:
        return False

    def remove_stale_temps(self) -> list[Path]:
        return []

    def lock(self, wait: bool = False, on_wait=None):
        return nullcontext()

    def write_config(self, text: str) -> None: ...

    def wait_at_gate(self, epochs_done: int, stop, poll_s: float = 0.05) -> None: ...

    def write_metrics(self, history: list[dict]) -> None: ...

    def append_metrics(self, metrics: dict) -> None: ...

    def keep_steps(self, up_to: int) -> None: ...

    def write_status(self, status: str, **fields) -> None: ...

    def append_steps(self, records: list[dict]) -> None: ...

    def read_steps(self) -> list[dict]:
        return []

    def read_metrics(self) -> list[dict]:
        return []

    def checkpoints(self) -> list[Path]:
        return []

    def save_checkpoint(self, step: int, tensors: dict, metadata: dict, keep: int) -> None:
        return None

    def save_model(self, tensors: dict, metadata: dict) -> None: ...
