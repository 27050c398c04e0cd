"""The Python API for people who script rather than type.

    import deltaprop
    run = deltaprop.train("examples/fashion-mnist.toml", training__epochs=2)   # or a Config / dict
    run.metrics[-1]["test_accuracy"]
    model = deltaprop.load_model(run.run_dir)
    model.predict(X); model.predict_proba(X); model.evaluate(X, y)
"""

import shutil
import time
from dataclasses import replace
from pathlib import Path

from ._system import home
from .errors import ConfigError
from .io.rundir import RunDir
from .training.config import (
    INIT_RULES,
    Config,
    config_from_dict,
    load_config,
    merge_overrides,
)
from .training.model import load_model  # noqa: F401  (re-exported)
from .training.prepare import resolve_data_spec
from .training.run import LineReporter, RunResult
from .training.runs import resume_run, train_run


def resolve_paths(config: Config, config_dir: Path | None) -> Config:
    """Data and init paths made absolute, so the run directory's config works from anywhere."""
    data = replace(config.data, train=resolve_data_spec(config.data.train, config_dir),
                   test=resolve_data_spec(config.data.test, config_dir))
    model = config.model
    if model.init not in INIT_RULES:
        model = replace(model, init=resolve_data_spec(model.init, config_dir))
    return replace(config, data=data, model=model)


def read_config(source, overrides=()) -> Config:
    """A validated Config from a TOML path, a dict or a Config, with --set style overrides."""
    if isinstance(source, Config):
        if overrides:
            source = config_from_dict(merge_overrides(source.to_dict(), overrides))
        return resolve_paths(source, None)
    if isinstance(source, dict):
        return resolve_paths(config_from_dict(merge_overrides(source, overrides)), None)
    path = Path(source)
    return resolve_paths(load_config(path, overrides), path.resolve().parent)


def default_run_dir(name: str) -> Path:
    return home() / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(config, run_dir=None, *, overwrite: bool = False, progress: bool = False, **overrides) -> RunResult:
    """Train a run. `config`: TOML path, dict or Config; overrides as section__key=value.
    `run_dir` (default: a new one under DELTAPROP_HOME); `overwrite`: replace the run a run_dir
    holds; `progress`: print a line per epoch."""
    sets = [f"{k.replace('__', '.', 1)}={_toml(v)}" for k, v in overrides.items()]
    cfg = read_config(config, sets)
    name = Path(config).stem if isinstance(config, (str, Path)) else "run"
    path = Path(run_dir) if run_dir else default_run_dir(name)
    rd = RunDir(path)
    if rd.holds_run():
        if not overwrite:
            raise ConfigError(f"run directory {path} already holds a run: pass overwrite=True to replace it, "
                              "another run_dir, or continue it with deltaprop.resume")
        if not rd.config_path.is_file():
            raise ConfigError(f"{path} holds checkpoints but no config.toml: not replacing what is not a run")
        for p in (rd.checkpoint_dir, rd.model_path, rd.metrics_path, rd.config_path):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return train_run(cfg, path, reporter=LineReporter() if progress else None)


def resume(run_dir, epochs: int | None = None, *, progress: bool = False) -> RunResult:
    """Continue a run from its newest valid checkpoint (`epochs`: to this many instead)."""
    return resume_run(Path(run_dir), epochs=epochs, reporter=LineReporter() if progress else None)


def load_dataset(spec: str, **kwargs):
    """A dataset as arrays: `ds = deltaprop.load_dataset("fashion-mnist:test"); ds.X, ds.y`."""
    from .io.datasets import load_dataset as load
    return load(str(spec), **kwargs)


def _toml(v) -> str:
    from .training.config import toml_value
    return toml_value(v)
