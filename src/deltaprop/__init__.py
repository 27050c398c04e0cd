"""deltaprop: Numba-JIT batch training of multilayer perceptrons.

Public API (kept light: Numba is imported only when a kernel is needed):
  hookimpl, Activation          write an activation plugin
  train(config, **overrides)    train a run, returns a `Run`
  load_model(path)              a trained model with .predict / .predict_proba / .evaluate
"""

__version__ = "0.1.0"

import os as _os  # noqa: E402

from ._system import numba_cache_dir as _numba_cache_dir  # noqa: E402

# Before anything imports Numba: one compile cache whoever runs deltaprop (make run, the tests, the
# CLI, a job process), unless the user chose one.
_os.environ.setdefault("NUMBA_CACHE_DIR", str(_numba_cache_dir()))

from .plugins.activation import Activation  # noqa: E402
from .plugins.hookspecs import hookimpl  # noqa: E402

__all__ = ["Activation", "hookimpl", "train", "load_model", "__version__"]


def __getattr__(name):
    if name == "train":
        from .api import train
        return train
    if name == "load_model":
        from .api import load_model
        return load_model
    raise AttributeError(f"module 'deltaprop' has no attribute {name!r}")
