"""The estimators' shared machinery: parameters to a deltaprop Config, fitting through the
trainer (no run directory), prediction, sklearn-style weights, pickling."""

import numbers
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import ConfigError, DeltapropError
from ..training.config import INIT_RULES
from ..training.threads import SharedThreadTuner

# config key -> the parameter that becomes it: config errors are reported under the parameter's name
PARAMETER_OF = {"optimizer.name": "solver", "optimizer.lr": "learning_rate_init", "training.epochs": "max_iter",
                "training.shuffle": "shuffle", "training.dtype": "dtype", "training.threads": "threads",
                "optimizer.eps": "epsilon", "optimizer.momentum": "momentum", "early_stopping.min_delta": "tol",
                "optimizer.betas": "beta_1, beta_2", "data.validation_fraction": "validation_fraction",
                "model.activation": "activation", "model.hidden": "hidden_layer_sizes"}
_KEY_RE = re.compile("|".join(re.escape(k) for k in sorted(PARAMETER_OF, key=len, reverse=True)))
ALIASES = {"logistic": "sigmoid"}  # sklearn's activation names that deltaprop spells differently
# threads=0: the thread count of each fit, chosen across the fits of this process (see SharedThreadTuner)
_FIT_THREADS = SharedThreadTuner()


class _Printer:
    """verbose=True: sklearn's per-epoch lines."""

    def start(self, *a): ...
    def epoch_start(self, *a): ...
    def advance(self, *a): ...

    def epoch_end(self, metrics: dict):
        print(f"Iteration {metrics['epoch']}, loss = {metrics['loss']:.8f}")
        for key in ("val_accuracy", "val_r2"):
            if key in metrics:
                print(f"Validation score: {metrics[key]:f}")

    def note(self, text: str):
        print(text)


@contextmanager
def _as_value_error():
    """deltaprop's user errors (bad data, parameters, model files) as the ValueError sklearn expects."""
    try:
        yield
    except DeltapropError as exc:
        raise ValueError(str(exc)) from exc


class _BaseMLP(BaseEstimator):
    _loss = ""  # cross_entropy | mse

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dtype="float32",
                 threads=0, init="glorot_sklearn"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.threads = threads
        self.init = init

    # ---- parameters -> Config ----------------------------------------------------------------
    def _hidden(self) -> list[int]:
        h = self.hidden_layer_sizes
        h = list(h) if hasattr(h, "__iter__") else [h]
        if any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0 for v in h):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        return [int(v) for v in h]

    def _activations(self, n_hidden: int):
        a = self.activation
        if isinstance(a, str):
            return ALIASES.get(a, a)
        a = [ALIASES.get(x, x) for x in a]
        if len(a) != n_hidden:
            raise ValueError(f"activation lists {len(a)} names for {n_hidden} hidden layers")
        return a

    def _check_params(self) -> None:
        """Every parameter checked before fitting. Those that become one config key are checked
        by that key's own rule (training/config.py), reported under the parameter's name; here
        only the rules scikit-learn has and the config does not."""
        def need(ok, text):
            if not ok:
                raise ValueError(f"{type(self).__name__}: {text}")
        num = (int, float, np.integer, np.floating)
        need(isinstance(self.alpha, num) and self.alpha >= 0, f"alpha must be >= 0, got {self.alpha!r}")
        need(self.batch_size == "auto" or (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1),
             f"batch_size must be 'auto' or an integer >= 1, got {self.batch_size!r}")
        need(isinstance(self.n_iter_no_change, (int, np.integer)) and self.n_iter_no_change >= 1,
             f"n_iter_no_change must be an integer >= 1, got {self.n_iter_no_change!r}")
        need(isinstance(self.momentum, num) and 0 <= self.momentum <= 1,
             f"momentum must be in [0, 1], got {self.momentum!r}")
        need(isinstance(self.validation_fraction, num) and 0 < self.validation_fraction < 1,
             f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        need(isinstance(self.init, str) and self.init in INIT_RULES,
             f"init must be one of {', '.join(INIT_RULES)}, got {self.init!r}")
        self._config(2**31, self.max_iter, 0, bool(self.early_stopping), self.threads)

    def _np_dtype(self):
        return np.dtype(self.dtype)

    def _config(self, n_train: int, epochs, seed: int, early_stopping: bool, threads, mean_weight=None):
        """The deltaprop Config these parameters mean (values pass through unconverted, so the
        config's type checks see them as given). `mean_weight`: of the sample weights, if any."""
        from ..training.config import config_from_dict
        hidden = self._hidden()
        batch = 200 if self.batch_size == "auto" else int(self.batch_size)
        if self.batch_size != "auto" and batch > n_train:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        batch = min(batch, n_train)
        monitor = ("val_accuracy" if self._loss == "cross_entropy" else "val_r2") if early_stopping else "train_loss"
        dtype = np.dtype(self.dtype).name if self.dtype in (np.float32, np.float64) else _plain(self.dtype)
        raw = {
            "model": {"hidden": hidden, "activation": self._activations(len(hidden)), "init": self.init},
            "data": {"train": "", "test": "", "scale": "none",
                     "validation_fraction": _plain(self.validation_fraction) if early_stopping else 0.0},
            "training": {"epochs": _plain(epochs), "batch_size": batch, "loss": self._loss,
                         "shuffle": _plain(self.shuffle), "seed": int(seed), "dtype": dtype,
                         "threads": _plain(threads)},
            "optimizer": {"name": _plain(self.solver), "lr": _plain(self.learning_rate_init),
                          "weight_decay": float(self.alpha) / batch if mean_weight is None else
                                          float(self.alpha) / (batch * mean_weight),
                          "betas": [_plain(self.beta_1), _plain(self.beta_2)], "eps": _plain(self.epsilon)},
            "early_stopping": {"patience": int(self.n_iter_no_change) + 1 if epochs != 1 else 0,
                               "monitor": monitor, "min_delta": _plain(self.tol),
                               "restore_best": bool(early_stopping), "best": "running"},
            "checkpoint": {"every_epochs": 0, "every_steps": 0},
        }
        if self.solver == "sgd":
            raw["optimizer"] |= {"momentum": _plain(self.momentum),
                                 "nesterov": bool(self.nesterovs_momentum) and self.momentum > 0}
        try:
            return config_from_dict(raw, type(self).__name__)
        except ConfigError as exc:
            raise ValueError(_KEY_RE.sub(lambda m: PARAMETER_OF[m.group(0)], str(exc))) from None

    def _new_seed(self) -> int:
        if isinstance(self.random_state, (int, np.integer)) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # ---- fitting -----------------------------------------------------------------------------
    def _fit(self, X, y, incremental: bool, classes=None, sample_weight=None):
        from ..io.weights import check_weights
        from ..training.trainer import Start, Trainer
        self._check_params()
        fitted = hasattr(self, "model_")
        first = not fitted or not (incremental or self.warm_start)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        # sklearn's checks (types, sparse, complex, shapes, n_features_in_, y); X's NaN/Inf and the
        # rest are deltaprop's own data checks (service/data.py), run when the arrays reach prepare
        X, y = validate_data(self, X, y, reset=first, dtype=self._np_dtype(), ensure_all_finite=False,
                             **self._y_check())
        X = np.require(X, self._np_dtype(), ["C", "W"])
        source = f"{type(self).__name__}.{'partial_fit' if incremental else 'fit'}(X, y)"
        w = None
        if sample_weight is not None:
            with _as_value_error():
                w = check_weights(_weight_array(sample_weight, len(X)), len(X), source, "sample_weight")
        y, k = self._encode_y(y, first, incremental, classes)
        if not first and self.model_.scale != "none":
            raise ValueError(f"cannot continue training a model with deltaprop's input scaling "
                             f"(data.scale = {self.model_.scale!r}, a CLI-trained model): fit it from scratch")
        if not first and self.model_.sizes[-1] != k:
            raise ValueError(f"cannot continue training: the model has {self.model_.sizes[-1]} outputs, "
                             f"this y needs {k}")
        if first:
            self._seed = self._new_seed()
            start = None
        elif incremental:
            start = Start(self.model_.theta.copy(), self._opt_state, self._step, self._rng)
        else:  # warm_start: the weights, a fresh optimizer (as sklearn)
            start = Start(self.model_.theta.copy())
        early = bool(self.early_stopping) and not incremental
        n_val = int(round(self.validation_fraction * len(X))) if early else 0
        if early and n_val < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size "
                             "of your dataset.")
        epochs = 1 if incremental else self.max_iter
        n_train = max(1, len(X) - n_val)
        tuned = int(self.threads) == 0  # chosen fit by fit, across this process's fits
        threads = _FIT_THREADS.choose() if tuned else int(self.threads)
        with _as_value_error():
            cfg = self._config(n_train, epochs, self._seed, early, threads, None if w is None else float(w.mean()))
            t0 = time.perf_counter()
            result = Trainer(cfg, None, arrays=(X, y) if w is None else (X, y, w), n_outputs=k, start=start,
                             source=source, reporter=_Printer() if self.verbose else None).run()
        if tuned:
            work = n_train * max(1, len(result.metrics)) * result.model.theta.size
            _FIT_THREADS.record(threads, time.perf_counter() - t0, work)
        self._store(result, first, early, incremental, n_train)
        return self

    def _store(self, result, first: bool, early: bool, incremental: bool, n_train: int) -> None:
        m = result.model
        self.model_ = m
        self._opt_state, self._step, self._rng = result.opt_state, result.state.step, result.state.epoch_rng
        losses = [h["loss"] for h in result.metrics]
        if first or not hasattr(self, "loss_curve_"):
            self.loss_curve_, self.t_ = [], 0
        self.loss_curve_ = list(self.loss_curve_) + losses
        self.n_iter_ = len(losses)
        self.t_ += n_train * len(losses)
        self.loss_ = losses[-1]
        self.n_layers_ = len(m.sizes)
        self.n_outputs_ = m.sizes[-1]
        self.out_activation_ = "softmax" if self._loss == "cross_entropy" else m.activations[-1]
        if early:
            key = "val_accuracy" if self._loss == "cross_entropy" else "val_r2"
            self.validation_scores_ = [h[key] for h in result.metrics]
            self.best_validation_score_ = max(self.validation_scores_)
            self.best_loss_ = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = min(self.loss_curve_)
        if not incremental and not result.stopped_early and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning)

    def _forward(self, X) -> np.ndarray:
        """(n, n_out) float64: probabilities (classifier) or outputs (regressor)."""
        from ..io.datasets import dataset_from_arrays
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.dtype(self.model_.dtype), ensure_all_finite=False)
        X = np.require(X, self.model_.dtype, ["C", "W"])
        with _as_value_error():
            dataset_from_arrays(X, None, f"{type(self).__name__}.predict(X)")
            out = self.model_.engine(self.threads).predict(X, self.model_.mean, self.model_.inv_std,
                                                          self.model_.theta)
        return out.astype(np.float64)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    # ---- sklearn-style weights ---------------------------------------------------------------
    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weights per layer as sklearn stores them, (n_in, n_out) (views of the model's weights)."""
        check_is_fitted(self)
        t = self.model_.layer_tensors()
        return [t[f"layers.{i}.weight"].T for i in range(len(self.model_.sizes) - 1)]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        check_is_fitted(self)
        t = self.model_.layer_tensors()
        return [t[f"layers.{i}.bias"] for i in range(len(self.model_.sizes) - 1)]

    # ---- pickling (compiled engines stay behind) and files -----------------------------------
    def __getstate__(self):
        state = super().__getstate__()
        if state.get("model_") is not None:
            state["model_"] = replace(state["model_"], _engine=None)
        return state

    def __setstate__(self, state):
        m = state.get("model_")
        if m is not None:  # writable, C-ordered copies (a joblib memmap is read-only)
            state["model_"] = replace(m, theta=np.array(m.theta), mean=np.array(m.mean),
                                      inv_std=np.array(m.inv_std), _engine=None)
        if state.get("_opt_state") is not None:
            state["_opt_state"] = np.array(state["_opt_state"])
        super().__setstate__(state)

    def save(self, path) -> None:
        """Write the model as a deltaprop .safetensors file (opens with `deltaprop evaluate`);
        the estimator's parameters and classes ride along in the metadata."""
        from ._files import save
        save(self, path)

    def to_onnx(self, path=None, *, opset=None, output=None, overwrite=True):
        """The fitted model as ONNX (`onnx.ModelProto`), written to `path` when given, through the
        same exporter as `deltaprop export` (no skl2onnx): input "input" (batch, n_features_in_),
        output "probabilities" (classifier; or output="logits") or "outputs" (regressor, (batch,
        n_outputs_)); classes_ and feature names in the metadata. Needs `deltaprop[onnx]`."""
        from ..training.export import export_onnx
        check_is_fitted(self)
        meta = {"estimator": type(self).__name__}
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in"] = [str(v) for v in self.feature_names_in_]
        classes = [_plain(c) for c in self.classes_] if hasattr(self, "classes_") else None
        return export_onnx(self.model_, path, opset=opset, output=output, overwrite=overwrite,
                           classes=classes, metadata=meta)

    @classmethod
    def load(cls, path):
        """A fitted estimator from a .safetensors model or run directory (one saved by `save`, or
        trained by `deltaprop train`)."""
        from ._files import load_as
        return load_as(cls, path)

    def _loaded(self, info: dict) -> None: ...


def _weight_array(sample_weight, n: int):
    """sample_weight as scikit-learn takes it: an array-like (list, Series, ...) or one number for
    every row. Validated by io/weights.py."""
    if isinstance(sample_weight, numbers.Number) and not isinstance(sample_weight, bool):
        return np.full(n, float(sample_weight))
    return np.asarray(sample_weight)


def _plain(v):
    """A NumPy scalar as the Python value it holds (the config takes Python types)."""
    return v.item() if isinstance(v, np.generic) else v
