"""`deltaprop evaluate` and `deltaprop predict`."""

import json
import re
import warnings
from pathlib import Path
from typing import Annotated

import typer

from .common import console, handle_errors


def _load(model_path: Path, data: str, require_labels: bool):
    from ..io.datasets import load_dataset
    from ..training.model import load_model
    from ..training.prepare import resolve_data_spec
    from .common import err_console
    model = load_model(model_path, on_skip=lambda bad, why: err_console.print(
        f"note: skipping unusable checkpoint {bad.name} (using an older one): {why}"))
    data_cfg = model.config.get("data", {})  # the training data's column names (CSV) apply here too
    ds = load_dataset(resolve_data_spec(data, None), require_labels=require_labels,
                      label_column=data_cfg.get("label_column", "label"),
                      weight_column=data_cfg.get("weight_column", ""))
    model.check_features(ds.X, ds.source, ds.columns)
    why = model.input_warning(ds.X, ds.source)
    if why:  # said once, as a line of its own (not again as a Python warning with a file name)
        err_console.print(f"warning: {why}")
        warnings.filterwarnings("ignore", message=re.escape(why))
    return model, ds


@handle_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="A run directory or a .safetensors model.")],
    data: Annotated[str, typer.Option(help="Dataset spec: fashion-mnist:test or a file path.")],
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Evaluate a model on labelled data: accuracy (classification) or mse, and loss (weighted by
    the data's sample weights when it has them)."""
    m, ds = _load(model, data, True)
    result = m.evaluate(ds.X, ds.y, ds.source, weights=ds.w, validated=True)
    if "confusion" in result:  # what the confusion matrix's rows and columns are
        result["classes"] = m.classes if m.classes is not None else list(range(len(result["confusion"])))
    if json_:
        print(json.dumps(result))
        return
    if ds.w is not None:
        console.print(f"{ds.source}: metrics weighted by the sample weights ({ds.w_from}, sum "
                      f"{result['weight_sum']:.6g})")
    if "accuracy" in result:
        console.print(f"{ds.source}: n={result['n']} accuracy={result['accuracy']:.4f} loss={result['loss']:.4f}")
        from rich.table import Table
        table = Table(title="confusion matrix (rows: true class, columns: predicted)")
        names = [str(c) for c in result["classes"]]
        table.add_column("")
        for name in names:
            table.add_column(name, justify="right")
        for name, row in zip(names, result["confusion"]):
            table.add_row(name, *map(str, row))
        console.print(table)
    else:
        console.print(f"{ds.source}: n={result['n']} mse={result['mse']:.6g} loss={result['loss']:.6g}")


@handle_errors
def predict(
    model: Annotated[Path, typer.Argument(help="A run directory or a .safetensors model.")],
    data: Annotated[str, typer.Option(help="Dataset spec (labels not needed).")],
    output: Annotated[Path, typer.Option(help="Where to write the predictions: a .npy or .csv file.")],
    classes: Annotated[bool, typer.Option("--classes", help="Write class labels instead of probabilities.")] = False,
):
    """Write class probabilities (or labels with --classes) or regression outputs to .npy or .csv."""
    import numpy as np

    from .._system import atomic_write
    from ..errors import DeltapropError
    suffix = output.suffix.lower()
    if suffix not in (".npy", ".csv"):
        raise DeltapropError(f"--output {output}: use a .npy or a .csv file name (what to write is told by it)")
    m, ds = _load(model, data, False)
    if classes and m.loss != "cross_entropy":
        raise DeltapropError(f"--classes: {model} is a regression model (loss {m.loss}): it has outputs, not "
                             "classes; leave --classes out")
    out = m.predict(ds.X, ds.source, validated=True) if classes else m.predict_proba(ds.X, ds.source, validated=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":  # one row per input row; labels as integers, outputs with full float32 precision
        atomic_write(output, lambda f: np.savetxt(f, out.reshape(len(out), -1), delimiter=",",
                                                  fmt="%s" if classes else "%.9g"))
    else:
        atomic_write(output, lambda f: np.save(f, out))
    console.print(f"wrote {output}: {out.shape} {'labels' if classes else 'outputs'}")
