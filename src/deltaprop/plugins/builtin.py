"""The builtin activations, registered through the same hook a third-party plugin implements."""

import math

import numba

from ..kernels._config import JIT
from .activation import Activation
from .hookspecs import hookimpl

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@numba.njit(**JIT)
def identity(x):
    return x


@numba.njit(**JIT)
def identity_grad(x):
    return 1.0


@numba.njit(**JIT)
def relu(x):
    return x if x > 0.0 else 0.0 * x


@numba.njit(**JIT)
def relu_grad(x):
    return 1.0 if x > 0.0 else 0.0


@numba.njit(**JIT)
def leaky_relu(x):
    return x if x > 0.0 else 0.01 * x


@numba.njit(**JIT)
def leaky_relu_grad(x):
    return 1.0 if x > 0.0 else 0.01


@numba.njit(**JIT)
def sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@numba.njit(**JIT)
def sigmoid_grad(y):
    return y * (1.0 - y)


@numba.njit(**JIT)
def tanh(x):
    return math.tanh(x)


@numba.njit(**JIT)
def tanh_grad(y):
    return 1.0 - y * y


@numba.njit(**JIT)
def elu(x):
    return x if x > 0.0 else math.expm1(x)


@numba.njit(**JIT)
def elu_grad(x):
    return 1.0 if x > 0.0 else math.exp(x)


@numba.njit(**JIT)
def gelu(x):
    return 0.5 * x * (1.0 + math.erf(x * _SQRT1_2))


@numba.njit(**JIT)
def gelu_grad(x):
    return 0.5 * (1.0 + math.erf(x * _SQRT1_2)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)


@numba.njit(**JIT)
def softplus(x):
    # torch's rule (beta 1, threshold 20): x itself above 20, log(1 + e^x) below
    return x if x > 20.0 else math.log1p(math.exp(x))


@numba.njit(**JIT)
def softplus_grad(x):
    return 1.0 if x > 20.0 else sigmoid(x)


@numba.njit(**JIT)
def silu(x):
    return x * sigmoid(x)


@numba.njit(**JIT)
def silu_grad(x):
    s = sigmoid(x)
    return s + x * s * (1.0 - s)


BUILTINS = [
    Activation("identity", identity, identity_grad),
    Activation("relu", relu, relu_grad, init="he"),
    Activation("leaky_relu", leaky_relu, leaky_relu_grad, init="he"),
    Activation("sigmoid", sigmoid, sigmoid_grad, derivative_of="output"),
    Activation("tanh", tanh, tanh_grad, derivative_of="output"),
    Activation("elu", elu, elu_grad, init="he"),
    Activation("gelu", gelu, gelu_grad, init="he"),
    Activation("softplus", softplus, softplus_grad),
    Activation("silu", silu, silu_grad, init="he"),
]


@hookimpl
def register_activations(register):
    for activation in BUILTINS:
        register(activation)


@hookimpl
def register_loggers(register):
    from . import builtin_loggers
    register("tensorboard", builtin_loggers.TensorBoardLogger)
    register("mlflow", builtin_loggers.MLflowLogger)
