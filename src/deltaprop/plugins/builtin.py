"""The builtin activations, registered through the same hook a third-party plugin implements.

Each has its two jitted scalar functions and, next to them, its ONNX form (`Activation.onnx`, built
with the node builder of plugins/onnxgraph.py). In float64 some forms are compositions of
elementary ops, since onnxruntime's CPU kernels for Elu, Softplus, Erf and Gelu are float32 only.
"""

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


def identity_onnx(g, x):
    return x


@numba.njit(**JIT)
def relu(x):
    return x if x > 0.0 else 0.0 * x


@numba.njit(**JIT)
def relu_grad(x):
    return 1.0 if x > 0.0 else 0.0


def relu_onnx(g, x):
    return g.node("Relu", x)


@numba.njit(**JIT)
def leaky_relu(x):
    return x if x > 0.0 else 0.01 * x


@numba.njit(**JIT)
def leaky_relu_grad(x):
    return 1.0 if x > 0.0 else 0.01


def leaky_relu_onnx(g, x):
    if g.dtype == "float32":
        return g.node("LeakyRelu", x, alpha=0.01)
    return _if_positive(g, x, g.node("Mul", x, g.constant(0.01)))  # alpha as a double, not a float attribute


@numba.njit(**JIT)
def sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@numba.njit(**JIT)
def sigmoid_grad(y):
    return y * (1.0 - y)


def sigmoid_onnx(g, x):
    return g.node("Sigmoid", x)


@numba.njit(**JIT)
def tanh(x):
    return math.tanh(x)


@numba.njit(**JIT)
def tanh_grad(y):
    return 1.0 - y * y


def tanh_onnx(g, x):
    return g.node("Tanh", x)


@numba.njit(**JIT)
def elu(x):
    return x if x > 0.0 else math.expm1(x)


@numba.njit(**JIT)
def elu_grad(x):
    return 1.0 if x > 0.0 else math.exp(x)


def elu_onnx(g, x):
    if g.dtype == "float32":
        return g.node("Elu", x, alpha=1.0)
    return _if_positive(g, x, g.node("Sub", g.node("Exp", x), g.constant(1.0)))


@numba.njit(**JIT)
def gelu(x):
    return 0.5 * x * (1.0 + math.erf(x * _SQRT1_2))


@numba.njit(**JIT)
def gelu_grad(x):
    return 0.5 * (1.0 + math.erf(x * _SQRT1_2)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)


def gelu_onnx(g, x):
    """Exact (erf) gelu: the Gelu op from opset 20, 0.5 x (1 + Erf(x / sqrt 2)) below it, and in
    float64 erf itself as a composition (Cephes' rational approximations, within 3e-16)."""
    if g.dtype == "float32" and g.opset >= 20:
        return g.node("Gelu", x)  # approximate="none": the erf form
    u = g.node("Mul", x, g.constant(_SQRT1_2))
    erf = g.node("Erf", u) if g.dtype == "float32" else _erf_composed(g, u)
    half_x = g.node("Mul", x, g.constant(0.5))
    return g.node("Mul", half_x, g.node("Add", erf, g.constant(1.0)))


# Cephes (S. Moshier, public domain) erf/erfc: erf(x) = x T(x^2) / U(x^2) for |x| <= 1, else
# sign(x) (1 - erfc(|x|)) with erfc(a) = exp(-a^2) P(a) / Q(a); U and Q have a leading 1.
_ERF_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
          7.00332514112805075473e3, 5.55923013010394962768e4)
_ERF_U = (3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
          2.26290000613890934246e4, 4.92673942608635921086e4)
_ERFC_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
           4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
           9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)
_ERFC_Q = (1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
           9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
           1.65666309194161350182e3, 5.57535340817727675546e2)


def _horner(g, t, coefs, monic=False):
    """coefs[0] t^n + ... + coefs[n] (monic: t^(n+1) + coefs[0] t^n + ...), by Horner's rule."""
    p = g.node("Add", t, g.constant(coefs[0])) if monic else g.constant(coefs[0])
    for c in coefs[1:]:
        p = g.node("Add", g.node("Mul", p, t), g.constant(c))
    return p


def _erf_composed(g, x):
    ax = g.node("Abs", x)
    z = g.node("Min", g.node("Mul", x, x), g.constant(1.0))  # clamped: the branch is used for |x| <= 1
    small = g.node("Div", g.node("Mul", x, _horner(g, z, _ERF_T)), _horner(g, z, _ERF_U, monic=True))
    a = g.node("Min", ax, g.constant(8.0))  # erfc(8) < 1e-28: 1 - erfc is 1 beyond
    ratio = g.node("Div", _horner(g, a, _ERFC_P), _horner(g, a, _ERFC_Q, monic=True))
    erfc = g.node("Mul", g.node("Exp", g.node("Neg", g.node("Mul", a, a))), ratio)
    large = g.node("Mul", g.node("Sign", x), g.node("Sub", g.constant(1.0), erfc))
    return g.node("Where", g.node("Greater", ax, g.constant(1.0)), large, small)


@numba.njit(**JIT)
def softplus(x):
    # torch's rule (beta 1, threshold 20): x itself above 20, log(1 + e^x) below
    return x if x > 20.0 else math.log1p(math.exp(x))


@numba.njit(**JIT)
def softplus_grad(x):
    return 1.0 if x > 20.0 else sigmoid(x)


def softplus_onnx(g, x):
    # ONNX Softplus has no threshold: torch's rule is a Where around it
    if g.dtype == "float32":
        soft = g.node("Softplus", x)
    else:
        soft = g.node("Log", g.node("Add", g.node("Exp", x), g.constant(1.0)))
    return g.node("Where", g.node("Greater", x, g.constant(20.0)), x, soft)


@numba.njit(**JIT)
def silu(x):
    return x * sigmoid(x)


@numba.njit(**JIT)
def silu_grad(x):
    s = sigmoid(x)
    return s + x * s * (1.0 - s)


def silu_onnx(g, x):
    return g.node("Mul", x, g.node("Sigmoid", x))


def _if_positive(g, x, otherwise):
    """x where x > 0, else `otherwise` (the tensor of the same shape)."""
    return g.node("Where", g.node("Greater", x, g.constant(0.0)), x, otherwise)


BUILTINS = [
    Activation("identity", identity, identity_grad, onnx=identity_onnx),
    Activation("relu", relu, relu_grad, init="he", onnx=relu_onnx),
    Activation("leaky_relu", leaky_relu, leaky_relu_grad, init="he", onnx=leaky_relu_onnx),
    Activation("sigmoid", sigmoid, sigmoid_grad, derivative_of="output", onnx=sigmoid_onnx),
    Activation("tanh", tanh, tanh_grad, derivative_of="output", onnx=tanh_onnx),
    Activation("elu", elu, elu_grad, init="he", onnx=elu_onnx),
    Activation("gelu", gelu, gelu_grad, init="he", onnx=gelu_onnx),
    Activation("softplus", softplus, softplus_grad, onnx=softplus_onnx),
    Activation("silu", silu, silu_grad, init="he", onnx=silu_onnx),
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
