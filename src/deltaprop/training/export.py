"""A trained `Model` as an ONNX graph: what `deltaprop export --format onnx` and `Model.to_onnx` write.

    input  "input"  (batch, n_in), float32 (float64 for a float64 model), batch dynamic
    1) preprocessing stored in the model: Sub(mean), Mul(inv_std) (left out where they are identities)
    2) per dense layer: Gemm(W (out, in), b, transB=1), then its activation's ONNX form
       (`Activation.onnx`, see plugins/onnxgraph.py); the last layer of a cross-entropy model is linear
    3) output: "probabilities" (Softmax; cross-entropy, the default), "logits" (cross-entropy, no
       softmax) or "outputs" (mse: the values, after the output activation): exactly what
       `deltaprop predict` writes
Initializers keep the safetensors names (`layers.{i}.weight`, `layers.{i}.bias`); `metadata_props`
hold the deltaprop version, the loss, the activations (with their plugins) and the class names.
The graph passes `onnx.checker.check_model(full_check=True)` before a byte is written, and the
file is written with `atomic_write`: a failed export leaves no file and replaces none.
"""

import json
from pathlib import Path

import numpy as np

from .._system import atomic_write
from ..compute import layout
from ..errors import ExportError
from ..plugins.manager import BUILTIN_SOURCE
from ..plugins.onnxgraph import OnnxGraph, require_onnx

INPUT = "input"
OUTPUTS = {"cross_entropy": ("probabilities", "logits"), "mse": ("outputs",)}  # the first: the default
MIN_OPSET = 13  # Softmax over the last axis alone; every op the builtins use exists by then
DEFAULT_OPSET = 17  # widely run (onnxruntime >= 1.13); gelu is the Gelu op only from --opset 20


def supported_opsets() -> range:
    """The opsets deltaprop exports: MIN_OPSET to the newest the installed `onnx` package knows."""
    onnx = require_onnx()
    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def check_opset(opset: int | None) -> int:
    """`opset` (None: DEFAULT_OPSET), or an ExportError naming the supported range."""
    ok = supported_opsets()
    if opset is None:
        return min(DEFAULT_OPSET, ok[-1])
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset not in ok:
        import onnx
        raise ExportError(f"opset {opset!r} is not supported: deltaprop exports opsets {ok[0]} to {ok[-1]} "
                          f"(the newest the installed onnx {onnx.__version__} knows); default {DEFAULT_OPSET}")
    return int(opset)


def check_output(loss: str, output: str | None) -> str:
    """The output to export (None: what `deltaprop predict` writes for this loss)."""
    choices = OUTPUTS[loss]
    if output is None:
        return choices[0]
    if output not in choices:
        owners = [loss_ for loss_, outs in OUTPUTS.items() if output in outs]
        why = f" (it is for {owners[0]} models)" if owners else ""
        raise ExportError(f"output {output!r} is not available for a {loss} model{why}: choose "
                          + " or ".join(repr(c) for c in choices))
    return output


def build_onnx(model, *, opset: int | None = None, output: str | None = None, registry=None,
               classes: list | None = None, metadata: dict | None = None):
    """The `onnx.ModelProto` of `model`, checked by onnx.checker. `classes` overrides the model's
    class names in the metadata (an estimator's classes_); `metadata` adds entries (non-strings as JSON)."""
    onnx = require_onnx()
    opset, output = check_opset(opset), check_output(model.loss, output)
    acts = model.activation_objects(registry)
    g = OnnxGraph(model.dtype, opset)
    x = g.reserve(INPUT)
    g.reserve(output)
    # 1) the stored preprocessing, x' = (x - mean) * inv_std, as deltaprop computes it
    g.scope = "preprocess"
    if model.mean.any():
        x = g.node("Sub", x, g.constant(model.mean, "preprocess.mean"))
    if not (model.inv_std == 1).all():
        x = g.node("Mul", x, g.constant(model.inv_std, "preprocess.inv_std"))
    # 2) the dense layers
    layers = layout.layer_views(model.theta, model.sizes)
    for i, ((W, b), act) in enumerate(zip(layers, acts)):
        g.scope = f"layers.{i}"
        x = g.node("Gemm", x, g.constant(W, f"layers.{i}.weight"), g.constant(b, f"layers.{i}.bias"), transB=1)
        if i == len(layers) - 1 and model.loss == "cross_entropy":
            break  # linear: softmax is the loss's (and only when probabilities are asked)
        g.scope = f"layers.{i}.{act.name}"
        x = _activation(g, act, x)
    # 3) the output
    g.scope = "output"
    if output == "probabilities":
        x = g.node("Softmax", x, axis=-1)
    g.nodes.append(onnx.helper.make_node("Identity", [x], [output], name=output))
    graph = onnx.helper.make_graph(
        g.nodes, "deltaprop", [onnx.helper.make_tensor_value_info(INPUT, g.elem_type, ["batch", model.sizes[0]])],
        [onnx.helper.make_tensor_value_info(output, g.elem_type, ["batch", model.sizes[-1]])], g.initializers,
        doc_string=f"deltaprop {model.loss} MLP {model.sizes}: input {INPUT!r} -> output {output!r}")
    proto = onnx.helper.make_model_gen_version(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                               producer_name="deltaprop", producer_version=_version())
    extra = {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    onnx.helper.set_model_props(proto, _metadata(model, output, classes) | extra)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError: a plugin's expression is wrong
        plugins = sorted({_who(a) for a in acts if a.source != BUILTIN_SOURCE})
        blame = f"; the graph holds the ONNX form of {', '.join(plugins)}" if plugins else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the exported ONNX graph fails onnx.checker: {first}{blame}") from None
    return proto


def _activation(g: OnnxGraph, act, x: str) -> str:
    """`act`'s ONNX form over tensor x, with what went wrong said by activation and plugin."""
    who = _who(act)
    if act.onnx is None:
        raise ExportError(f"{who} cannot be exported to ONNX: the plugin gives it no ONNX form (an "
                          "`onnx=` function on its Activation; see the README's \"Activation plugins\")")
    try:
        y = act.onnx(g, x)
    except Exception as exc:
        raise ExportError(f"{who}: its ONNX form raised {type(exc).__name__}: {exc}") from None
    if not isinstance(y, str) or not g.produced(y):
        raise ExportError(f"{who}: its ONNX form returned {y!r}, not the name of a tensor it built "
                          "(return what g.node(...) gave)")
    return y


def _who(act) -> str:
    return f"activation {act.name!r} from plugin {act.source}" + (f" {act.version}" if act.version else "")


def _metadata(model, output: str, classes) -> dict[str, str]:
    classes = model.classes if classes is None else classes
    meta = {"deltaprop_version": _version(), "loss": model.loss, "dtype": model.dtype,
            "sizes": json.dumps(model.sizes), "activations": json.dumps(model.activations),
            "plugins": json.dumps(model.plugins), "scale": model.scale, "input": INPUT, "output": output}
    if model.loss == "cross_entropy":
        meta["classes"] = json.dumps(list(range(model.sizes[-1])) if classes is None else list(classes), default=str)
    return meta


def _version() -> str:
    from .. import __version__
    return __version__


def check_destination(path: Path, overwrite: bool, how: str = "overwrite=True") -> Path:
    """Where an export may go: a file in an existing directory, replaced only with `overwrite`
    (`how`: what the caller's user passes for that)."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory: give the file to write, e.g. {path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists: pass {how} to replace it")
    return path


def export_onnx(model, path=None, *, opset: int | None = None, output: str | None = None,
                overwrite: bool = True, registry=None, classes=None, metadata=None):
    """Build and check `model`'s ONNX graph and, given `path`, write it atomically; returns the
    ModelProto. The destination is checked before the graph is built."""
    if path is not None:
        path = check_destination(path, overwrite)
    proto = build_onnx(model, opset=opset, output=output, registry=registry, classes=classes, metadata=metadata)
    if path is not None:
        atomic_write(path, proto.SerializeToString())
    return proto
