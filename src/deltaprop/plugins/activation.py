"""`Activation`: one object pairing a scalar jitted function with its derivative."""

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Activation:
    """An activation function for hidden (or mse output) layers.

    forward:       `numba.njit` scalar function f(x).
    derivative:    `numba.njit` scalar function; f'(x) when derivative_of="input", or f' written in
                   terms of the output y = f(x) when derivative_of="output" (sigmoid: y * (1 - y)).
    init:          "he" or "xavier": which initialisation `init = "auto"` picks for layers using it.
    onnx:          optional: how to export it, a function `onnx(g, x) -> y` that builds f as ONNX
                   nodes with the builder `g` (`g.node(op_type, *inputs, **attributes)`,
                   `g.constant(value)`, `g.dtype`, `g.opset`; see plugins/onnxgraph.py) from the
                   input tensor name `x`, and returns the output tensor's name. Without it, a model
                   using this activation cannot be exported to ONNX (a clear error says so).
    """

    name: str
    forward: Any
    derivative: Any
    derivative_of: Literal["input", "output"] = "input"
    init: Literal["he", "xavier"] = "xavier"
    onnx: Any = None
    # Filled in by the plugin manager: the distribution that registered it and its version.
    source: str = field(default="", compare=False)
    version: str = field(default="", compare=False)

    def problems(self) -> list[str]:
        """What is wrong with this activation's definition (empty when it is usable)."""
        out = []
        if not isinstance(self.name, str) or not self.name.isidentifier():
            out.append(f"name {self.name!r} is not an identifier")
        for role in ("forward", "derivative"):
            fn = getattr(self, role)
            if not hasattr(fn, "py_func") or not hasattr(fn, "compile"):
                out.append(f"{role} {getattr(fn, '__name__', fn)!r} is not a numba.njit function")
        if self.derivative_of not in ("input", "output"):
            out.append(f"derivative_of must be 'input' or 'output', not {self.derivative_of!r}")
        if self.onnx is not None and not callable(self.onnx):
            out.append(f"onnx must be a function (g, x) -> output name, not {self.onnx!r}")
        if self.init not in ("he", "xavier"):
            out.append(f"init must be 'he' or 'xavier', not {self.init!r}")
        return out
