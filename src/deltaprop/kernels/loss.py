"""Losses fused with their deltas, row by row (callers split rows across threads).

- cross_entropy: softmax fused into the loss; `delta = (softmax(z) - onehot) * inv`.
- mse: `L = 1/2 sum_k (yhat - y)^2` per row; `delta = (yhat - y) * inv` (the caller multiplies by
  the output activation's derivative).
`inv` is `1 / nb` for every row without sample weights (`w` empty). With weights (scikit-learn's
definition, `sklearn/neural_network/_multilayer_perceptron.py` `_backprop`) row i's loss is
multiplied by `w[i]` and its delta by `w[i] * inv`, where the caller passes `inv = 1 / sum(w)` over
the batch (0 when the batch's weights sum to 0: no data gradient).
Each writes the row's (weighted) loss into `rowloss[i]` so the batch loss is summed in a fixed order.
"""

import math

import numba

from ._config import JIT


@numba.njit(**JIT)
def cross_entropy_rows(Z, D, off, k, lo, hi, inv, w, labels, rowloss, correct):
    """Rows lo..hi of the (nb, k) logits at Z[off:]; labels[i] is row i's class."""
    weighted = w.size > 0
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
        loss = math.log(s) - (Z[r + y] - zmax)
        row_inv = inv
        if weighted:
            loss *= w[i]
            row_inv = w[i] * inv
        rowloss[i] = loss
        correct[i] = 1 if arg == y else 0
        invs = 1.0 / s
        for j in range(k):
            D[r + j] = D[r + j] * invs * row_inv
        D[r + y] -= row_inv


@numba.njit(**JIT)
def mse_rows(A, D, off, k, lo, hi, inv, w, targets, rowloss):
    """Rows lo..hi of the (nb, k) outputs at A[off:]; targets[i] is row i's target."""
    weighted = w.size > 0
    for i in range(lo, hi):
        r = off + i * k
        row_inv = w[i] * inv if weighted else inv
        acc = 0.0
        for j in range(k):
            d = A[r + j] - targets[i, j]
            acc += d * d
            D[r + j] = d * row_inv
        rowloss[i] = 0.5 * acc * w[i] if weighted else 0.5 * acc
