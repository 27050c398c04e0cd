"""`Logger`: what a logger plugin implements, and `RunInfo`: what it is told when a run starts.

A logger plugin registers a name and a factory through the `register_loggers` hook, as the
builtins (`tensorboard`, `mlflow`, in `plugins/builtin_loggers.py`) do:

    @deltaprop.hookimpl
    def register_loggers(register):
        register("wandb_lite", MyLogger)        # MyLogger() -> a deltaprop.Logger

and a run's config turns it on (`jsonl`, metrics.jsonl and steps.jsonl in the run directory, is
always on: it is the run's own record, written by training/loggers.py): `[logging] loggers = ["wandb_lite"]`. The factory is
called once per run; ImportError from it (a missing optional package) is a config error before
training starts. A logger whose method raises is reported by name and disabled for the rest of
the run; training goes on.

Steps are global optimizer steps (1-based: the step just taken). `log_step` is called at every
multiple of `logging.every_steps` whatever the chunking, `log_epoch` at each epoch's end with that
epoch's metrics (the line metrics.jsonl gets), `flush` before every checkpoint is written, so
what a logger has been given before a checkpoint survives a SIGKILL after it. A resumed run
starts at its checkpoint's step (`RunInfo.step`): everything logged after that step by the killed
attempt is logged again, with the same values (resume is bit-exact; samples/s aside), so a
logger either purges what it had after `RunInfo.step` (TensorBoard's purge_step) or skips points
it already has (MLflow).
"""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunInfo:
    name: str  # the run directory's name ("" for an in-memory run)
    run_dir: Path | None  # None for in-memory runs (the scikit-learn estimators)
    config: dict  # the resolved config: section -> key -> value
    summary: dict  # the model summary (training/summary.py): layers, parameters, FLOPs, memory
    resumed: bool  # continuing a run that started in an earlier process
    step: int  # global steps already taken: this run logs steps > step
    epoch: int  # epochs done
    epochs: int
    steps_per_epoch: int
    options: dict = field(default_factory=dict)  # the config's [logging] section


class Logger:
    """Every method is optional; the defaults do nothing.

    status in `end`: "finished", "interrupted" (a signal or a stop request, after a checkpoint:
    the run can be resumed) or "failed" (diverged, disk full...). model_path: the model file of
    a finished run in a run directory, else None.
    """

    def start(self, run: RunInfo) -> None: ...

    def log_step(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def end(self, status: str, model_path: Path | None) -> None: ...


@dataclass(frozen=True)
class LoggerSpec:
    """A registered logger: its name, its factory and the plugin that registered it."""

    name: str
    factory: object
    source: str = ""
    version: str = ""

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.name, str) or not self.name.isidentifier():
            out.append(f"logger name {self.name!r} is not an identifier")
        if not callable(self.factory):
            out.append(f"logger {self.name!r}: the factory {self.factory!r} is not callable")
        return out
