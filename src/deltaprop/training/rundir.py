"""A run directory on disk: the lock that keeps one training process per run, its config.toml.

    RUN_DIR/config.toml   the resolved config the run trains (written once, atomically)
    RUN_DIR/checkpoints/  step-*.safetensors (service/checkpoint.py)
    RUN_DIR/metrics.jsonl, model.safetensors   written by the trainer
"""

import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError
from .config import Config, config_from_dict


@contextmanager
def lock_run_dir(run_dir: Path):
    """An exclusive lock on the run directory for the life of a training process, so two
    processes never train the same run at once. It is a flock on the directory itself: nothing in
    it is ever replaced under the lock (a lock on config.toml was lost when a second `train`
    replaced that file), and no extra file appears in the run directory."""
    import fcntl
    fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"run directory {run_dir} is in use by another deltaprop process "
                              "(a train or resume of it is running)") from None
        except OSError as exc:
            raise ConfigError(f"cannot lock run directory {run_dir}: {exc.strerror or exc}") from None
        yield
    finally:
        os.close(fd)


def prepare_run_dir(config: Config, run_dir: Path) -> None:
    """Write config.toml into a run directory that holds no run (called with the lock held)."""
    if (run_dir / "checkpoints").exists() or (run_dir / "model.safetensors").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run: continue it with "
                          f"`deltaprop resume {run_dir}` or choose another --run-dir")
    tmp = run_dir / ".config.toml.tmp"
    tmp.write_text(config.to_toml())
    os.replace(tmp, run_dir / "config.toml")


def read_run_config(run_dir: Path) -> Config:
    import tomllib
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {path} is missing")
    try:
        return config_from_dict(tomllib.loads(path.read_text()), str(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
