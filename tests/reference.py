"""Plain-NumPy multilayer-perceptron oracle (float64, written for clarity, not speed).

This module is the independent reference that the Numba kernels of ``deltaprop`` are tested
against. It deliberately imports nothing from ``deltaprop``: every formula here is written out
from the conventions below (torch.nn.Linear's weight layout, the losses, torch.optim's rules).

Conventions
-----------
* ``params`` is a list of ``(W, b)`` pairs, one per dense layer, ``W`` of shape
  ``(out_features, in_features)`` and ``b`` of shape ``(out_features,)`` (as ``torch.nn.Linear``).
* Layer l computes ``z_l = a_{l-1} @ W_l.T + b_l``; hidden layers apply their activation
  ``a_l = f_l(z_l)``; the last layer applies ``output_activation`` (always identity for
  ``cross_entropy``, where softmax is fused into the loss).
* ``activations`` is a list with one entry per *hidden* layer (``len(params) - 1`` entries). Each
  entry is a name from :data:`ACTIVATIONS` or an ``(f, fprime)`` pair of vectorised callables
  taking the pre-activation ``z``. A single name / pair is broadcast to all hidden layers.
* Losses per minibatch of size B:
    - ``mse``:           ``L = 1/(2B) * sum_b sum_k (yhat_bk - y_bk)^2``, ``y`` float ``(B, k)``;
    - ``cross_entropy``: ``L = mean_b(-log softmax(z_out)_b[label_b])``, ``y`` int labels ``(B,)``.
  With sample weights ``w`` (B,) (scikit-learn's definition, its MLP's ``_backprop``): the mean over
  the batch becomes the weighted mean ``sum_b w_b loss_b / sum_b w_b`` (0 when the weights sum to 0).
* Optimizers follow ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` exactly (defaults included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "resolve_activation",
    "init_params",
    "forward",
    "loss_value",
    "loss_and_grads",
    "numerical_grads",
    "SGD",
    "Adam",
    "AdamW",
    "train_steps",
]

# --------------------------------------------------------------------------------------------
# Activations: name -> (f(z), f'(z)), both vectorised over float64 arrays.
# --------------------------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _f64(z) -> np.ndarray:
    return np.asarray(z, dtype=np.float64)


def _identity(z):
    return _f64(z).copy()


def _identity_d(z):
    return np.ones_like(_f64(z))


def _relu(z):
    z = _f64(z)
    return np.where(z > 0.0, z, 0.0)


def _relu_d(z):
    z = _f64(z)
    return np.where(z > 0.0, 1.0, 0.0)  # f'(0) = 0


LEAKY_RELU_SLOPE = 0.01


def _leaky_relu(z):
    z = _f64(z)
    return np.where(z > 0.0, z, LEAKY_RELU_SLOPE * z)


def _leaky_relu_d(z):
    z = _f64(z)
    return np.where(z > 0.0, 1.0, LEAKY_RELU_SLOPE)  # f'(0) = 0.01


def _sigmoid(z):
    # Stable in both tails: never evaluates exp of a large positive number.
    z = _f64(z)
    e = np.exp(-np.abs(z))  # in (0, 1]
    return np.where(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def _sigmoid_d(z):
    s = _sigmoid(z)
    return s * (1.0 - s)


def _tanh(z):
    return np.tanh(_f64(z))


def _tanh_d(z):
    t = np.tanh(_f64(z))
    return 1.0 - t * t


ELU_ALPHA = 1.0


def _elu(z):
    z = _f64(z)
    neg = ELU_ALPHA * np.expm1(np.minimum(z, 0.0))  # min() keeps exp from overflowing
    return np.where(z > 0.0, z, neg)


def _elu_d(z):
    z = _f64(z)
    return np.where(z > 0.0, 1.0, ELU_ALPHA * np.exp(np.minimum(z, 0.0)))


_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu(z):
    z = _f64(z)
    return 0.5 * z * (1.0 + _erf(z / _SQRT2))


def _gelu_d(z):
    # d/dz [z * Phi(z)] = Phi(z) + z * phi(z)
    z = _f64(z)
    cdf = 0.5 * (1.0 + _erf(z / _SQRT2))
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * z * z)
    return cdf + z * pdf


def _softplus(z):
    # log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)), stable for any z.
    z = _f64(z)
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _softplus_d(z):
    return _sigmoid(z)


def _silu(z):
    z = _f64(z)
    return z * _sigmoid(z)


def _silu_d(z):
    z = _f64(z)
    s = _sigmoid(z)
    return s + z * s * (1.0 - s)


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "identity": (_identity, _identity_d),
    "relu": (_relu, _relu_d),
    "leaky_relu": (_leaky_relu, _leaky_relu_d),
    "sigmoid": (_sigmoid, _sigmoid_d),
    "tanh": (_tanh, _tanh_d),
    "elu": (_elu, _elu_d),
    "gelu": (_gelu, _gelu_d),
    "softplus": (_softplus, _softplus_d),
    "silu": (_silu, _silu_d),
}


def resolve_activation(act) -> tuple[Callable, Callable]:
    """A name from ACTIVATIONS or an (f, fprime) pair -> (f, fprime)."""
    if isinstance(act, str):
        try:
            return ACTIVATIONS[act]
        except KeyError:
            raise ValueError(
                f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}"
            ) from None
    if (
        isinstance(act, (tuple, list))
        and len(act) == 2
        and callable(act[0])
        and callable(act[1])
    ):
        return act[0], act[1]
    raise TypeError(f"activation must be a name or an (f, fprime) pair, got {act!r}")


def _is_single_activation(acts) -> bool:
    if isinstance(acts, str):
        return True
    return (
        isinstance(acts, tuple)
        and len(acts) == 2
        and callable(acts[0])
        and callable(acts[1])
    )


def _hidden_activations(params, activations) -> list[tuple[Callable, Callable]]:
    n_hidden = len(params) - 1
    if _is_single_activation(activations):
        activations = [activations] * n_hidden
    activations = list(activations)
    if len(activations) != n_hidden:
        raise ValueError(
            f"{len(params)} layers need {n_hidden} hidden activations, got {len(activations)}"
        )
    return [resolve_activation(a) for a in activations]


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def init_params(sizes: Sequence[int], seed: int = 0, scale: float | None = None):
    """Random float64 params for layer sizes [n_in, h1, ..., n_out].

    Weights ~ N(0, scale^2) with scale = 1/sqrt(fan_in) unless given; biases ~ N(0, 0.1^2).
    A convenience for tests only; it is not meant to match deltaprop's initialisers.
    """
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        s = (1.0 / math.sqrt(n_in)) if scale is None else scale
        W = rng.normal(0.0, s, size=(n_out, n_in))
        b = rng.normal(0.0, 0.1, size=(n_out,))
        params.append((W, b))
    return params


def _as_params64(params):
    out = []
    for W, b in params:
        W = np.array(W, dtype=np.float64)
        b = np.array(b, dtype=np.float64)
        if W.ndim != 2 or b.ndim != 1 or b.shape[0] != W.shape[0]:
            raise ValueError(f"bad layer shapes W{W.shape} b{b.shape}")
        out.append((W, b))
    for (W0, _), (W1, _) in zip(out[:-1], out[1:]):
        if W1.shape[1] != W0.shape[0]:
            raise ValueError(f"layer shapes do not chain: {W0.shape} then {W1.shape}")
    return out


# --------------------------------------------------------------------------------------------
# Forward / loss / backward
# --------------------------------------------------------------------------------------------


def forward(params, X, activations, output_activation="identity"):
    """Forward pass.

    Returns ``(zs, As)``:
      * ``zs[l]`` is the pre-activation of layer l (l = 0..L-1), shape (B, out_l);
      * ``As[0]`` is the input ``X`` (float64) and ``As[l + 1] = f_l(zs[l])`` for l = 0..L-1,
        so ``As[-1]`` is the network output (after ``output_activation``) and the input of
        layer l is ``As[l]``.
    """
    params = _as_params64(params)
    hidden = _hidden_activations(params, activations)
    out_f, _ = resolve_activation(output_activation)
    a = np.array(X, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != params[0][0].shape[1]:
        raise ValueError(f"X must be (B, {params[0][0].shape[1]}), got {a.shape}")
    zs, As = [], [a]
    for l, (W, b) in enumerate(params):
        z = a @ W.T + b
        f = hidden[l][0] if l < len(hidden) else out_f
        a = f(z)
        zs.append(z)
        As.append(a)
    return zs, As


def _check_loss(loss, output_activation):
    if loss not in ("mse", "cross_entropy"):
        raise ValueError(f"unknown loss {loss!r}; expected 'mse' or 'cross_entropy'")
    if loss == "cross_entropy" and not (
        isinstance(output_activation, str) and output_activation == "identity"
    ):
        raise ValueError("cross_entropy fuses softmax into the loss: output_activation must be identity")


def _log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    shifted = z - m
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _labels(y, B, k):
    y = np.asarray(y)
    if y.shape != (B,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"cross_entropy needs int labels of shape ({B},), got {y.dtype} {y.shape}")
    if B and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    return y


def _row_weights(weights, B):
    """(B,) per-row factors of the batch mean: 1/B each, or w_b / sum(w) (0 if sum(w) == 0)."""
    if weights is None:
        return np.full(B, 1.0 / B)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (B,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be {B} finite numbers >= 0, got {w!r}")
    total = w.sum()
    return w / total if total > 0 else np.zeros(B)


def _loss_and_delta_out(z_out, a_out, y, loss, output_activation, weights=None):
    """Loss value and delta_out = dL/dz_out (the batch mean, weighted by ``weights`` if given)."""
    B, k = z_out.shape
    if loss == "mse":
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (B, k):
            raise ValueError(f"mse needs float targets of shape ({B}, {k}), got {y.shape}")
        diff = a_out - y
        _, out_fprime = resolve_activation(output_activation)
        if weights is None:
            L = (diff * diff).sum() / (2.0 * B)
            delta = (diff / B) * out_fprime(z_out)
            return L, delta
        r = _row_weights(weights, B)
        L = 0.5 * (r * (diff * diff).sum(axis=1)).sum()
        delta = (diff * r[:, None]) * out_fprime(z_out)
        return L, delta
    # cross_entropy
    labels = _labels(y, B, k)
    logp = _log_softmax(z_out)
    rows = np.arange(B)
    delta = np.exp(logp)  # softmax
    delta[rows, labels] -= 1.0
    if weights is None:
        L = -logp[rows, labels].sum() / B
        delta /= B
        return L, delta
    r = _row_weights(weights, B)
    L = -(r * logp[rows, labels]).sum()
    return L, delta * r[:, None]


def loss_value(params, X, y, activations, loss, output_activation="identity", weights=None) -> float:
    """Loss value only (used by numerical_grads)."""
    _check_loss(loss, output_activation)
    zs, As = forward(params, X, activations, output_activation)
    L, _ = _loss_and_delta_out(zs[-1], As[-1], y, loss, output_activation, weights)
    return float(L)


def loss_and_grads(params, X, y, activations, loss, output_activation="identity", weights=None):
    """Loss and gradients by the delta rule.

    ``delta_out = dL/dz_out``; ``delta_l = (delta_{l+1} @ W_{l+1}) * f_l'(z_l)``;
    ``dW_l = delta_l.T @ a_{l-1}``; ``db_l = delta_l.sum(0)``.
    Returns ``(L, grads)`` with ``grads`` a list of ``(dW, db)`` matching ``params``.
    ``weights``: (B,) sample weights (see the module docstring), or None.
    """
    _check_loss(loss, output_activation)
    params = _as_params64(params)
    hidden = _hidden_activations(params, activations)
    zs, As = forward(params, X, activations, output_activation)
    L, delta = _loss_and_delta_out(zs[-1], As[-1], y, loss, output_activation, weights)

    n_layers = len(params)
    grads = [None] * n_layers
    for l in range(n_layers - 1, -1, -1):
        a_prev = As[l]
        grads[l] = (delta.T @ a_prev, delta.sum(axis=0))
        if l > 0:
            W = params[l][0]
            _, fprime = hidden[l - 1]
            delta = (delta @ W) * fprime(zs[l - 1])
    return float(L), grads


def numerical_grads(params, X, y, activations, loss, output_activation="identity", eps=1e-6, weights=None):
    """Central-difference gradients ``(L(p+eps) - L(p-eps)) / (2 eps)`` for every parameter."""
    _check_loss(loss, output_activation)
    params = _as_params64(params)
    grads = []
    for li, (W, b) in enumerate(params):
        layer_grads = []
        for which, arr in ((0, W), (1, b)):
            g = np.zeros_like(arr)
            for idx in np.ndindex(arr.shape):
                old = arr[idx]
                arr[idx] = old + eps
                lp = loss_value(params, X, y, activations, loss, output_activation, weights)
                arr[idx] = old - eps
                lm = loss_value(params, X, y, activations, loss, output_activation, weights)
                arr[idx] = old
                g[idx] = (lp - lm) / (2.0 * eps)
            layer_grads.append(g)
        grads.append(tuple(layer_grads))
    return grads


# --------------------------------------------------------------------------------------------
# Optimizers (torch.optim rules). step(params, grads) -> new params; state kept per position.
#
# params / grads are lists of tuples of arrays (normally (W, b) pairs). The optimizer keeps one
# state entry per array, keyed by its (layer, slot) position, so the same optimizer must always
# be stepped with params of the same structure.
# --------------------------------------------------------------------------------------------


def _flat(params):
    return [(i, j, np.array(p, dtype=np.float64)) for i, layer in enumerate(params) for j, p in enumerate(layer)]


def _unflat(flat, like):
    out = [list(layer) for layer in like]
    for i, j, p in flat:
        out[i][j] = p
    return [tuple(layer) for layer in out]


class SGD:
    """torch.optim.SGD:

        d = g + wd * p
        if momentum: buf = d (first step) else momentum * buf + (1 - dampening) * d
                     d = d + momentum * buf (nesterov) else buf
        p = p - lr * d
    """

    def __init__(self, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.state: dict[tuple[int, int], dict] = {}

    def step(self, params, grads):
        flat_g = {(i, j): np.asarray(g, dtype=np.float64) for i, j, g in _flat(grads)}
        new = []
        for i, j, p in _flat(params):
            d = flat_g[(i, j)].copy()
            if self.weight_decay != 0.0:
                d = d + self.weight_decay * p
            if self.momentum != 0.0:
                st = self.state.setdefault((i, j), {})
                if "momentum_buffer" not in st:
                    buf = d.copy()
                else:
                    buf = self.momentum * st["momentum_buffer"] + (1.0 - self.dampening) * d
                st["momentum_buffer"] = buf
                d = d + self.momentum * buf if self.nesterov else buf
            new.append((i, j, p - self.lr * d))
        return _unflat(new, params)


class Adam:
    """torch.optim.Adam (amsgrad=False):

        t += 1; g = g + wd * p                      (L2, coupled)
        m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2
        bc1 = 1 - b1^t;  bc2 = 1 - b2^t
        p = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
    """

    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        b1, b2 = betas
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0 or not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError("invalid Adam hyper-parameters")
        self.lr = float(lr)
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.state: dict[tuple[int, int], dict] = {}

    def step(self, params, grads):
        b1, b2 = self.betas
        lr, eps, wd = self.lr, self.eps, self.weight_decay
        flat_g = {(i, j): np.asarray(g, dtype=np.float64) for i, j, g in _flat(grads)}
        new = []
        for i, j, p in _flat(params):
            g = flat_g[(i, j)]
            st = self.state.setdefault(
                (i, j), {"step": 0, "exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p)}
            )
            st["step"] += 1
            t = st["step"]
            if wd != 0.0:
                if self.decoupled:
                    p = p * (1.0 - lr * wd)
                else:
                    g = g + wd * p
            m = b1 * st["exp_avg"] + (1.0 - b1) * g
            v = b2 * st["exp_avg_sq"] + (1.0 - b2) * g * g
            st["exp_avg"], st["exp_avg_sq"] = m, v
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            denom = np.sqrt(v) / math.sqrt(bc2) + eps
            p = p - (lr / bc1) * (m / denom)
            new.append((i, j, p))
        return _unflat(new, params)


class AdamW(Adam):
    """torch.optim.AdamW: p = p * (1 - lr * wd) (decoupled), then the Adam step without L2."""

    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------


def train_steps(
    params,
    X,
    y,
    activations,
    loss,
    optimizer,
    batch_size,
    order=None,
    output_activation="identity",
    weights=None,
):
    """One pass over the rows of X in ``order`` (default 0..n-1), in consecutive minibatches of
    ``batch_size`` rows (the last, possibly partial, batch is kept and averaged over its own
    size, or weighted by ``weights``, one per row of X), applying ``optimizer.step`` after each
    batch. Returns the new params."""
    X = np.asarray(X)
    y = np.asarray(y)
    n = X.shape[0]
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = np.arange(n) if order is None else np.asarray(order)
    params = _as_params64(params)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        w = None if weights is None else np.asarray(weights)[idx]
        _, grads = loss_and_grads(params, X[idx], y[idx], activations, loss, output_activation, w)
        params = optimizer.step(params, grads)
    return params
