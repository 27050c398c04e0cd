"""A run's loggers: the jsonl record (always on) and the `[logging] loggers` plugins, guarded.

    loggers = RunLoggers(config, registry, rundir, note)      # unknown or uninstalled: ConfigError
    loggers.start(info); loggers.step(...); loggers.epoch(...); loggers.flush(); loggers.end(...)

The trainer calls this object only. Each plugin logger's call is guarded: one that raises is
reported once through `note`, by name and plugin, and dropped for the rest of the run; training
goes on. The jsonl record is not guarded: it is the run's own metrics.jsonl / steps.jsonl, and
failing to write it (a full disk) fails the run like any other write.
"""

import os
from pathlib import Path

from ..errors import ConfigError, PluginError, WriteError
from ..io.rundir import RunDir
from ..plugins.builtin_loggers import NeedsRunDir
from ..plugins.logger import Logger, RunInfo
from ..plugins.manager import RESERVED_LOGGERS
from .options import suggest

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> deltaprop's optional extra


class JsonlSteps(Logger):
    """steps.jsonl: one line per logged step; what is logged between checkpoints is written at
    each flush (before every checkpoint), so a kill loses nothing a resume does not redo."""

    def __init__(self, rundir: RunDir):
        self.rundir, self.pending = rundir, []

    def start(self, run: RunInfo) -> None:
        self.rundir.keep_steps(run.step)
        self.rundir.write_status("running", pid=os.getpid(), epoch=run.epoch, step=run.step)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self.pending.append({"step": step, **scalars})

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.rundir.append_steps(pending)

    def end(self, status: str, model_path: Path | None, *, epoch: int = 0, step: int = 0, error: str = "") -> None:
        self.flush()
        self.rundir.write_status(status, epoch=epoch, step=step, **({"error": error} if error else {}))


def check_logger_names(config, registry=None) -> None:
    """Each of `logging.loggers` is registered, else a ConfigError naming it (and the closest
    name): what `train` checks before training and `submit`/`sweep` before queuing a job."""
    names = [n for n in config.logging.loggers if n not in RESERVED_LOGGERS]
    if not names:
        return
    if registry is None:
        from ..plugins.manager import get_registry
        registry = get_registry()
    for i, name in enumerate(config.logging.loggers):
        if name in RESERVED_LOGGERS:
            continue
        try:
            registry.logger(name)
        except PluginError as exc:
            hint = suggest(name, [*RESERVED_LOGGERS, *registry.loggers])
            raise ConfigError(f"logging.loggers[{i}] = {name!r}: {exc}{hint}") from None


class RunLoggers:
    def __init__(self, config, registry, rundir: RunDir, note):
        self.note, self.rundir = note, rundir
        self.jsonl = JsonlSteps(rundir)
        self.every = config.logging.every_steps
        self.active: list[tuple[str, object, Logger]] = []  # (name, spec, logger)
        check_logger_names(config, registry)
        for i, name in enumerate(config.logging.loggers):
            if name in RESERVED_LOGGERS:
                continue
            where = f"logging.loggers[{i}] = {name!r}"
            spec = registry.logger(name)
            try:
                logger = spec.factory()
            except ImportError as exc:
                extra = EXTRAS.get(name)
                how = f"pip install 'deltaprop[{extra}]'" if extra else "install what it needs"
                raise ConfigError(f"{where}: the logger cannot load its library ({exc}); {how}") from None
            except Exception as exc:
                self._failed(name, spec, "its factory", exc)
                continue
            self.active.append((name, spec, logger))

    def _failed(self, name: str, spec, where: str, exc: BaseException) -> None:
        origin = f" (from {spec.source} {spec.version})".rstrip() if spec.source else ""
        if isinstance(exc, NeedsRunDir):
            self.note(f"logger {name!r} is off for this run: {exc}")
            return
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.note(f"logger {name!r}{origin} raised in {where}: {type(exc).__name__}: {first}; "
                  "it is disabled for the rest of this run, training goes on")

    def _call(self, method: str, *args) -> None:
        for entry in list(self.active):
            name, spec, logger = entry
            try:
                getattr(logger, method)(*args)
            except Exception as exc:
                self.active.remove(entry)
                self._failed(name, spec, method, exc)

    def start(self, config, summary: dict, resumed: bool, state, steps_per_epoch: int) -> None:
        from .summary import summary_text
        rd, resolved = self.rundir, config.to_dict()
        info = RunInfo(rd.path.name if rd.persistent else "", rd.path, resolved,
                       summary | {"text": summary_text(summary)}, resumed, state.step, state.epoch,
                       config.training.epochs, steps_per_epoch, resolved["logging"])
        self.jsonl.start(info)
        self._call("start", info)

    def steps(self, first: int, losses, lrs, correct, rows, samples_per_s: float, classify: bool) -> None:
        """The steps first+1 .. first+len(losses) were taken: log those at multiples of every_steps."""
        for i in range(len(losses)):
            step = first + i + 1
            if step % self.every:
                continue
            scalars = {"loss": float(losses[i]), "lr": float(lrs[i]), "samples_per_s": float(samples_per_s)}
            if classify:
                scalars["accuracy"] = float(correct[i]) / float(rows[i])
            self.jsonl.log_step(step, scalars)
            self._call("log_step", step, scalars)

    def epoch(self, metrics: dict) -> None:
        self._call("log_epoch", int(metrics["step"]), dict(metrics))

    def flush(self) -> None:
        self.jsonl.flush()
        self._call("flush")

    def end(self, status: str, model_path: Path | None, state, error: str = "") -> None:
        """On a failure, the jsonl record may not be writable (that may be why the run failed):
        the run's own error is the one reported."""
        try:
            self.jsonl.end(status, model_path, epoch=state.epoch, step=state.step, error=error)
        except WriteError:
            if status == "finished":
                raise
        self._call("end", status, model_path)
