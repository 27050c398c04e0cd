"""Starting and continuing a run in its run directory (the CLI's `train` and `resume`).

    result = train_run(config, run_dir)              # a new run: the directory must hold none
    result = resume_run(run_dir, epochs=20)          # from the newest valid checkpoint
"""

from dataclasses import replace
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..io.rundir import RunDir
from ..io.safetensors import read_safetensors
from .config import Config, read_run_config
from .run import RunResult
from .trainer import Trainer


def train_run(config: Config, run_dir: Path, **kwargs) -> RunResult:
    """Start a new run in `run_dir` (which must not hold one already)."""
    rundir = RunDir(run_dir)
    try:
        rundir.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {rundir.path}: {exc.strerror or exc}") from None
    with rundir.lock():  # before config.toml is looked at or written
        if rundir.holds_run():
            raise ConfigError(f"run directory {rundir.path} already holds a run: continue it with "
                              f"`deltaprop resume {rundir.path}` or choose another --run-dir")
        rundir.write_config(config.to_toml())
        return Trainer(config, rundir, **kwargs)._run(False)


def resume_run(run_dir: Path, wait_for_lock: bool = False, epochs: int | None = None, **kwargs) -> RunResult:
    """Continue a run from its newest valid checkpoint to the configured end. `wait_for_lock`: if
    another process trains it, wait for that one to end instead of failing. `epochs`: train to
    this many epochs instead (a finished run too), recorded in config.toml."""
    rundir = RunDir(run_dir)
    config = read_run_config(rundir)
    if epochs is not None and epochs != config.training.epochs:
        trained = _epochs_trained(rundir)
        if trained > epochs:
            raise ConfigError(f"--epochs {epochs}: the run in {rundir.path} has already trained {trained} epochs")
        config = replace(config, training=replace(config.training, epochs=epochs))
        kwargs["extend"] = True
    trainer = Trainer(config, rundir, stop_requested=lambda: _wait_at_gate(trainer), **kwargs)
    return trainer.run(resume=True, wait_for_lock=wait_for_lock)


def _wait_at_gate(trainer) -> None:
    """Asked at every step boundary whether to stop: right after an epoch ends (pos 0, the run not
    finished), a tune trial at one of its pruner's rungs waits for the controller's verdict
    (RunDir.wait_at_gate); a signal ends the wait, and the trainer checkpoints and stops."""
    st = trainer.state
    if st.pos == 0 and st.epoch > 0 and not st.finished:
        trainer.rundir.wait_at_gate(st.epoch, lambda: trainer._signal is not None)


def _epochs_trained(rundir: RunDir) -> int:
    """The epoch count of the newest readable checkpoint (0 if none)."""
    for path in reversed(rundir.checkpoints()):
        try:
            epoch = read_safetensors(path)[1]["state"]["epoch"]
        except (CheckpointError, KeyError, TypeError):
            continue
        if isinstance(epoch, int):
            return epoch
    return 0
