"""A trained network: weights, activations, preprocessing, and its safetensors form.

Tensors are `layers.{i}.weight` (out, in) and `layers.{i}.bias`, so a PyTorch user can load them
into an `nn.Sequential` of `nn.Linear`s. Everything else (sizes, activation names with plugin
versions, loss, dtype, preprocessing statistics, config) is JSON in the safetensors metadata.
"""

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._values import is_int, is_number
from ..compute import layout
from ..errors import CheckpointError, DataError
from ..io.rundir import RunDir
from ..io.safetensors import read_safetensors, write_safetensors
from .config import TrainingConfig
from .options import rule_of

LOSSES = rule_of(TrainingConfig, "loss").choices
DTYPES = rule_of(TrainingConfig, "dtype").choices


@dataclass
class Model:
    sizes: list[int]  # [n_in, h1, ..., n_out]
    activations: list[str]  # one per dense layer; the last is the output activation
    loss: str  # cross_entropy | mse
    dtype: str
    theta: np.ndarray  # flat parameters, see kernels/network.py
    mean: np.ndarray  # (n_in,) preprocessing: x' = (x - mean) * inv_std
    inv_std: np.ndarray
    scale: str = "none"
    plugins: dict = field(default_factory=dict)  # activation -> {"source", "version"}
    config: dict = field(default_factory=dict)
    classes: list | None = None  # cross-entropy: the label of each output (None: 0..k-1)
    # trained with sample weights: {"from": where they came from, "rows": training rows, "total": their sum}
    sample_weights: dict | None = None
    columns: list | None = None  # the features' names when trained from a CSV (its header), in order
    _engine: object = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        """The summary (training/summary.py: layers, parameters, FLOPs), not ~15 KB of weights."""
        from .summary import model_summary, summary_text
        return f"Model({self.loss}, {self.dtype})\n" + summary_text(model_summary(self))

    def summary(self) -> dict:
        """Layers, parameter count, FLOPs per sample and memory, as data."""
        from .summary import model_summary
        return model_summary(self)

    # ---- computing -----------------------------------------------------------------------
    def engine(self, threads: int = 0):
        if self._engine is None:
            from ..compute.engine import Engine
            registry = self._registry()
            self._engine = Engine(self.sizes, self.activations, self.loss, self.dtype, registry, threads,
                                  training=False)
        return self._engine

    def _registry(self, registry=None):
        """The plugin registry (default: the process's), checked to hold every activation used."""
        if registry is None:
            from ..plugins.manager import get_registry
            registry = get_registry()
        for name, info in self.plugins.items():
            if name not in registry.activations:
                raise CheckpointError(
                    f"this model uses activation {name!r} from plugin {info.get('source')} "
                    f"{info.get('version')}, which is not installed (or failed to load: see "
                    "`deltaprop plugins list`)")
        return registry

    def activation_objects(self, registry=None) -> list:
        """The `Activation` of each dense layer, from `registry` (default: the process's)."""
        registry = self._registry(registry)
        return [registry.get(name) for name in self.activations]

    def to_onnx(self, path=None, *, opset: int | None = None, output: str | None = None,
                overwrite: bool = True):
        """This model as ONNX (`onnx.ModelProto`), written to `path` when given (atomically; an
        existing file is replaced unless overwrite=False). Input "input" (batch, n_in) in the
        model's dtype, preprocessing included; output "probabilities" (cross-entropy; or
        output="logits") or "outputs" (mse), as `deltaprop predict` gives. `opset`: default 17.
        Needs the `onnx` package (`pip install 'deltaprop[onnx]'`); see training/export.py."""
        from .export import export_onnx
        return export_onnx(self, path, opset=opset, output=output, overwrite=overwrite)

    @property
    def n_classes(self) -> int | None:
        return self.sizes[-1] if self.loss == "cross_entropy" else None

    def check_features(self, X: np.ndarray, source: str, columns=None) -> None:
        """X's width; and `columns` (a CSV's feature names) against the training file's, when both
        are known: CSV columns are read by position, so another order would silently mean other
        features."""
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise DataError(f"{source}: has {X.shape[1] if X.ndim == 2 else X.shape} features per row, "
                            f"but the model expects {self.sizes[0]}")
        if columns is None or self.columns is None or list(columns) == list(self.columns):
            return
        missing, extra = [c for c in self.columns if c not in columns], [c for c in columns if c not in self.columns]
        what = "; ".join([f"it lacks {missing}"] * bool(missing) + [f"it has {extra} instead"] * bool(extra))
        raise DataError(f"{source}: its feature columns are not the model's ({what or 'another order'}): the model "
                        f"was trained on {', '.join(self.columns)}, in this order")

    def predict_proba(self, X: np.ndarray, source: str = "X", *, validated: bool = False) -> np.ndarray:
        """(n, n_out): class probabilities (cross-entropy) or regression outputs (mse). X is checked
        as a data file's would be (numeric, 2-D, not empty, finite; float16 and big-endian converted)
        unless `validated` says it came from `load_dataset` already; one row may be given 1-D."""
        if not validated:
            from ..io.datasets import dataset_from_arrays
            X = np.asarray(X)
            X = dataset_from_arrays(X.reshape(1, -1) if X.ndim == 1 else X, source=source).X
        self.check_features(X, source)
        why = self.input_warning(X, source)
        if why:
            warnings.warn(why, UserWarning, stacklevel=2)
        out = self.engine().predict(X, self.mean, self.inv_std, self.theta)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():  # finite weights can still overflow: that is no prediction
            raise CheckpointError(f"the model gives NaN or Inf outputs for {int(bad.sum())} of {len(out)} rows of "
                                  f"{source} (the first at row {int(np.argmax(bad))}): its weights overflow "
                                  f"{self.dtype} on this data, so it has no prediction to give")
        return out

    def input_warning(self, X: np.ndarray, source: str) -> str | None:
        """Why X does not look like what the preprocessing expects (None: it does): a model trained on
        raw uint8 pixels (data.scale = unit divides by 255 itself) given values already in [0, 1]."""
        raw_uint8 = self.scale == "unit" and not self.mean.any() and np.allclose(self.inv_std, 1 / 255)
        if raw_uint8 and X.dtype.kind == "f" and len(X):
            top = float(np.max(X[:4096]))
            if top <= 1.0:
                return (f"{source}: values are at most {top:g}, as if already scaled to [0, 1], but this model "
                        "divides by 255 itself (it was trained on raw 0-255 values with data.scale = \"unit\"): "
                        "pass the raw values, or its predictions are those of a nearly black input")
        return None

    def predict(self, X: np.ndarray, source: str = "X", *, validated: bool = False) -> np.ndarray:
        """Class labels (cross-entropy: the model's classes, e.g. strings) or regression outputs (mse)."""
        out = self.predict_proba(X, source, validated=validated)
        if self.loss != "cross_entropy":
            return out
        idx = out.argmax(axis=1)
        return idx if self.classes is None else np.asarray(self.classes)[idx]

    def label_indices(self, y, source: str) -> np.ndarray:
        """Labels as output indices (through the model's classes)."""
        from .targets import as_labels, labels_in
        return labels_in(y, self.classes, source) if self.classes is not None else as_labels(y, self.n_classes, source)

    def evaluate(self, X: np.ndarray, y: np.ndarray, source: str = "data", encoded: bool = False,
                 weights: np.ndarray | None = None, *, validated: bool = False) -> dict:
        """Metrics: n, loss, and accuracy + confusion matrix (classification) or mse and r2. `encoded`:
        y holds output indices already (a run's own splits), not labels. `weights` (validated sample
        weights, one per row): loss, accuracy, mse and r2 are weighted averages over the rows
        (sklearn's `sample_weight` in its metrics), `weight_sum` is added; the confusion matrix
        still counts rows."""
        from .targets import as_targets
        if not (validated or encoded):  # X and y checked together (dtypes, finiteness, row counts)
            from ..io.datasets import dataset_from_arrays
            ds = dataset_from_arrays(np.asarray(X), np.asarray(y), source=source)
            X, y = ds.X, ds.y
        out = self.predict_proba(X, source, validated=True).astype(np.float64)
        n, w = len(out), weights
        extra = {} if w is None else {"weight_sum": float(np.sum(w))}
        if self.loss == "cross_entropy":
            labels = np.asarray(y, np.int64) if encoded else self.label_indices(y, source)
            p = out[np.arange(n), labels]
            pred = out.argmax(axis=1)
            k = self.n_classes
            confusion = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
            return {"n": n, "loss": _mean(-np.log(np.maximum(p, 1e-300)), w),
                    "accuracy": _mean(pred == labels, w), "confusion": confusion.tolist()} | extra
        t = as_targets(y, self.sizes[-1], source)
        err = (out - t) ** 2
        if w is None:
            return {"n": n, "loss": float(0.5 * err.sum() / n), "mse": float(err.mean()), "r2": _r2(err, t)}
        return {"n": n, "loss": 0.5 * _mean(err.sum(axis=1), w), "mse": _mean(err.mean(axis=1), w),
                "r2": _r2(err, t, w)} | extra

    # ---- layers and files ------------------------------------------------------------------
    def layer_tensors(self) -> dict[str, np.ndarray]:
        """`layers.{i}.weight` (out, in) and `layers.{i}.bias`: views of theta."""
        tensors = {}
        for i, (W, b) in enumerate(layout.layer_views(self.theta, self.sizes)):
            tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = W, b
        return tensors

    def metadata(self) -> dict:
        from .. import __version__
        meta = {"kind": "model", "deltaprop_version": __version__, "sizes": list(self.sizes),
                "activations": list(self.activations), "loss": self.loss, "dtype": self.dtype,
                "plugins": self.plugins, "config": self.config, "classes": self.classes,
                "preprocess": {"scale": self.scale, "mean": [float(v) for v in self.mean],
                               "inv_std": [float(v) for v in self.inv_std]}}
        if self.sample_weights is not None:  # left out otherwise: unweighted files are as before
            meta["sample_weights"] = dict(self.sample_weights)
        if self.columns is not None:
            meta["columns"] = list(self.columns)
        return meta

    def save(self, path: Path) -> None:
        write_safetensors(Path(path), self.layer_tensors(), self.metadata())

    @classmethod
    def from_parts(cls, tensors: dict, meta: dict, source: str) -> "Model":
        """Rebuild from a model or checkpoint file's tensors and metadata, validated first.

        The checksum only proves the file is as written, not that a deltaprop wrote it: every
        field the compiled code trusts (sizes, activation count, loss, dtype, preprocessing length,
        finite weights) is checked here, and a problem is a CheckpointError naming the file."""
        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"{source}: not a usable deltaprop model: {what}")

        sizes, acts, loss, dtype = (meta.get(k) for k in ("sizes", "activations", "loss", "dtype"))
        if not (isinstance(sizes, list) and len(sizes) >= 2 and all(is_int(s) and s >= 1 for s in sizes)):
            raise bad(f"metadata 'sizes' must list two or more layer sizes >= 1, got {sizes!r}")
        if not (isinstance(acts, list) and all(isinstance(a, str) for a in acts)):
            raise bad(f"metadata 'activations' must be a list of names, got {acts!r}")
        if len(acts) != len(sizes) - 1:
            raise bad(f"metadata lists {len(acts)} activations for {len(sizes) - 1} dense layers "
                      f"(sizes {sizes})")
        if loss not in LOSSES:
            raise bad(f"unknown loss {loss!r} in the metadata (expected one of {', '.join(LOSSES)})")
        if dtype not in DTYPES:
            raise bad(f"unknown dtype {dtype!r} in the metadata (expected one of {', '.join(DTYPES)})")
        layers = []
        for i in range(len(sizes) - 1):
            W, b = tensors.get(f"layers.{i}.weight"), tensors.get(f"layers.{i}.bias")
            if W is None or b is None:
                raise bad(f"tensor layers.{i}.{'weight' if W is None else 'bias'} is missing")
            if W.shape != (sizes[i + 1], sizes[i]) or b.shape != (sizes[i + 1],):
                raise CheckpointError(f"{source}: layers.{i} has shape {W.shape}/{b.shape}, "
                                      f"metadata says ({sizes[i + 1]}, {sizes[i]})")
            if W.dtype.kind != "f" or b.dtype.kind != "f":
                raise bad(f"layers.{i} has dtype {W.dtype}/{b.dtype}, not floating point")
            layers.append((W, b))
        theta = layout.flatten(layers, dtype)
        if not np.isfinite(theta).all():
            raise bad(f"{int((~np.isfinite(theta)).sum())} weight(s) are NaN or Inf")
        pre = meta.get("preprocess")
        if not (isinstance(pre, dict) and isinstance(pre.get("scale"), str)):
            raise bad(f"metadata 'preprocess' must hold scale, mean and inv_std, got {pre!r}")
        stats = {}
        for key in ("mean", "inv_std"):
            v = pre.get(key)
            if not (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                for x in v)):
                raise bad(f"preprocess.{key} must be a list of numbers")
            if len(v) != sizes[0]:
                raise bad(f"preprocess.{key} has {len(v)} values for {sizes[0]} input features")
            try:
                stats[key] = np.asarray(v, dtype)
            except (OverflowError, ValueError):
                raise bad(f"preprocess.{key} holds a number too large for {dtype}") from None
            if not np.isfinite(stats[key]).all():
                raise bad(f"preprocess.{key} holds NaN or Inf")
        plugins, config = meta.get("plugins", {}), meta.get("config", {})
        if not (isinstance(plugins, dict) and all(isinstance(v, dict) for v in plugins.values())):
            raise bad("metadata 'plugins' must map activation names to {source, version}")
        if not (isinstance(config, dict) and all(isinstance(v, dict) for v in config.values())):
            raise bad("metadata 'config' must be a table of sections")
        classes = meta.get("classes")
        if classes is not None and not (
                isinstance(classes, list) and len(classes) == sizes[-1] and loss == "cross_entropy"
                and (all(isinstance(c, str) for c in classes) or all(is_number(c) for c in classes))
                and len(set(classes)) == len(classes)):
            raise bad(f"metadata 'classes' must list {sizes[-1]} distinct numbers or strings, one per output")
        weights = meta.get("sample_weights")
        if weights is not None and not (
                isinstance(weights, dict) and isinstance(weights.get("from"), str)
                and is_int(weights.get("rows")) and weights["rows"] >= 1 and is_number(weights.get("total"))
                and np.isfinite(weights["total"]) and weights["total"] > 0):
            raise bad(f"metadata 'sample_weights' must be {{from: a string, rows: an integer >= 1, total: a "
                      f"number > 0}}, got {weights!r}")
        columns = meta.get("columns")
        if columns is not None and not (isinstance(columns, list) and len(columns) == sizes[0]
                                        and all(isinstance(c, str) for c in columns)):
            raise bad(f"metadata 'columns' must list {sizes[0]} column names, one per input feature")
        return cls(list(sizes), list(acts), loss, dtype, theta, stats["mean"], stats["inv_std"],
                   pre["scale"], dict(plugins), dict(config), classes,
                   None if weights is None else dict(weights), columns)


def _mean(a: np.ndarray, w: np.ndarray | None) -> float:
    """The mean of a over rows, weighted by w when given."""
    return float(np.mean(a)) if w is None else float(np.sum(w * a) / np.sum(w))


def _r2(err: np.ndarray, t: np.ndarray, w: np.ndarray | None = None) -> float:
    """Coefficient of determination averaged over outputs, as sklearn.metrics.r2_score (with its
    sample_weight: weighted sums and mean; a constant target scores 1 if predicted exactly, else 0)."""
    if w is None:
        ss_res = err.sum(axis=0)
        ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    else:
        w = w[:, None]
        ss_res = (w * err).sum(axis=0)
        ss_tot = (w * (t - (w * t).sum(axis=0) / w.sum()) ** 2).sum(axis=0)
    ok = ss_tot > 0
    r2 = np.where(ok, 1.0 - ss_res / np.where(ok, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def resolve_model_path(path: Path) -> Path:
    """A model file, or a run directory (its model.safetensors, else its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        rd = RunDir(path)
        if rd.model_path.is_file():
            return rd.model_path
        found = rd.checkpoints()
        if found:
            return found[-1]
        if rd.config_path.is_file():
            raise CheckpointError(f"{path} holds a run's config.toml but no model or checkpoint yet: its "
                                  f"training failed or stopped before the first checkpoint (`deltaprop resume "
                                  f"{path}` trains it)")
        raise CheckpointError(f"{path} is a directory without model.safetensors or checkpoints/: "
                              "not a deltaprop run directory")
    if not path.exists():
        raise CheckpointError(f"model {path} does not exist")
    return path


def load_model(path, on_skip=None) -> Model:
    """Load a model from a .safetensors file or a run directory: its model.safetensors, else its
    newest usable checkpoint. `on_skip(checkpoint, why)` hears of every newer checkpoint that had
    to be skipped (default: a warning)."""
    path = Path(path)
    rd = RunDir(path)
    if path.is_dir() and not rd.model_path.is_file() and rd.checkpoint_dir.is_dir():
        found = []
        _, _, _, skipped = rd.latest_checkpoint(check=lambda p, t, m: found.append(Model.from_parts(t, m, str(p))))
        for bad, why in skipped:
            if on_skip is not None:
                on_skip(bad, why)
            else:
                warnings.warn(f"skipping unusable checkpoint {bad}: {why}", stacklevel=2)
        return found[-1]
    path = resolve_model_path(path)
    tensors, meta = read_safetensors(path)
    return Model.from_parts(tensors, meta, str(path))
