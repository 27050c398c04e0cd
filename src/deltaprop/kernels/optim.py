"""Flat-vector optimizer updates with torch.optim's rules and defaults.

All parameters live in one flat vector `theta` (layer after layer: weight then bias), with the
gradient in `grad` of the same layout and the optimizer state in `state` of shape (2, P):
SGD keeps its momentum buffer in state[0]; Adam/AdamW keep exp_avg in state[0] and exp_avg_sq in
state[1]. The update is one fused parallel loop; `gscale` folds gradient clipping into it.

hyper = [momentum, dampening, nesterov, weight_decay, beta1, beta2, eps]
"""

import math

import numba
import numpy as np
from numba import prange

from ._config import JIT, PJIT

SGD, ADAM, ADAMW = 0, 1, 2
N_HYPER = 7


@numba.njit(**JIT)
def chunk(n, parts, t, align=1):
    """Bounds [lo, hi) of part t of range(n) split into `parts`, lo aligned to `align`."""
    step = (n + parts - 1) // parts
    step = ((step + align - 1) // align) * align
    lo = min(n, t * step)
    return lo, min(n, lo + step)


@numba.njit(**JIT)
def _sgd(theta, grad, state, lo, hi, lr, gscale, hyper, first):
    momentum, dampening, nesterov, wd = hyper[0], hyper[1], hyper[2], hyper[3]
    buf = state[0]
    for i in range(lo, hi):
        g = grad[i] * gscale
        if wd != 0.0:
            g += wd * theta[i]
        if momentum != 0.0:
            if first:
                b = g
            else:
                b = momentum * buf[i] + (1.0 - dampening) * g
            buf[i] = b
            if nesterov != 0.0:
                g = g + momentum * b
            else:
                g = b
        theta[i] -= lr * g


@numba.njit(**JIT)
def _adam(theta, grad, state, lo, hi, lr, gscale, hyper, t, decoupled):
    wd, beta1, beta2, eps = hyper[3], hyper[4], hyper[5], hyper[6]
    m, v = state[0], state[1]
    bc1 = 1.0 - beta1 ** t
    bc2_sqrt = math.sqrt(1.0 - beta2 ** t)
    step_size = lr / bc1
    for i in range(lo, hi):
        g = grad[i] * gscale
        if decoupled:
            theta[i] *= 1.0 - lr * wd
        elif wd != 0.0:
            g += wd * theta[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        theta[i] -= step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)


@numba.njit(**PJIT)
def update(parts, kind, theta, grad, state, lr, gscale, hyper, t):
    """One optimizer step on the flat vector; `t` is the 1-based step count."""
    for p in prange(parts):
        lo, hi = chunk(theta.size, parts, p, 64)
        if kind == SGD:
            _sgd(theta, grad, state, lo, hi, lr, gscale, hyper, t == 1)
        else:
            _adam(theta, grad, state, lo, hi, lr, gscale, hyper, t, kind == ADAMW)
