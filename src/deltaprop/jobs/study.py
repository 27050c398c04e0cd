"""A tune study's directory, `$DELTAPROP_HOME/tune/ID/`, and what is read from it without Optuna.

    study.json        what the study is (base config, space, sampler, pruner, metric...): written
                      once by `deltaprop tune`, never changed
    optuna.db         Optuna's storage (SQLite); only the controller ever writes it
    leaderboard.json  the controller's view of the trials after every change (`tune show` reads it)
    controller.log    the output of a controller started in the background
    trial-N/          trial N's run directory (the job `tune-ID-trial-N`)

A controller holds a lock on the directory for its life, so a study has one controller at a time.
"""

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .._system import atomic_write, describe, dir_locked
from .._system import home as default_home
from ..errors import DeltapropError
from ..io.rundir import RunDir


class TuneError(DeltapropError):
    """A study does not exist, is in use, or a trial cannot be continued."""


def tune_root(home: Path | None = None) -> Path:
    return Path(home if home is not None else default_home()) / "tune"


def job_name(study_id: str, number: int) -> str:
    return f"tune-{study_id}-trial-{number}"


class StudyDir:
    def __init__(self, study_id: str, home: Path | None = None):
        self.id = str(study_id)
        self.path = tune_root(home) / self.id

    @classmethod
    def create(cls, spec: dict, home: Path | None = None) -> "StudyDir":
        """A new study: the next free number, its directory made exclusively, study.json written."""
        root = tune_root(home)
        try:
            root.mkdir(parents=True, exist_ok=True)
            taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
            n = max(taken, default=0) + 1
            while True:
                try:
                    (root / str(n)).mkdir()
                    break
                except FileExistsError:
                    n += 1
        except OSError as exc:
            raise TuneError(f"cannot create a study directory under {root}: {describe(exc)}") from None
        study = cls(str(n), home)
        try:
            atomic_write(study.spec_path, json.dumps({"id": study.id, "created": time.time(), **spec},
                                                     indent=1, sort_keys=True) + "\n")
        except BaseException:
            os.rmdir(study.path) if not any(study.path.iterdir()) else None
            raise
        return study

    @property
    def spec_path(self) -> Path:
        return self.path / "study.json"

    @property
    def storage_path(self) -> Path:
        return self.path / "optuna.db"

    @property
    def board_path(self) -> Path:
        return self.path / "leaderboard.json"

    @property
    def log_path(self) -> Path:
        return self.path / "controller.log"

    def trial_dir(self, number: int) -> Path:
        return self.path / f"trial-{number}"

    def spec(self) -> dict:
        if not self.spec_path.is_file():
            known = sorted((p.name for p in self.path.parent.glob("*") if (p / "study.json").is_file()),
                           key=lambda s: (len(s), s)) if self.path.parent.is_dir() else []
            raise TuneError(f"no study {self.id} in {self.path.parent}"
                            + (f" (studies: {', '.join(known)})" if known else " (start one with deltaprop tune)"))
        try:
            return json.loads(self.spec_path.read_text())
        except (OSError, ValueError) as exc:
            raise TuneError(f"cannot read {self.spec_path}: {exc}") from None

    def board(self) -> dict:
        """The last leaderboard the controller wrote ({} before its first)."""
        try:
            found = json.loads(self.board_path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def write_board(self, board: dict) -> None:
        atomic_write(self.board_path, json.dumps(board, indent=1, sort_keys=True) + "\n")

    @contextmanager
    def lock(self):
        """The controller's lock (a flock on the study directory); TuneError if another holds it."""
        import fcntl
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TuneError(f"study {self.id} is being run by another controller (see "
                                f"{self.log_path}); `deltaprop tune show {self.id}` follows it") from None
            yield
        finally:
            os.close(fd)

    def controller_running(self) -> bool:
        return dir_locked(self.path)


def epochs_spent(run_dir) -> float:
    """Epochs a run has trained so far, fractional (a run stopped mid-epoch at a step boundary):
    the step it stopped at (status.json, else its last epoch) over the steps of one epoch."""
    rd = RunDir(run_dir)
    history = rd.read_metrics()
    if not history or not history[0].get("epoch"):
        return 0.0
    per_epoch = history[0]["step"] / history[0]["epoch"]
    step = history[-1]["step"]
    status = rd.read_status()
    if status.get("status") in ("interrupted", "finished") and isinstance(status.get("step"), int):
        step = max(step, status["step"])
    return round(step / per_epoch, 3) if per_epoch else 0.0
