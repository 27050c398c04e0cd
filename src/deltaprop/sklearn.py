"""scikit-learn estimators that train with deltaprop: `MLPClassifier` and `MLPRegressor`.

    from deltaprop.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(100,), max_iter=50, random_state=0).fit(X, y)
    clf.predict(X); clf.predict_proba(X); clf.score(X, y)
    clf.save("digits.safetensors")                 # `deltaprop evaluate digits.safetensors ...` opens it
    clf = MLPClassifier.load("runs/fm")             # a CLI-trained model, ready to predict

The parameters mirror `sklearn.neural_network.MLPClassifier/MLPRegressor` where the meaning is the
same; they become a deltaprop `Config`, and `fit` runs `service.trainer.Trainer` without a run
directory, on the arrays, through the same prepare / engine / kernels as `deltaprop train`.

Mappings worth knowing:
- `alpha` (sklearn: L2 penalty `alpha/2 * ||W||^2` per minibatch, divided by the batch size) becomes
  `optimizer.weight_decay = alpha / batch_size`, which gives the same gradient term; deltaprop's
  optimizers decay the biases too, and adamw applies it decoupled (torch's AdamW rule).
- `tol` / `n_iter_no_change` are sklearn's rule (`early_stopping.best = "running"`, patience
  `n_iter_no_change + 1`, min_delta `tol`) on the training loss, or with `early_stopping=True` on
  the validation accuracy (classifier) / R^2 (regressor), restoring the best weights at the end.
- `loss_curve_` is the mean training loss per epoch without the L2 term (sklearn adds it).
- Adam's `epsilon` is added after the bias correction (torch's rule, sklearn adds it before).
- Binary problems use two softmax outputs (sklearn: one logistic unit); `predict_proba` is the same.
- Inputs are not scaled (as in sklearn): put a `StandardScaler` in front.
"""

import json
import os
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .errors import DeltapropError

__all__ = ["MLPClassifier", "MLPRegressor", "expected_failed_checks", "load"]

ALIASES = {"logistic": "sigmoid"}  # sklearn's activation names that deltaprop spells differently


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


class _FitThreads:
    """threads=0: the thread count of each fit, chosen across the fits of this process.

    The trainer's own tuner probes another thread count every few seconds of one run, but the fits
    of a GridSearchCV or cross_val_score last about a second each: each would run with every core
    and never find out that, on a busy machine, threads waiting for each other at every parallel
    region cost more than they give (digits, 2 cores, one busy neighbour: 2 threads ~6x slower
    than 1). This keeps one `ThreadTuner` for all fits, fed with each fit's time per unit of work
    (rows x epochs x weights, so networks of different sizes compare). Results do not depend on
    the thread count (the kernels' tiles are fixed)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tuner = None

    def choose(self) -> int:
        with self.lock:
            if self.tuner is None:
                from ._system import cores
                from .training.threads import ThreadTuner
                self.tuner = ThreadTuner(cores())
            return self.tuner.choose()

    def record(self, threads: int, seconds: float, work: int) -> None:
        with self.lock:
            self.tuner.record(threads, seconds, work)


_FIT_THREADS = _FitThreads()


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
                 threads=0):
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
        def need(ok, text):
            if not ok:
                raise ValueError(f"{type(self).__name__}: {text}")
        num = (int, float, np.integer, np.floating)
        need(self.solver in ("sgd", "adam", "adamw"),
             f"solver must be 'sgd', 'adam' or 'adamw', got {self.solver!r} (deltaprop has no lbfgs)")
        need(isinstance(self.alpha, num) and self.alpha >= 0, f"alpha must be >= 0, got {self.alpha!r}")
        need(self.batch_size == "auto" or (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1),
             f"batch_size must be 'auto' or an integer >= 1, got {self.batch_size!r}")
        need(isinstance(self.learning_rate_init, num) and self.learning_rate_init > 0,
             f"learning_rate_init must be > 0, got {self.learning_rate_init!r}")
        need(isinstance(self.max_iter, (int, np.integer)) and self.max_iter >= 1,
             f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        need(isinstance(self.tol, num) and self.tol >= 0, f"tol must be >= 0, got {self.tol!r}")
        need(isinstance(self.n_iter_no_change, (int, np.integer)) and self.n_iter_no_change >= 1,
             f"n_iter_no_change must be an integer >= 1, got {self.n_iter_no_change!r}")
        need(isinstance(self.momentum, num) and 0 <= self.momentum <= 1,
             f"momentum must be in [0, 1], got {self.momentum!r}")
        need(isinstance(self.validation_fraction, num) and 0 < self.validation_fraction < 1,
             f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            need(isinstance(v, num) and 0 <= v < 1, f"{name} must be in [0, 1), got {v!r}")
        need(isinstance(self.epsilon, num) and self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon!r}")
        need(self.dtype in ("float32", "float64", np.float32, np.float64),
             f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        need(isinstance(self.threads, (int, np.integer)) and self.threads >= 0,
             f"threads must be an integer >= 0 (0: all cores), got {self.threads!r}")

    def _np_dtype(self):
        return np.dtype(self.dtype)

    def _config(self, n_train: int, epochs: int, seed: int, early_stopping: bool, threads: int):
        from .training.config import config_from_dict
        hidden = self._hidden()
        batch = 200 if self.batch_size == "auto" else int(self.batch_size)
        if self.batch_size != "auto" and batch > n_train:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        batch = min(batch, n_train)
        monitor = ("val_accuracy" if self._loss == "cross_entropy" else "val_r2") if early_stopping else "train_loss"
        raw = {
            "model": {"hidden": hidden, "activation": self._activations(len(hidden))},
            "data": {"train": "", "test": "", "scale": "none",
                     "validation_fraction": float(self.validation_fraction) if early_stopping else 0.0},
            "training": {"epochs": int(epochs), "batch_size": batch, "loss": self._loss,
                         "shuffle": bool(self.shuffle), "seed": int(seed), "dtype": self._np_dtype().name,
                         "threads": threads},
            "optimizer": {"name": self.solver, "lr": float(self.learning_rate_init),
                          "weight_decay": float(self.alpha) / batch,
                          "betas": [float(self.beta_1), float(self.beta_2)], "eps": float(self.epsilon)},
            "early_stopping": {"patience": int(self.n_iter_no_change) + 1 if epochs > 1 else 0,
                               "monitor": monitor, "min_delta": float(self.tol),
                               "restore_best": bool(early_stopping), "best": "running"},
            "checkpoint": {"every_epochs": 0, "every_steps": 0},
        }
        if self.solver == "sgd":
            raw["optimizer"] |= {"momentum": float(self.momentum),
                                 "nesterov": bool(self.nesterovs_momentum) and self.momentum > 0}
        return config_from_dict(raw, type(self).__name__)

    def _new_seed(self) -> int:
        if isinstance(self.random_state, (int, np.integer)) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # ---- fitting -----------------------------------------------------------------------------
    def _fit(self, X, y, incremental: bool, classes=None):
        from .training.trainer import Start, Trainer
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
        # threads=0 (and no DELTAPROP_THREADS, which the trainer obeys first): chosen fit by fit
        tuned = int(self.threads) == 0 and not os.environ.get("DELTAPROP_THREADS")
        threads = _FIT_THREADS.choose() if tuned else int(self.threads)
        with _as_value_error():
            cfg = self._config(n_train, epochs, self._seed, early, threads)
            t0 = time.perf_counter()
            result = Trainer(cfg, None, arrays=(X, y), n_outputs=k, start=start,
                             source=f"{type(self).__name__}.{'partial_fit' if incremental else 'fit'}(X, y)",
                             reporter=_Printer() if self.verbose else None).run()
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
        from .io.datasets import dataset_from_arrays
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
        from .io.safetensors import write_safetensors
        check_is_fitted(self)
        info = {"estimator": type(self).__name__, "params": _json_params(self.get_params()),
                "loss_curve": [float(v) for v in self.loss_curve_], "n_iter": int(self.n_iter_)}
        if hasattr(self, "classes_"):
            info["classes"] = self.classes_.tolist()
            info["classes_dtype"] = self.classes_.dtype.str if self.classes_.dtype.kind != "O" else "O"
        if hasattr(self, "feature_names_in_"):
            info["feature_names_in"] = [str(v) for v in self.feature_names_in_]
        write_safetensors(Path(path), self.model_.layer_tensors(), self.model_.metadata() | {"sklearn": info})

    @classmethod
    def load(cls, path):
        """A fitted estimator from a .safetensors model or run directory (one saved by `save`, or
        trained by `deltaprop train`)."""
        from .io.safetensors import read_safetensors
        from .training.model import Model, resolve_model_path
        with _as_value_error():
            p = resolve_model_path(Path(path))
            tensors, meta = read_safetensors(p)
            model = Model.from_parts(tensors, meta, str(p))
        want = "cross_entropy" if cls._loss == "cross_entropy" else "mse"
        if model.loss != want:
            other = "MLPClassifier" if model.loss == "cross_entropy" else "MLPRegressor"
            raise ValueError(f"{p}: a {model.loss} model; load it with {other}")
        info = meta.get("sklearn") or {}
        est = cls(**_params_from(model, info, cls))
        est.model_ = model
        est._seed, est._opt_state, est._step, est._rng = 0, None, 0, None
        est.n_features_in_ = model.sizes[0]
        if "feature_names_in" in info:
            est.feature_names_in_ = np.asarray(info["feature_names_in"], dtype=object)
        est.loss_curve_ = list(info.get("loss_curve", []))
        est.n_iter_ = int(info.get("n_iter", len(est.loss_curve_)))
        est.loss_ = est.loss_curve_[-1] if est.loss_curve_ else None
        est.t_ = 0
        est.n_layers_, est.n_outputs_ = len(model.sizes), model.sizes[-1]
        est.out_activation_ = "softmax" if want == "cross_entropy" else model.activations[-1]
        est.best_loss_ = min(est.loss_curve_) if est.loss_curve_ else None
        est.validation_scores_ = est.best_validation_score_ = None
        est._loaded(info)
        return est

    def _loaded(self, info: dict) -> None: ...


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multilayer perceptron classifier (softmax + cross-entropy) trained by deltaprop.

    Parameters as sklearn.neural_network.MLPClassifier (see the module docstring for how `alpha`,
    `tol` and `early_stopping` map), plus `dtype` ("float32"/"float64": the compute precision),
    `threads` (0: all cores) and `activation` = any registered deltaprop activation (plugins too),
    or a list with one per hidden layer.
    """

    _loss = "cross_entropy"
    # sklearn estimator checks this estimator is known to fail: check name -> reason (read through
    # `expected_failed_checks` below; none today)
    EXPECTED_FAILED_CHECKS: dict[str, str] = {}

    def _y_check(self) -> dict:
        return {}

    def _encode_y(self, y, first: bool, incremental: bool, classes):
        check_classification_targets(y)
        if type_of_target(y) not in ("binary", "multiclass"):
            raise ValueError(f"{type(self).__name__} supports binary and multiclass targets, "
                             f"got {type_of_target(y)}")
        seen = np.unique(y)
        if incremental and classes is not None:
            classes = np.unique(classes)
            if hasattr(self, "classes_") and not np.array_equal(classes, self.classes_):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                                 f"was: {self.classes_!r}")
        if first:
            if incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = classes if incremental else seen
        elif self.warm_start and not incremental and (len(seen) != len(self.classes_)
                                                      or not np.array_equal(seen, self.classes_)):
            raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                             f"previous call to fit. Previously got {self.classes_}, `y` has {seen}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        if not np.array_equal(self.classes_[idx], y):
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                             f"'y' has {seen}.")
        return idx.astype(np.int64), len(self.classes_)

    def fit(self, X, y):
        """Train on X (n, d) and class labels y (n,) for up to max_iter epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing weights and optimizer state; `classes` (all labels
        that will ever appear) is required on the first call."""
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X) -> np.ndarray:
        """(n, n_classes) class probabilities, float64, rows summing to 1."""
        p = self._forward(X)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        labels = self.predict_proba(X).argmax(axis=1)
        return self.classes_[labels]

    def _loaded(self, info: dict) -> None:
        k = self.model_.sizes[-1]
        if "classes" in info:
            dt = info.get("classes_dtype", None)
            self.classes_ = np.asarray(info["classes"], dtype=object if dt == "O" else dt)
        else:  # a CLI-trained model: labels 0..k-1
            self.classes_ = np.arange(k)
        if len(self.classes_) != k:
            raise ValueError(f"the model has {k} outputs but {len(self.classes_)} classes are recorded")


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multilayer perceptron regressor (squared error, identity output) trained by deltaprop.

    Parameters as sklearn.neural_network.MLPRegressor (see the module docstring), plus `dtype`,
    `threads`, and any registered activation. y may be (n,) or (n, k) (multi-output); the loss is
    (1/2B) sum over the batch and outputs of the squared error (sklearn also divides by k).
    """

    _loss = "mse"
    EXPECTED_FAILED_CHECKS: dict[str, str] = {}

    def _y_check(self) -> dict:
        return {"multi_output": True, "y_numeric": True}

    def _encode_y(self, y, first: bool, incremental: bool, classes):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        y = np.array(y, dtype=self._np_dtype(), order="C")  # a fresh, writable copy
        return y, 1 if y.ndim == 1 else y.shape[1]

    def fit(self, X, y):
        """Train on X (n, d) and targets y (n,) or (n, k) for up to max_iter epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing weights and optimizer state."""
        return self._fit(X, y, incremental=True)

    def predict(self, X) -> np.ndarray:
        out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags



def expected_failed_checks(estimator) -> dict[str, str]:
    """The scikit-learn estimator checks `estimator` is known to fail: check name -> reason.

    scikit-learn >= 1.6 dropped the `_xfail_checks` tag (`_more_tags`/`__sklearn_tags__` have no
    field for it); its checks read expected failures from this argument instead:

        parametrize_with_checks([MLPClassifier()], expected_failed_checks=expected_failed_checks)
        check_estimator(est, expected_failed_checks=expected_failed_checks(est))
    """
    return dict(getattr(estimator, "EXPECTED_FAILED_CHECKS", {}))


def _json_params(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        try:
            json.dumps(v)
        except TypeError:
            continue  # e.g. a RandomState instance
        out[k] = v
    return out


def _params_from(model, info: dict, cls) -> dict:
    """Constructor parameters: those saved by `save`, else read off a CLI model's config."""
    valid = cls().get_params()
    if "params" in info:
        p = {k: v for k, v in info["params"].items() if k in valid}
        if isinstance(p.get("hidden_layer_sizes"), list):
            p["hidden_layer_sizes"] = tuple(p["hidden_layer_sizes"])
        if isinstance(p.get("activation"), list):
            p["activation"] = tuple(p["activation"])
        return p
    hidden_acts = model.activations[:-1]
    c = model.config or {}
    opt, tr = c.get("optimizer", {}), c.get("training", {})
    p = {"hidden_layer_sizes": tuple(model.sizes[1:-1]),
         "activation": hidden_acts[0] if len(set(hidden_acts)) == 1 else tuple(hidden_acts),
         "dtype": model.dtype}
    if opt.get("name") in ("sgd", "adam", "adamw"):
        p["solver"] = opt["name"]
    if "lr" in opt:
        p["learning_rate_init"] = opt["lr"]
    if "epochs" in tr:
        p["max_iter"] = tr["epochs"]
    if "seed" in tr:
        p["random_state"] = tr["seed"]
    if "batch_size" in tr:
        p["batch_size"] = tr["batch_size"]
    return p


def load(path):
    """A fitted MLPClassifier or MLPRegressor from a deltaprop model file or run directory."""
    from .io.safetensors import read_safetensors
    from .training.model import resolve_model_path
    with _as_value_error():
        p = resolve_model_path(Path(path))
        _, meta = read_safetensors(p)
    name = (meta.get("sklearn") or {}).get("estimator")
    if name not in ("MLPClassifier", "MLPRegressor"):
        name = "MLPClassifier" if meta.get("loss") == "cross_entropy" else "MLPRegressor"
    return {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}[name].load(p)
