"""`OnnxGraph`: the small node builder an activation's `onnx` function writes its ONNX form with.

An activation may carry `onnx=fn`, where `fn(g, x) -> y` receives this builder and the name of its
input tensor (the layer's z, shape (batch, n)) and returns the name of the output tensor:

    def swish_onnx(g, x):
        return g.node("Mul", x, g.node("Sigmoid", x))

    g.node(op_type, *inputs, **attributes) -> name   one ONNX node (default domain), its one output
    g.constant(value) -> name                        a constant tensor in the model's dtype
    g.dtype                                          "float32" or "float64" (the model's)
    g.opset                                          the opset being exported (e.g. 17)

Inputs are tensor names (those `node`/`constant` returned, or `x`); attributes are Python values
(float, int, str, lists of them), given to `onnx.helper.make_node`. The exporter (training/export.py)
names nodes after the layer, checks the whole graph with `onnx.checker`, and reports an expression
that fails by activation and plugin. The `onnx` package is imported here only when a graph is built,
never when deltaprop is imported.
"""

import numpy as np

from ..errors import ExportError

INSTALL_HINT = "pip install 'deltaprop[onnx]'"


def require_onnx():
    """The `onnx` module, or an ExportError saying how to install it."""
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as exc:
        raise ExportError(f"exporting to ONNX needs the `onnx` package, which is not installed "
                          f"({exc}): {INSTALL_HINT}") from None
    return onnx


class OnnxGraph:
    """Nodes and constants of one graph being built, in one dtype (see the module docstring)."""

    def __init__(self, dtype: str, opset: int):
        self.dtype = np.dtype(dtype).name
        self.opset = int(opset)
        self.scope = "graph"  # name prefix of the nodes being added (the exporter sets "layers.0", ...)
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()
        self._onnx = require_onnx()

    @property
    def elem_type(self) -> int:
        """The ONNX TensorProto element type of the model's dtype."""
        tp = self._onnx.TensorProto
        return tp.DOUBLE if self.dtype == "float64" else tp.FLOAT

    def _fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def reserve(self, name: str) -> str:
        """Mark a name as taken (the graph's input and output names)."""
        self._names.add(name)
        return name

    def node(self, op_type: str, *inputs: str, **attributes) -> str:
        """Add one `op_type` node over the named input tensors; returns its output's name."""
        if not isinstance(op_type, str) or not op_type:
            raise TypeError(f"op_type must be an ONNX operator name, got {op_type!r}")
        bad = [i for i in inputs if not isinstance(i, str)]
        if bad:
            raise TypeError(f"{op_type} inputs must be tensor names (str), got {bad[0]!r}; "
                            "wrap numbers in g.constant(...)")
        name = self._fresh(f"{self.scope}/{op_type}")
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), [name], name=name, **attributes))
        return name

    def constant(self, value, name: str | None = None) -> str:
        """A constant tensor (a scalar broadcasts) of `value` in the model's dtype; returns its name."""
        array = np.asarray(value, dtype=self.dtype)
        name = self._fresh(name or f"{self.scope}/const")
        self.initializers.append(self._onnx.numpy_helper.from_array(array, name))
        return name

    def produced(self, name: str) -> bool:
        """Whether `name` is a tensor of this graph (a node's output, a constant, or reserved)."""
        return name in self._names
