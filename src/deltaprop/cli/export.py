"""`deltaprop export`: a trained model as an ONNX file (preprocessing included)."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, handle_errors


class Format(str, Enum):
    onnx = "onnx"


class Output(str, Enum):
    probabilities = "probabilities"
    logits = "logits"
    outputs = "outputs"


@handle_errors
def export(
    model: Annotated[Path, typer.Argument(help="A run directory or a .safetensors model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write, e.g. model.onnx.")],
    format_: Annotated[Format, typer.Option("--format", help="The file format.")] = Format.onnx,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default 17; gelu is the Gelu op from 20).")] = None,
    output: Annotated[Optional[Output], typer.Option(
        help="The graph's output: probabilities (cross-entropy, the default) or logits; outputs (mse). "
             "Default: what `deltaprop predict` writes.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the -o file if it exists.")] = False,
):
    """Export a model to ONNX: input "input" (batch, features), the model's own preprocessing, then
    the layers; output "probabilities", "logits" or "outputs". Checked with onnx.checker."""
    from ..training.export import (
        check_destination,
        check_opset,
        check_output,
        export_onnx,
    )
    from ..training.model import load_model
    from .common import err_console
    check_destination(out, overwrite, "--overwrite")  # the cheap mistakes first, before loading anything
    opset = check_opset(opset)
    m = load_model(model, on_skip=lambda bad, why: err_console.print(
        f"note: skipping unusable checkpoint {bad.name} (using an older one): {why}"))
    name = check_output(m.loss, output.value if output else None)
    export_onnx(m, out, opset=opset, output=name, overwrite=overwrite)
    console.print(f"wrote {out}: {format_.value} opset {opset}, input 'input' {m.dtype} "
                  f"(batch, {m.sizes[0]}) -> output '{name}' (batch, {m.sizes[-1]})")
