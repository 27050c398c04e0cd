"""Sample weights: one number >= 0 per row, validated with errors that name the source, the row
(or the CSV line and column) and the value.

    w = check_weights(raw, n_rows=len(X), src="train.npz", name="w")      # (n,) float64 copy

Where weights come from: a `.npz`'s array `w` (or the array `data.weight_column` names), a
`.csv`'s `data.weight_column`, or `sample_weight` of the scikit-learn estimators. How they weight
the loss: kernels/network.py `run_steps`.
"""

from collections.abc import Callable

import numpy as np

from ..errors import DataError


def check_weights(w, n_rows: int, src: str, name: str,
                  where: Callable[[int], str] | None = None) -> np.ndarray:
    """`w` as a fresh C-contiguous (n_rows,) float64 array, or a DataError: not numbers, not one per
    row, NaN/Inf, negative, or all zero. `where(row)` describes a row (CSV: its line and column);
    default "row r (0-based)"."""
    w = np.asarray(w)
    at = where or (lambda r: f"row {r} (0-based)")
    if w.dtype.kind not in "biuf":
        raise DataError(f"{src}: the sample weights ({name}) have dtype {w.dtype}, expected numbers.")
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise DataError(f"{src}: X has {n_rows} rows but the sample weights ({name}) have shape {w.shape}; "
                        "they need one number per row.")
    w = np.array(w, dtype=np.float64, order="C")  # a copy: the caller's array is never changed
    for bad, why in ((~np.isfinite(w), "not a finite number"), (w < 0, "negative")):
        if bad.any():
            r = int(np.argmax(bad))
            raise DataError(f"{src}: {name} at {at(r)} is {w[r].item()!r}, {why} ({int(bad.sum())} row(s) are); "
                            "sample weights must be finite numbers >= 0 (0 leaves a row out).")
    if not w.any():
        raise DataError(f"{src}: the sample weights ({name}) are all zero, so no row would count; give the rows "
                        "to train on a positive weight.")
    return w
