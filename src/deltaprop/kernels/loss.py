"""Losses fused with their deltas, row by row (callers split rows across threads).

- cross_entropy: softmax fused into the loss; `delta = (softmax(z) - onehot) / nb`.
- mse: `L = 1/(2 nb) sum (yhat - y)^2`; `delta = (yhat - y) / nb` (the caller multiplies by the
  output activation's derivative).
Each writes the row's loss into `rowloss[i]` so the batch loss is summed in a fixed order.
"""

import math

import numba

from ._config import JIT


@numba.njit(**JIT)
def cross_entropy_rows(Z, D, off, k, lo, hi, nb, labels, rowloss, correct):
    """Rows lo..hi of the (nb, k) logits at Z[off:]; labels[i] is row i's class."""
    inv = 1.0 / nb
    for i in range(lo, hi):
        r = off + i * k
        zmax = Z[r]
        arg = 0
        for j in range(1, k):
            if Z[r + j] > zmax:
                zmax = Z[r + j]
                arg = j
        s = 0.0
        for j in range(k):
            e = math.exp(Z[r + j] - zmax)
            D[r + j] = e
            s += e
        y = labels[i]
        rowloss[i] = math.log(s) - (Z[r + y] - zmax)
        correct[i] = 1 if arg == y else 0
        invs = 1.0 / s
        for j in range(k):
            D[r + j] = D[r + j] * invs * inv
        D[r + y] -= inv


@numba.njit(**JIT)
def mse_rows(A, D, off, k, lo, hi, nb, targets, rowloss):
    """Rows lo..hi of the (nb, k) outputs at A[off:]; targets[i] is row i's target."""
    inv = 1.0 / nb
    for i in range(lo, hi):
        r = off + i * k
        acc = 0.0
        for j in range(k):
            d = A[r + j] - targets[i, j]
            acc += d * d
            D[r + j] = d * inv
        rowloss[i] = 0.5 * acc
