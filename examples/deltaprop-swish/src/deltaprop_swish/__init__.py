"""deltaprop-swish: an example third-party activation plugin, swish(x) = x * sigmoid(x).

Installed with `pip install -e examples/deltaprop-swish`, it is found through the `deltaprop`
entry-point group and registers the activation "swish" through the same hook as the builtins,
with its ONNX form, so `deltaprop export --format onnx` exports models that use it.
"""

import math

import numba

import deltaprop


@numba.njit(cache=True)
def swish(x):  # scalar float -> float
    return x / (1.0 + math.exp(-x))


@numba.njit(cache=True)
def swish_grad(x):  # derivative with respect to the input z
    s = 1.0 / (1.0 + math.exp(-x))
    return s + x * s * (1.0 - s)


def swish_onnx(g, x):  # ONNX nodes for the export: x * Sigmoid(x)
    return g.node("Mul", x, g.node("Sigmoid", x))


@deltaprop.hookimpl
def register_activations(register):
    register(deltaprop.Activation(name="swish", forward=swish, derivative=swish_grad,
                                  derivative_of="input", init="he", onnx=swish_onnx))  # ReLU-like: He init
