"""deltaprop-swish: an example third-party activation plugin, swish(x) = x * sigmoid(x).

Installed with `pip install -e examples/deltaprop-swish`, it is found through the `deltaprop`
entry-point group and registers the activation "swish" through the same hook as the builtins.
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


@deltaprop.hookimpl
def register_activations(register):
    register(deltaprop.Activation(name="swish", forward=swish, derivative=swish_grad,
                                  derivative_of="input"))
