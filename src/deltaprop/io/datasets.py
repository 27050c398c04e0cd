"""Dataset loading and validation: one `load_dataset(spec)` for every input format.

A spec is `fashion-mnist:train` / `fashion-mnist:test` or a path to `.npz` (arrays `X`, `y`, and
optionally `w`, sample weights),
`.npy` (features; labels in a sibling `foo_y.npy` / `foo.y.npy`; memory-mapped so data larger
than RAM streams), `.csv` (header row, label column by name) or IDX (`*-images-idx3-ubyte[.gz]`
with sibling `*-labels-idx1-ubyte[.gz]`). Sample weights (io/weights.py) come from a `.npz`'s
array `w` or a `.csv`'s `weight_column`. X keeps its stored dtype (uint8 stays uint8; scaling
happens in the trainer) and must be treated as read-only. Every problem raises `DataError` with
one sentence naming the file and the row/column/line.

    ds = load_dataset("fashion-mnist:train")          # ds.X (60000, 784) uint8, ds.y (60000,) int64
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .csvfile import load_csv
from .idx import find_idx, read_idx
from .weights import check_weights

FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {"train": "train", "test": "t10k"}
_CHUNK_BYTES = 1 << 24  # finite checks read at most ~16 MB of a (memmapped) array at once


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features `X` (n, d), labels/targets `y` ((n,) int64 labels, (n,)/(n, k) float) or None, and
sample weights `w` ((n,) float64, validated) or None; `w_from` says where they came from;
`columns`: the features' names (a CSV's header), else None."""

    X: np.ndarray
    y: np.ndarray | None
    source: str
    w: np.ndarray | None = None
    w_from: str = ""
    columns: tuple[str, ...] | None = None


def load_dataset(spec: str, *, base_dir: Path | None = None, label_column: str = "label",
                 require_labels: bool = True, weight_column: str | int = "",
                 require_weights: bool = False) -> Dataset:
    """Load and validate the dataset named by `spec` (see the module docstring for formats).

    Relative paths resolve against `base_dir` (e.g. the config file's directory), else the cwd.
    With `require_labels=False` a file without labels gives `y=None` instead of an error.
    `weight_column`: the sample weights' `.csv` column (name or index) or `.npz` array; "" means
    a `.npz`'s array `w` if it has one, and none for a `.csv`. A named column or array the file
    lacks is an error only with `require_weights` (training data); other formats have no weights.
    """
    ds = _load(spec, base_dir, label_column, require_labels, weight_column, require_weights)
    if require_weights and weight_column != "" and ds.w is None:
        raise DataError(f"{ds.source}: data.weight_column = {weight_column!r} names sample weights, but "
                        "only .csv (a column) and .npz (an array) data carry them.")
    return ds


def _load(spec, base_dir, label_column, require_labels, weight_column, require_weights) -> Dataset:
    if spec.partition(":")[0] == "fashion-mnist":
        split = spec.partition(":")[2]
        if split not in _FASHION_FILES:
            raise DataError(f"Unknown dataset {spec!r}: use fashion-mnist:train or fashion-mnist:test.")
        images, labels = _fashion_mnist_files(_FASHION_FILES[split])
        X, y = _load_idx_pair(images, labels, require_labels)
        return _finish(X, y, spec, str(images), str(labels))
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (Path(base_dir) if base_dir is not None else Path.cwd()) / path
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"Data file {path} {what} (known datasets: fashion-mnist:train, fashion-mnist:test).")
    name = path.name.lower()
    if name.endswith(".npz"):
        if not isinstance(weight_column, str) and require_weights:
            raise DataError(f"{path}: data.weight_column = {weight_column!r} is a column index, which names a "
                            ".csv column; in a .npz name the array (default: w).")
        w_name = weight_column if isinstance(weight_column, str) and weight_column else "w"
        X, y, w = _load_npz(path, require_labels, w_name, require_weights and weight_column != "")
        ds = _finish(X, y, str(path), str(path), str(path))
        if w is None:
            return ds
        return Dataset(ds.X, ds.y, ds.source, check_weights(w, len(ds.X), str(path), f"array {w_name!r}"),
                       f"array {w_name!r}")
    elif name.endswith(".npy"):
        X, y, ysrc = _load_npy(path, require_labels)
    elif name.endswith(".csv"):
        X, y, w, columns = load_csv(path, label_column, require_labels, _check_finite, weight_column,
                                    require_weights)
        ds = _finish(X, y, str(path), str(path), str(path))
        return Dataset(ds.X, ds.y, ds.source, w, "" if w is None else f"column {weight_column!r}", tuple(columns))
    elif "-idx" in name and "-ubyte" in name:
        labels = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        labels = None if labels == path else find_idx(labels)
        X, y = _load_idx_pair(path, labels, require_labels)
        ysrc = str(labels)
    else:
        raise DataError(f"Data file {path} has an unsupported format: expected .npz, .npy, .csv "
                        "or an IDX file (*-images-idx3-ubyte[.gz]).")
    return _finish(X, y, str(path), str(path), ysrc)


def prefetch_rows(X: np.ndarray, lo: int, hi: int) -> None:
    """Ask the kernel to start reading rows lo..hi of a memory-mapped X now (madvise WILLNEED),
    so a block of a file larger than RAM arrives as one sequential read while the previous block
    trains, instead of one page fault per row in shuffled order. A hint: a no-op for arrays in
    RAM, and any failure is ignored."""
    if not is_memory_mapped(X) or hi <= lo or not X.flags.c_contiguous:
        return
    base, row = X.ctypes.data, X.strides[0]
    start = base + lo * row
    start -= start % mmap.PAGESIZE
    end = base + hi * row
    try:
        madvise = _libc().madvise
        for a in range(start, end, _ADVISE_BYTES):  # Linux reads at most the device's readahead
            madvise(ctypes.c_void_p(a), ctypes.c_size_t(min(_ADVISE_BYTES, end - a)), _MADV_WILLNEED)
    except (OSError, AttributeError):  # size per call (~128 KB-1 MB) and ignores the rest
        pass


def is_memory_mapped(X: np.ndarray) -> bool:
    """Whether X's memory is a file mapping (np.asarray of a memmap drops the subclass, so
    follow the chain of bases)."""
    a = X
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


_MADV_WILLNEED = 3  # the same value on Linux and the BSDs/macOS
_ADVISE_BYTES = 128 << 10  # a multiple of every page size


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


_LIBC = None


def dataset_from_arrays(X, y=None, source: str = "arrays", w=None, w_name: str = "sample_weight") -> Dataset:
    """Validate in-memory arrays exactly as a loaded file's (dtype, 2-D shape, emptiness, NaN/Inf,
    X/y row counts, sample weights `w` called `w_name`); errors name `source` (e.g. "fit(X, y)")
    instead of a file."""
    ds = _finish(np.asarray(X), None if y is None else np.asarray(y), source, source, source)
    if w is None:
        return ds
    return Dataset(ds.X, ds.y, ds.source, check_weights(w, len(ds.X), source, w_name), w_name)


# -- validation shared by all formats -------------------------------------------------------------

def _finish(X: np.ndarray, y: np.ndarray | None, source: str, xsrc: str, ysrc: str) -> Dataset:
    """Validate shapes, dtypes and finiteness; normalise label dtypes; build the Dataset."""
    if X.dtype.kind not in "biuf":
        raise DataError(f"{xsrc}: X has dtype {X.dtype}, expected a numeric array.")
    if X.ndim != 2:
        raise DataError(f"{xsrc}: X must be 2-D (rows, features), got shape {X.shape}.")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{xsrc}: the data is empty (X has shape {X.shape}).")
    X = _kernel_dtype(X)
    _check_finite(X, xsrc, "X")
    if y is not None and y.dtype.kind in "US":  # class names (a CSV label column of strings)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise DataError(f"{ysrc}: string labels must be one per row: got shape {y.shape} for {X.shape[0]} rows.")
        return Dataset(X=X, y=y, source=source)
    if y is not None:
        if y.dtype.kind not in "biuf":
            raise DataError(f"{ysrc}: y has dtype {y.dtype}, expected a numeric array.")
        if y.ndim not in (1, 2):
            raise DataError(f"{ysrc}: y must be 1-D (n,) or 2-D (n, k), got shape {y.shape}.")
        if y.shape[0] != X.shape[0]:
            raise DataError(f"{ysrc}: X has {X.shape[0]} rows but y has {y.shape[0]}; they must match.")
        if y.dtype.kind == "f":
            _check_finite(y, ysrc, "y")
        elif y.ndim == 1:
            y = np.asarray(y, dtype=np.int64)  # class labels
        else:
            y = np.asarray(y, dtype=np.float64)  # integer-coded targets (e.g. one-hot)
    return Dataset(X=X, y=y, source=source)


def _kernel_dtype(X: np.ndarray) -> np.ndarray:
    """X in a dtype the compiled code reads, converted as numpy would: big-endian to native order,
    float16 to float32, bool to uint8. (A converted memmap is read into memory.)"""
    if X.dtype.kind == "b":
        return X.astype(np.uint8)
    if X.dtype == np.float16:
        return X.astype(np.float32)
    if not X.dtype.isnative:
        return X.astype(X.dtype.newbyteorder("="))
    return X


def _check_finite(a: np.ndarray, src: str, what: str, where: Callable[[int, int], str] | None = None) -> None:
    """Raise on NaN/Inf, scanning row chunks so a memmap is never read in full at once.

    `where(row, col)` describes a location (csv: its line number); default "row r, column c".
    """
    if a.dtype.kind != "f":
        return
    a2 = a.reshape(a.shape[0], -1)
    step = max(1, _CHUNK_BYTES // max(1, a2.shape[1] * a2.itemsize))
    count, first = 0, None
    for start in range(0, a2.shape[0], step):
        bad = ~np.isfinite(a2[start:start + step])
        if bad.any():
            count += int(bad.sum())
            if first is None:
                r, c = np.argwhere(bad)[0]
                first = (start + int(r), int(c))
    if first is None:
        return
    r, c = first
    at = f"row {r}, column {c} (0-based)" if where is None else where(r, c)
    raise DataError(f"{src}: {what} contains {count} non-finite value(s) (NaN or Inf); the first is at {at}.")


# -- formats --------------------------------------------------------------------------------------

def _load_npz(path: Path, require_labels: bool, w_name: str,
              require_weights: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            missing = [k for k in ("X", "y") if k not in keys and (k == "X" or require_labels)]
            missing += [w_name] if require_weights and w_name not in keys else []
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}; the file has "
                                f"{', '.join(keys) or 'no arrays'} (expected X and y"
                                f"{f', and {w_name} (data.weight_column)' if require_weights else ''}).")
            arrays = {k: z[k] for k in ("X", "y", w_name) if k in keys}
    except DataError:
        raise
    except Exception as e:  # BadZipFile, ValueError (pickled objects), OSError, EOFError
        raise DataError(f"{path}: cannot read as .npz ({e}).") from e
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray):  # numpy hands back a member that is not .npy as bytes
            raise DataError(f"{path}: {k} is not an array (its member {k}.npy is not a .npy file).")
    return arrays["X"], arrays.get("y"), arrays.get(w_name)


def _read_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path}: cannot read as .npy ({e}).") from e


def _load_npy(path: Path, require_labels: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    name = path.name[:-4]
    stem = name[:-2] if name[-2:] in ("_X", ".X", "_x", ".x") else name
    candidates = [path.with_name(f"{stem}{sep}y.npy") for sep in ("_", ".")]
    ypath = next((p for p in candidates if p.is_file() and p != path), None)
    if ypath is None and require_labels:
        raise DataError(f"{path}: no labels file found; looked for "
                        f"{' and '.join(p.name for p in candidates)} in {path.parent}.")
    X = _read_npy(path, mmap=True)  # np.memmap: streamed, never loaded whole
    y = None if ypath is None else _read_npy(ypath, mmap=False)
    return X, y, str(ypath)


# -- IDX (MNIST-style) ------------------------------------------------------------------------------

def _fashion_mnist_files(prefix: str) -> tuple[Path, Path]:
    root = Path(os.environ.get("DELTAPROP_FASHION_MNIST") or FASHION_MNIST_DEFAULT)
    files = [find_idx(root / f"{prefix}-{kind}-ubyte") for kind in ("images-idx3", "labels-idx1")]
    if None in files:
        raise DataError(
            f"Fashion-MNIST not found in {root}: need train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
            "(gzipped or not). Install them with `apt-get install dataset-fashion-mnist`, or download "
            "them from https://github.com/zalandoresearch/fashion-mnist and set "
            "DELTAPROP_FASHION_MNIST to their directory.")
    return files[0], files[1]


def _load_idx_pair(images: Path, labels: Path | None,
                   require_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if labels is None and require_labels:
        raise DataError(f"{images}: no labels file found; expected a sibling "
                        "*-labels-idx1-ubyte[.gz] next to *-images-idx3-ubyte[.gz].")
    X = read_idx(images, cache=True)
    X = X.reshape(X.shape[0], -1) if X.ndim > 1 else X  # (n, rows, cols) -> (n, rows*cols)
    y = read_idx(labels, cache=False) if labels is not None else None
    if y is not None and y.ndim != 1:
        raise DataError(f"{labels}: an IDX labels file must be 1-D, got shape {y.shape}.")
    return X, y
