"""CSV datasets: a header row naming the columns, the label column by name, an optional column of
sample weights (by name or 0-based index), every other column a number. Errors name the line and
the column.
"""

import contextlib
import csv
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from .weights import check_weights


def load_csv(path: Path, label_column: str, require_labels: bool, check_finite, weight_column: str | int = "",
             require_weights: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """(features, labels or None, sample weights or None, the features' column names) of a CSV
    with a header row;
    `check_finite(a, src, what, where)` is the shared NaN/Inf check. Labels: numbers, or strings
    when the label column holds words. `weight_column` ("" for none): the weights' column, by name
    or index; when the file lacks it that is an error only with `require_weights` (training)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except csv.Error as e:
        raise _csv_error(path, e, 1) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e}).") from e
    names = [h.strip() for h in header or []]
    if not names or all(_is_number(h) for h in names):
        raise DataError(f"{path}: line 1 must be a header row naming the columns "
                        f"(e.g. x0,x1,...,{label_column}).")
    has_label = label_column in names
    if require_labels and not has_label:
        raise DataError(f"{path}: label column {label_column!r} not found; the columns are "
                        f"{', '.join(names)}.")
    label_j = names.index(label_column) if has_label else None
    weight_j = _weight_index(path, names, weight_column, require_weights)
    if weight_j is not None and weight_j == label_j:
        raise DataError(f"{path}: data.weight_column = {weight_column!r} is the label column {label_column!r}.")
    strings = None
    try:
        data = _loadtxt(path, np.float64)
    except ValueError as e:  # includes UnicodeDecodeError
        with contextlib.suppress(UnicodeDecodeError):
            _csv_raise_bad_cell(path, names, skip=label_j)  # a feature that is not a number: named
        if label_j is None:
            raise DataError(f"{path}: cannot parse as CSV ({e}).") from e
        # only the label column holds words: class names
        feats = [i for i in range(len(names)) if i != label_j]
        try:
            data = np.insert(_loadtxt(path, np.float64, usecols=feats), label_j, 0.0, axis=1)
            strings = np.char.strip(_loadtxt(path, str, usecols=[label_j]).reshape(-1))
        except ValueError as e2:
            raise DataError(f"{path}: cannot parse as CSV ({e2}).") from e2
    if data.shape[0] == 0:
        raise DataError(f"{path}: the data is empty (a header but no data rows).")
    if data.shape[1] != len(names):
        raise DataError(f"{path}: rows have {data.shape[1]} fields but the header names {len(names)} columns.")
    check_finite(data, str(path), "the data", lambda r, c: _csv_where(path, names, r, c))
    w = None
    if weight_j is not None:
        w = check_weights(data[:, weight_j], len(data), str(path), f"column {names[weight_j]!r}",
                          lambda r: _csv_line(path, r))
    y = None
    if has_label:
        y = data[:, label_j]
        if strings is not None:
            y = strings
        elif np.array_equal(y, np.round(y)):
            y = y.astype(np.int64)
    drop = [j for j in (label_j, weight_j) if j is not None]
    columns = [n for j, n in enumerate(names) if j not in drop]
    return (np.delete(data, drop, axis=1) if drop else data), y, w, columns


def _weight_index(path: Path, names: list[str], column: str | int, required: bool) -> int | None:
    """The index of the weight column (None: no weights)."""
    if isinstance(column, int) and not isinstance(column, bool):
        if not 0 <= column < len(names):
            raise DataError(f"{path}: data.weight_column = {column} is not a column index: the file has "
                            f"{len(names)} columns (0..{len(names) - 1}).")
        return column
    if column == "":
        return None
    if column in names:
        return names.index(column)
    if required:
        raise DataError(f"{path}: weight column {column!r} (data.weight_column) not found; the columns are "
                        f"{', '.join(names)}.")
    return None


def _loadtxt(path: Path, dtype, usecols=None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input contained no data": reported by the caller
        return np.loadtxt(path, delimiter=",", skiprows=1, dtype=dtype, ndmin=2, comments=None,
                          quotechar='"', encoding="utf-8-sig", usecols=usecols)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _csv_rows(path: Path):
    """Yield (line number, data row index, fields) for non-blank data rows, as numpy counts them."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            next(reader, None)
            row, line = 0, reader.line_num + 1
            for fields in reader:
                if fields:
                    yield line, row, fields
                    row += 1
                line = reader.line_num + 1
        except csv.Error as exc:
            raise _csv_error(path, exc, reader.line_num) from None


def _csv_error(path: Path, exc: csv.Error, line) -> DataError:
    return DataError(f"{path}: line {line} cannot be read as CSV ({exc}); a field that long is not a number "
                     "a model can use.")


def _csv_raise_bad_cell(path: Path, names: list[str], skip: int | None = None) -> None:
    for line, _, fields in _csv_rows(path):
        if len(fields) != len(names):
            raise DataError(f"{path}: line {line} has {len(fields)} fields but the header has {len(names)}.")
        for j, (name, cell) in enumerate(zip(names, fields)):
            if j != skip and not _is_number(cell):
                raise DataError(f"{path}: line {line}, column {name!r}: {cell!r} is not a number.")


def _csv_line(path: Path, row: int) -> str:
    return f"line {next((ln for ln, r, _ in _csv_rows(path) if r == row), row + 2)}"


def _csv_where(path: Path, names: list[str], row: int, col: int) -> str:
    return f"{_csv_line(path, row)}, column {names[col]!r}"
