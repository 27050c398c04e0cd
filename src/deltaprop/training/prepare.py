"""Everything a run needs before its first step: data split, targets, scaling, initial weights.

`prepare(config, registry)` returns a `Prepared`; it is deterministic in the config (the
validation split and the initial weights come from the seed), so a resume rebuilds it exactly.
`prepare(config, registry, arrays=(X, y))` takes in-memory arrays instead of `data.train` (the
scikit-learn estimators do): they are validated, split, scaled and turned into labels/targets
exactly as a file's rows; `arrays=(X, y, w)` adds sample weights. Weights are data: a file's come
with it (a .npz's array `w`, `data.weight_column`), so a resume rebuilds them too.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._system import memory_bytes
from ..compute import layout
from ..errors import CheckpointError, ConfigError, DataError
from ..io.datasets import dataset_from_arrays, load_dataset
from .config import Config
from .model import Model
from .targets import (
    MAX_CLASSES,
    as_labels,
    as_targets,
    class_labels,
    encode_classes,
    labels_in,
)

_CHUNK = 8192  # rows per chunk when computing statistics (memory-mapped data streams)


@dataclass
class Split:
    X: np.ndarray  # features as stored (may be a memmap; rows picked by index)
    y: np.ndarray  # int64 labels (cross-entropy) or (n, k) float targets (mse)
    source: str
    w: np.ndarray | None = None  # (n,) float64 sample weights, or None


@dataclass
class Prepared:
    X: np.ndarray  # all training rows as stored
    y: np.ndarray
    train_idx: np.ndarray  # rows used for training
    val: Split | None
    test: Split | None
    model: Model  # initial weights and preprocessing
    w: np.ndarray | None = None  # (n,) float64 sample weights of X's rows, or None


def resolve_data_spec(spec: str, config_dir: Path | None) -> str:
    """An absolute path for a file spec (relative: to the cwd, else to the config's directory)."""
    if not spec or spec.startswith("fashion-mnist:"):
        return spec
    p = Path(spec).expanduser()
    if p.is_absolute():
        return str(p)
    if not p.exists() and config_dir is not None and (config_dir / p).exists():
        return str((config_dir / p).resolve())
    return str(p.resolve())


def _outputs(config: Config, y: np.ndarray, source: str,
             n_outputs: int | None = None) -> tuple[np.ndarray, int, list | None]:
    """Kernel-ready labels/targets, the number of outputs and the classes (cross-entropy: the
    sorted distinct labels; None when `n_outputs` is given: labels already 0..n_outputs-1)."""
    if config.training.loss == "cross_entropy":
        if n_outputs is not None:
            return (*class_labels(y, n_outputs, source), None)
        labels, classes = encode_classes(y, source)
        return labels, len(classes), classes
    if n_outputs is not None:
        k = n_outputs
    elif y.ndim == 2:
        k = y.shape[1]
    elif np.issubdtype(y.dtype, np.integer):
        k = int(y.max()) + 1  # class labels regressed as one-hot targets
        if k > MAX_CLASSES:
            raise DataError(f"{source}: integer targets up to {k - 1} would be one-hot encoded into {k:,} outputs; "
                            "give real-valued targets (or use loss = \"cross_entropy\")")
    else:
        k = 1
    return as_targets(y, k, source, dtype=config.training.dtype), k, None


def _check_range(X: np.ndarray, dtype: str, source: str) -> None:
    """Finite values beyond the model dtype's range (1e300 in float64 data for a float32 model)
    would become Inf in the compiled gather and look like a diverged run: say what they are."""
    big = float(np.finfo(dtype).max)
    if X.dtype.kind != "f" or np.finfo(X.dtype).max <= big:
        return
    for i in range(0, len(X), _CHUNK):
        block = np.abs(np.asarray(X[i:i + _CHUNK]))
        if (block > big).any():
            r, col = np.argwhere(block > big)[0]
            raise DataError(f"{source}: X has {X[i + r, col]:.3g} at row {i + r}, column {col} (0-based), beyond "
                            f"the range of {dtype} (±{big:.3g}), the model's dtype; scale the data or set "
                            "training.dtype = \"float64\"")


def _scaling(mode: str, X: np.ndarray, rows: np.ndarray, dtype) -> tuple[str, np.ndarray, np.ndarray]:
    d = X.shape[1]
    if mode == "auto":
        mode = "unit" if X.dtype == np.uint8 else "none"
    if mode == "none":
        return mode, np.zeros(d, dtype), np.ones(d, dtype)
    if mode == "unit" and X.dtype == np.uint8:
        return mode, np.zeros(d, dtype), np.full(d, 1.0 / 255.0, dtype)
    lo, hi = np.full(d, np.inf), np.full(d, -np.inf)
    s, s2 = np.zeros(d), np.zeros(d)
    for i in range(0, len(rows), _CHUNK):
        block = np.asarray(X[rows[i:i + _CHUNK]], dtype=np.float64)
        lo, hi = np.minimum(lo, block.min(0)), np.maximum(hi, block.max(0))
        s += block.sum(0)
        s2 += (block * block).sum(0)
    if mode == "unit":  # min-max to [0, 1]
        span = hi - lo
        return mode, lo.astype(dtype), np.where(span > 0, 1.0 / np.where(span > 0, span, 1), 1.0).astype(dtype)
    n = len(rows)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    return mode, mean.astype(dtype), np.where(std > 1e-12, 1.0 / np.where(std > 1e-12, std, 1), 1.0).astype(dtype)


def _check_memory(sizes: list[int], batch: int, dtype: str) -> None:
    """Refuse a network that cannot fit in this machine's memory before allocating it (hidden =
    [10^12] once tried to allocate 29 TiB): weights, gradient, optimizer state and the best
    weights (5 copies), and three activation buffers of the batch."""
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    need = np.dtype(dtype).itemsize * (5 * n_params + 3 * batch * sum(sizes[1:]) + batch * sizes[0])
    have = memory_bytes()
    if have and need > have:
        raise ConfigError(f"model.hidden = {list(sizes[1:-1])} with {sizes[0]} inputs and {sizes[-1]} outputs is "
                          f"{n_params:,} parameters: about {need / 2**30:,.1f} GiB for the weights, gradients, "
                          f"optimizer state and activations, more than this machine's {have / 2**30:,.1f} GiB")


def init_theta(sizes, inits, seed: int, dtype) -> np.ndarray:
    """He-normal or Xavier-uniform weights per layer (by `inits`), zero biases."""
    rng = np.random.default_rng([seed, 0x1A17])
    layers = []
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        if inits[i] == "he":
            W = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_out, n_in))
        else:
            a = np.sqrt(6.0 / (n_in + n_out))
            W = rng.uniform(-a, a, size=(n_out, n_in))
        layers.append((W, np.zeros(n_out)))
    return layout.flatten(layers, dtype)


def glorot_sklearn_theta(sizes, hidden_acts, seed: int, dtype) -> np.ndarray:
    """scikit-learn's MLP initialisation (`BaseMultilayerPerceptron._init_coef`), draw for draw:
    every layer's weights and biases ~ U(-b, b), b = sqrt(factor / (fan_in + fan_out)), factor 2
    when the layer's activation is sigmoid (sklearn's "logistic") and 6 otherwise (the output layer
    takes the last hidden layer's), drawn from `numpy.random.RandomState(seed)` in sklearn's order
    (layer by layer: the (fan_in, fan_out) weights, then the biases). So an estimator with
    `random_state=seed` starts from the very weights scikit-learn's would."""
    rng = np.random.RandomState(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])
    layers = []
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        act = hidden_acts[min(i, len(hidden_acts) - 1)] if hidden_acts else "relu"
        bound = np.sqrt((2.0 if act == "sigmoid" else 6.0) / (n_in + n_out))
        W = rng.uniform(-bound, bound, (n_in, n_out))
        b = rng.uniform(-bound, bound, n_out)
        layers.append((W.T, b))
    return layout.flatten(layers, dtype)


def _load_split(spec: str, config: Config, n_out: int, n_in: int, classes: list | None) -> Split:
    ds = load_dataset(spec, label_column=config.data.label_column, weight_column=config.data.weight_column)
    if ds.X.shape[1] != n_in:
        raise DataError(f"{ds.source}: has {ds.X.shape[1]} features per row, the training data has {n_in}")
    if config.training.loss == "cross_entropy":
        y = labels_in(ds.y, classes, ds.source) if classes is not None else as_labels(ds.y, n_out, ds.source)
    else:
        y = as_targets(ds.y, n_out, ds.source, dtype=config.training.dtype)
    return Split(np.asarray(ds.X), y, ds.source, ds.w)


def prepare(config: Config, registry, arrays: tuple | None = None, *, n_outputs: int | None = None,
            source: str = "arrays") -> Prepared:
    """`arrays=(X, y)`: train on these instead of `config.data.train` (errors name `source`).
    `n_outputs`: the number of classes/targets when y need not show them all (partial fits)."""
    c = config
    if arrays is None:
        ds = load_dataset(c.data.train, label_column=c.data.label_column, weight_column=c.data.weight_column,
                          require_weights=True)
    else:
        ds = dataset_from_arrays(arrays[0], arrays[1], source, arrays[2] if len(arrays) > 2 else None)
    X = np.asarray(ds.X)  # a memmap stays mapped; np.asarray drops the subclass for Numba
    y, k, classes = _outputs(c, ds.y, ds.source, n_outputs)
    n = len(X)
    train_idx, val = np.arange(n), None
    if c.data.validation_fraction > 0:
        n_val = int(round(c.data.validation_fraction * n))
        if n_val < 1 or n_val >= n:
            raise ConfigError(f"data.validation_fraction = {c.data.validation_fraction} leaves "
                              f"{n - n_val} training and {n_val} validation rows of {n}")
        order = np.random.default_rng([c.training.seed, 0x5A11]).permutation(n)
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        val = Split(X[val_idx], y[val_idx], f"{ds.source} (validation split)",
                    None if ds.w is None else ds.w[val_idx])
    if ds.w is not None and not ds.w[train_idx].any():
        raise DataError(f"{ds.source}: the sample weights ({ds.w_from}) of all {len(train_idx)} training rows "
                        "are 0 (the validation split holds every row with a positive weight)")
    if val is not None and val.w is not None and not val.w.any():
        raise DataError(f"{ds.source}: the sample weights ({ds.w_from}) of all {len(val.y)} validation rows are "
                        "0, so the validation metrics would weigh nothing: give more rows a positive weight or "
                        "change data.validation_fraction")
    test = _load_split(c.data.test, c, k, X.shape[1], classes) if c.data.test else None

    hidden_acts = c.model.hidden_activations()
    out_act = c.model.output_activation if c.training.loss == "mse" else "identity"
    acts = hidden_acts + [out_act]
    for name in acts:
        registry.require_checked(name)
    sizes = [X.shape[1], *c.model.hidden, k]
    _check_memory(sizes, min(c.training.batch_size, len(train_idx)), c.training.dtype)
    _check_range(X, c.training.dtype, c.data.train)
    mode, mean, inv_std = _scaling(c.data.scale, X, train_idx, c.training.dtype)
    plugins = {a: {"source": registry.get(a).source, "version": registry.get(a).version} for a in set(acts)}
    if c.model.init in ("auto", "he", "xavier"):
        inits = [registry.get(a).init if c.model.init == "auto" else c.model.init for a in hidden_acts]
        theta = init_theta(sizes, inits + ["xavier"], c.training.seed, c.training.dtype)
    elif c.model.init == "glorot_sklearn":
        theta = glorot_sklearn_theta(sizes, hidden_acts, c.training.seed, c.training.dtype)
    else:
        theta = _init_from_file(c.model.init, sizes)
    weights = None if ds.w is None else {"from": ds.w_from, "rows": len(train_idx),
                                          "total": float(ds.w[train_idx].sum())}
    model = Model(sizes, acts, c.training.loss, c.training.dtype, theta.astype(c.training.dtype),
                  mean, inv_std, mode, plugins, c.to_dict(), classes, sample_weights=weights,
                  columns=None if ds.columns is None else list(ds.columns))
    return Prepared(X, y, train_idx, val, test, model, ds.w)


def _init_from_file(path: str, sizes: list[int]) -> np.ndarray:
    """Initial weights from a deltaprop model or checkpoint, or from a plain safetensors file of
    weights (`safetensors.torch.save_file(net.state_dict(), ...)` of an `nn.Sequential` of
    `nn.Linear`s: names `0.weight`, `2.weight`, ... or `layers.{i}.weight`), checked against the
    layer sizes this config builds."""
    from ..io.safetensors import is_deltaprop_header, read_plain_safetensors
    from .model import load_model
    try:
        if Path(path).is_file() and not is_deltaprop_header(Path(path)):
            return weights_from_tensors(read_plain_safetensors(Path(path)), sizes, f"model.init = {path!r}")
        init = load_model(Path(path))
    except (CheckpointError, DataError) as exc:
        raise ConfigError(f"model.init = {path!r}: {exc}") from None
    if list(init.sizes) != list(sizes):
        raise ConfigError(f"model.init = {path!r} has layer sizes {init.sizes}, "
                          f"but this config builds {sizes}")
    return init.theta


_NAME = re.compile(r"^(?:layers\.)?(\d+)\.(weight|bias)$")


def weights_from_tensors(tensors: dict, sizes: list[int], where: str) -> np.ndarray:
    """The flat parameters from `layers.{i}.weight/bias` or torch `nn.Sequential` names
    (`{k}.weight/bias`, the Linear modules in index order; activations between them own none)."""
    layers: dict[int, dict] = {}
    for name, a in tensors.items():
        m = _NAME.match(name)
        if m is None:
            raise ConfigError(f"{where}: tensor {name!r} is not a layer weight or bias (expected names "
                              "layers.0.weight, layers.0.bias, ... or torch's 0.weight, 0.bias, 2.weight, ...)")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = a
    found = [layers[k] for k in sorted(layers)]
    if len(found) != len(sizes) - 1:
        raise ConfigError(f"{where}: the file has {len(found)} dense layers, this config builds "
                          f"{len(sizes) - 1} (layer sizes {sizes})")
    out = []
    for i, (layer, n_in, n_out) in enumerate(zip(found, sizes[:-1], sizes[1:])):
        W, b = layer.get("weight"), layer.get("bias")
        if W is None or b is None:
            raise ConfigError(f"{where}: layer {i} has no {'weight' if W is None else 'bias'} tensor")
        if W.shape != (n_out, n_in) or b.shape != (n_out,):
            raise ConfigError(f"{where}: layer {i} has weight {W.shape} and bias {b.shape}, this config "
                              f"needs ({n_out}, {n_in}) and ({n_out},)")
        if W.dtype.kind != "f" or b.dtype.kind != "f" or not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise ConfigError(f"{where}: layer {i} must hold finite floating-point numbers")
        out.append((W, b))
    return layout.flatten(out, np.float64)
