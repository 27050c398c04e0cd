"""A trained network: weights, activations, preprocessing, and its safetensors form.

Tensors are `layers.{i}.weight` (out, in) and `layers.{i}.bias`, so a PyTorch user can load them
into an `nn.Sequential` of `nn.Linear`s. Everything else (sizes, activation names with plugin
versions, loss, dtype, preprocessing statistics, config) is JSON in the safetensors metadata.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DataError
from .checkpoint import read_safetensors, write_safetensors


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
    _engine: object = field(default=None, repr=False, compare=False)

    # ---- computing -----------------------------------------------------------------------
    def engine(self, threads: int = 0):
        if self._engine is None:
            from ..plugins.manager import get_registry
            from .engine import Engine
            registry = get_registry()
            for name, info in self.plugins.items():
                if name not in registry.activations:
                    raise CheckpointError(
                        f"this model uses activation {name!r} from plugin {info.get('source')} "
                        f"{info.get('version')}, which is not installed (or failed to load: see "
                        "`deltaprop plugins list`)")
            self._engine = Engine(self.sizes, self.activations, self.loss, self.dtype, registry, threads)
        return self._engine

    @property
    def n_classes(self) -> int | None:
        return self.sizes[-1] if self.loss == "cross_entropy" else None

    def check_features(self, X: np.ndarray, source: str) -> None:
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise DataError(f"{source}: has {X.shape[1] if X.ndim == 2 else X.shape} features per row, "
                            f"but the model expects {self.sizes[0]}")

    def predict_proba(self, X: np.ndarray, source: str = "X") -> np.ndarray:
        """(n, n_out): class probabilities (cross-entropy) or regression outputs (mse)."""
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        self.check_features(X, source)
        return self.engine().predict(X, self.mean, self.inv_std, self.theta)

    def predict(self, X: np.ndarray, source: str = "X") -> np.ndarray:
        """Class labels (cross-entropy) or regression outputs (mse)."""
        out = self.predict_proba(X, source)
        return out.argmax(axis=1) if self.loss == "cross_entropy" else out

    def evaluate(self, X: np.ndarray, y: np.ndarray, source: str = "data") -> dict:
        """Metrics: n, loss, and accuracy + confusion matrix (classification) or mse."""
        from .data import as_labels, as_targets
        out = self.predict_proba(X, source).astype(np.float64)
        n = len(out)
        if self.loss == "cross_entropy":
            labels = as_labels(y, self.n_classes, source)
            p = out[np.arange(n), labels]
            pred = out.argmax(axis=1)
            k = self.n_classes
            confusion = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
            return {"n": n, "loss": float(-np.log(np.maximum(p, 1e-300)).mean()),
                    "accuracy": float((pred == labels).mean()), "confusion": confusion.tolist()}
        t = as_targets(y, self.sizes[-1], source)
        err = (out - t) ** 2
        return {"n": n, "loss": float(0.5 * err.sum() / n), "mse": float(err.mean()), "r2": _r2(err, t)}

    # ---- layers and files ------------------------------------------------------------------
    def layer_tensors(self) -> dict[str, np.ndarray]:
        tensors, o = {}, 0
        for i in range(len(self.sizes) - 1):
            n_in, n_out = self.sizes[i], self.sizes[i + 1]
            tensors[f"layers.{i}.weight"] = self.theta[o:o + n_out * n_in].reshape(n_out, n_in)
            o += n_out * n_in
            tensors[f"layers.{i}.bias"] = self.theta[o:o + n_out]
            o += n_out
        return tensors

    def metadata(self) -> dict:
        from .. import __version__
        return {"kind": "model", "deltaprop_version": __version__, "sizes": list(self.sizes),
                "activations": list(self.activations), "loss": self.loss, "dtype": self.dtype,
                "plugins": self.plugins, "config": self.config,
                "preprocess": {"scale": self.scale, "mean": [float(v) for v in self.mean],
                               "inv_std": [float(v) for v in self.inv_std]}}

    def save(self, path: Path) -> None:
        write_safetensors(Path(path), self.layer_tensors(), self.metadata())

    @classmethod
    def from_parts(cls, tensors: dict, meta: dict, source: str) -> "Model":
        """Rebuild from a model or checkpoint file's tensors and metadata."""
        try:
            sizes = [int(s) for s in meta["sizes"]]
            dtype = str(meta["dtype"])
            layers = []
            for i in range(len(sizes) - 1):
                W, b = tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]
                if W.shape != (sizes[i + 1], sizes[i]) or b.shape != (sizes[i + 1],):
                    raise CheckpointError(f"{source}: layers.{i} has shape {W.shape}/{b.shape}, "
                                          f"metadata says ({sizes[i + 1]}, {sizes[i]})")
                layers += [W.ravel(), b]
            pre = meta["preprocess"]
            return cls(sizes, list(meta["activations"]), str(meta["loss"]), dtype,
                       np.concatenate(layers).astype(dtype),
                       np.asarray(pre["mean"], dtype), np.asarray(pre["inv_std"], dtype),
                       str(pre["scale"]), dict(meta.get("plugins", {})), dict(meta.get("config", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: not a deltaprop model (missing or invalid {exc})") from None


def _r2(err: np.ndarray, t: np.ndarray) -> float:
    """Coefficient of determination averaged over outputs, as sklearn.metrics.r2_score (a constant
    target scores 1 if predicted exactly, else 0)."""
    ss_res = err.sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    ok = ss_tot > 0
    r2 = np.where(ok, 1.0 - ss_res / np.where(ok, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def resolve_model_path(path: Path) -> Path:
    """A model file, or a run directory (its model.safetensors, else its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        from .checkpoint import list_checkpoints
        found = list_checkpoints(path / "checkpoints")
        if found:
            return found[-1]
        raise CheckpointError(f"{path} is a directory without model.safetensors or checkpoints/: "
                              "not a deltaprop run directory")
    if not path.exists():
        raise CheckpointError(f"model {path} does not exist")
    return path


def load_model(path) -> Model:
    """Load a model from a .safetensors file or a run directory."""
    path = resolve_model_path(Path(path))
    tensors, meta = read_safetensors(path)
    return Model.from_parts(tensors, meta, str(path))
