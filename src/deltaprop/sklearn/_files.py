"""Estimators to and from deltaprop model files (the same files `deltaprop train` writes)."""

import json
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .._values import is_number
from ..io.safetensors import read_safetensors, write_safetensors
from ..training.config import INIT_RULES
from ..training.model import Model, resolve_model_path
from ._base import _as_value_error


def save(est, path) -> None:
    """`est`'s model as a deltaprop .safetensors file, with its parameters, classes and loss curve."""
    check_is_fitted(est)
    info = {"estimator": type(est).__name__, "params": _json_params(est.get_params()),
            "loss_curve": [float(v) for v in est.loss_curve_], "n_iter": int(est.n_iter_)}
    if hasattr(est, "classes_"):
        info["classes"] = est.classes_.tolist()
        info["classes_dtype"] = est.classes_.dtype.str if est.classes_.dtype.kind != "O" else "O"
    if hasattr(est, "feature_names_in_"):
        info["feature_names_in"] = [str(v) for v in est.feature_names_in_]
    meta = est.model_.metadata() | {"sklearn": info}
    if hasattr(est, "classes_"):  # also as the model's own classes, so `deltaprop predict --classes` names them
        classes = est.classes_.tolist()
        if all(isinstance(c, str) for c in classes) or all(is_number(c) for c in classes):
            meta["classes"] = classes
    write_safetensors(Path(path), est.model_.layer_tensors(), meta)


def load_as(cls, path):
    """A fitted `cls` estimator from a .safetensors model or run directory."""
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
    if c.get("model", {}).get("init") in INIT_RULES:
        p["init"] = c["model"]["init"]
    return p
