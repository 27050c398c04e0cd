"""What a checkpoint holds, and how a run continues from one.

Tensors: the model's `layers.{i}.weight/bias`, the optimizer state (`optimizer.*`, flat vectors in
the parameter layout of compute/layout.py) and, with early stopping, `early_stopping.best_theta`.
Metadata: the model's (config, activations with plugin versions, preprocessing) plus `state`,
the `State` (epoch, step, position in the epoch, RNG state, ...), so a resume is bit-exact.

    tensors, meta = checkpoint_contents(model, opt_name, opt_state, best_theta, state, threads)
    restored = restore(path, tensors, meta, model=..., opt_name=..., epochs=..., n_train=..., batch=...)
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, PluginError
from ..io.rundir import RunDir
from ..io.safetensors import read_safetensors
from .model import Model
from .state import State, checkpoint_state, state_from_checkpoint

OPT_STATE_NAMES = {"sgd": ("optimizer.momentum_buffer",), "adam": ("optimizer.exp_avg", "optimizer.exp_avg_sq"),
                   "adamw": ("optimizer.exp_avg", "optimizer.exp_avg_sq")}


def checkpoint_contents(model: Model, opt_name: str, opt_state: np.ndarray, best_theta, state: State,
                        threads: int) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint of this run as it is now."""
    tensors = model.layer_tensors()
    for i, name in enumerate(OPT_STATE_NAMES[opt_name]):
        tensors[name] = opt_state[i]
    if best_theta is not None:
        tensors["early_stopping.best_theta"] = best_theta
    meta = model.metadata() | {"kind": "checkpoint", "state": checkpoint_state(state), "threads": threads}
    return tensors, meta


@dataclass
class Restored:
    theta: np.ndarray
    opt_state: list  # one (P,) array per OPT_STATE_NAMES entry
    best_theta: np.ndarray | None
    state: State


def _flat(path: Path, name: str, a, n: int) -> np.ndarray:
    if a is None:
        raise CheckpointError(f"{path}: missing optimizer tensor {name}")
    if a.shape != (n,) or a.dtype.kind != "f" or not np.isfinite(a).all():
        raise CheckpointError(f"{path}: {'optimizer tensor ' if name.startswith('optimizer.') else ''}{name} "
                              f"must be {n} finite numbers, got shape {a.shape} {a.dtype}")
    return a


def restore(path: Path, tensors: dict, meta: dict, *, model: Model, opt_name: str, epochs: int,
            n_train: int, batch: int) -> Restored:
    """A checkpoint's contents, validated against the run (`model`: its freshly prepared model).
    Raises CheckpointError naming the file; nothing of the run is changed here."""
    restored = Model.from_parts(tensors, meta, str(path))
    if restored.sizes != model.sizes:
        raise CheckpointError(f"{path}: layer sizes {restored.sizes} do not match the run's config")
    n = model.theta.size
    opt = [_flat(path, name, tensors.get(name), n) for name in OPT_STATE_NAMES[opt_name]]
    best = tensors.get("early_stopping.best_theta")
    if best is not None:
        best = _flat(path, "early_stopping.best_theta", best, n).astype(model.theta.dtype)
    state = state_from_checkpoint(meta.get("state"), path, epochs=epochs, n_train=n_train, batch=batch)
    return Restored(restored.theta, opt, best, state)


def check_plugins(rundir: RunDir, registry) -> None:
    """A PluginError naming plugin and version if the newest readable checkpoint's activations
    are not all registered (before any data is loaded)."""
    for path in reversed(rundir.checkpoints()):
        try:
            _, meta = read_safetensors(path)
        except CheckpointError:
            continue
        plugins = meta.get("plugins")
        for name, info in plugins.items() if isinstance(plugins, dict) else ():
            if name not in registry.activations:
                info = info if isinstance(info, dict) else {}
                raise PluginError(
                    f"checkpoint {path} uses activation {name!r} from plugin {info.get('source')} "
                    f"{info.get('version')}, which is not installed or failed to load "
                    "(`deltaprop plugins list` shows why); install it to resume this run")
        return
