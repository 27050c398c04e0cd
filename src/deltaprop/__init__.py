"""deltaprop: Numba-JIT batch training of multilayer perceptrons.

Public API (kept light: Numba is imported only when a kernel is needed):
  hookimpl, Activation          write an activation plugin
  Logger, RunInfo               write a logger plugin (TensorBoard, MLflow are builtin ones)
  train(config, run_dir=None, overwrite=False, progress=False, **overrides)   a run's `RunResult`
  resume(run_dir, epochs=None)  continue (or extend) a run
  load_model(path)              a trained model with .predict / .predict_proba / .evaluate / .to_onnx
  load_dataset(spec)            a dataset's arrays (.X, .y), e.g. "fashion-mnist:test"
"""

__version__ = "0.1.0"

import os as _os  # noqa: E402

from ._system import numba_cache_dir as _numba_cache_dir  # noqa: E402

# Before anything imports Numba: one compile cache whoever runs deltaprop (make run, the tests, the
# CLI, a job process), unless the user chose one.
_os.environ.setdefault("NUMBA_CACHE_DIR", str(_numba_cache_dir()))

from .plugins.activation import Activation  # noqa: E402
from .plugins.hookspecs import hookimpl  # noqa: E402
from .plugins.logger import Logger, RunInfo  # noqa: E402

__all__ = ["Activation", "Logger", "RunInfo", "hookimpl", "train", "resume", "load_model", "load_dataset", "__version__"]
_LAZY = {"train", "resume", "load_model", "load_dataset"}  # from .api, imported on first use


def __getattr__(name):
    if name in _LAZY:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'deltaprop' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
