"""What a model is trained to output: class labels (cross-entropy) or real-valued targets (mse),
validated with errors that name the data source and the row.

    labels, classes = encode_classes(ds.y, ds.source)  # classes: the sorted distinct labels
    labels = labels_in(test.y, classes, test.source)    # another split, through the same classes
    targets = as_targets(ds.y, k, ds.source)           # (n, k) float
"""

import numpy as np

from ..errors import DataError

MAX_CLASSES = 100_000  # one output unit per class: more distinct labels are ids, not classes


def _labels_1d(y, source: str) -> np.ndarray:
    if y is None:
        raise DataError(f"{source}: classification needs labels, but the data has none.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: classification needs 1-D integer or string labels, got shape {y.shape} "
                        "(for one-hot or real-valued targets use loss = \"mse\").")
    if y.size == 0:
        raise DataError(f"{source}: there are no labels (0 rows).")
    if y.dtype.kind == "S":
        y = np.char.decode(y, "utf-8", "replace")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{source}: label at row {i} is {y[i].item()!r}, not an integer class label.")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "biuU":
        raise DataError(f"{source}: labels have dtype {y.dtype}, expected integers or strings.")
    return y


def encode_classes(y, source: str) -> tuple[np.ndarray, list]:
    """(labels as indices 0..k-1, classes): the classes are the sorted distinct labels, integers or
    strings, as scikit-learn takes them (labels 1..3 make 3 outputs, not 4)."""
    y = _labels_1d(y, source)
    classes, labels = np.unique(y, return_inverse=True)
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{source}: the labels take {len(classes):,} distinct values; the output layer has one "
                        f"unit per class, so deltaprop takes at most {MAX_CLASSES:,} (are these ids, not classes?)")
    return labels.astype(np.int64).reshape(-1), classes.tolist()


def labels_in(y, classes: list, source: str) -> np.ndarray:
    """Labels as indices into a model's `classes`; a label the model does not know is an error."""
    y = _labels_1d(y, source)
    known = np.asarray(classes)
    if (known.dtype.kind == "U") != (y.dtype.kind == "U"):
        raise DataError(f"{source}: the labels are {'strings' if y.dtype.kind == 'U' else 'numbers'} but the "
                        f"model's classes are {', '.join(map(str, classes[:5]))}{'...' if len(classes) > 5 else ''}")
    order = np.argsort(known, kind="stable")
    pos = np.clip(np.searchsorted(known[order], y), 0, len(known) - 1)
    found = known[order][pos] == y
    if not found.all():
        i = int(np.argmin(found))
        raise DataError(f"{source}: label at row {i} is {y[i].item()!r}, which is not one of the model's classes "
                        f"({', '.join(map(str, classes[:10]))}{'...' if len(classes) > 10 else ''}).")
    return order[pos].astype(np.int64)


def validate_labels_for_classification(y: np.ndarray | None, n_classes: int | None, source: str) -> int:
    """Check `y` holds integer class labels in 0..n_classes-1; return the number of classes.

    Float arrays of integral values are accepted (see `as_labels` for the int64 copy). With
    `n_classes=None` the count is `max(y) + 1`.
    """
    y = _labels_1d(y, source)
    if y.dtype.kind == "U":
        raise DataError(f"{source}: labels are strings here; expected class numbers 0..k-1.")
    if n_classes is None and y.max() >= MAX_CLASSES:
        i = int(np.argmax(y >= MAX_CLASSES))
        raise DataError(f"{source}: label at row {i} is {y[i].item()!r}: labels are class numbers 0..k-1 and the "
                        f"output layer has one unit per class, so deltaprop takes labels below {MAX_CLASSES:,} "
                        "(renumber the classes from 0).")
    bad = y < 0 if n_classes is None else (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        allowed = "non-negative" if n_classes is None else f"in 0..{n_classes - 1} ({n_classes} classes)"
        raise DataError(f"{source}: label at row {i} is {y[i].item()!r}, labels must be {allowed}.")
    return int(n_classes) if n_classes is not None else int(y.max()) + 1


def class_labels(y: np.ndarray | None, n_classes: int | None, source: str) -> tuple[np.ndarray, int]:
    """(validated class labels as a (n,) int64 array, the number of classes); floats with
    integral values are converted."""
    k = validate_labels_for_classification(y, n_classes, source)
    return np.asarray(y).reshape(-1).astype(np.int64, copy=False), k


def as_labels(y: np.ndarray | None, n_classes: int | None, source: str) -> np.ndarray:
    """Validated class labels as a (n,) int64 array (floats with integral values converted)."""
    return class_labels(y, n_classes, source)[0]


def as_targets(y: np.ndarray | None, n_outputs: int, source: str, dtype=np.float64) -> np.ndarray:
    """Targets for mse as a float (n, n_outputs) array.

    1-D float y becomes (n, 1); 1-D integer labels with `n_outputs > 1` are one-hot encoded.
    """
    if y is None:
        raise DataError(f"{source}: loss mse needs targets, but the data has none.")
    y = np.asarray(y)
    if y.ndim == 1 and y.dtype.kind in "biu" and n_outputs > 1:
        labels = as_labels(y, n_outputs, source)
        out = np.zeros((labels.shape[0], n_outputs), dtype=dtype)
        out[np.arange(labels.shape[0]), labels] = 1.0
        return out
    y2 = y.reshape(-1, 1) if y.ndim == 1 else y
    if y2.ndim != 2 or y2.shape[1] != n_outputs:
        raise DataError(f"{source}: targets have shape {y.shape} but the model has {n_outputs} "
                        f"output(s); expected shape ({y.shape[0] if y.ndim else '?'}, {n_outputs}).")
    return np.ascontiguousarray(y2, dtype=dtype)
