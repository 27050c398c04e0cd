"""Forward, backward and whole runs of minibatch steps for a dense MLP.

Compiled once per dtype, whatever the activations: each layer's activation is reached through
the addresses of its forward and grad blocks (`fwd`, `grd`: int64 arrays, one address per layer;
see kernels/blocks.py), C callbacks compiled separately per activation. `deltaprop.compute.factory`
writes this file into the kernel cache directory under a name that hashes it and the kernel
modules it calls, so Numba caches it like any file and an edit is never loaded stale.

Layout (flat, C order):
  theta, grad  [W_0 (n1, n0) | b_0 (n1) | W_1 (n2, n1) | b_1 | ...]   offsets woff[l], boff[l]
  Z, A, D      for layer l a (cap, n_{l+1}) block at hoff[l]: pre-activation z, activation a, delta
  xb           (cap, n0) gathered and scaled minibatch; yb / tb / wb its labels / targets / weights

Parallelism: every step is a few `prange` regions over tiles of output columns (of z or delta)
or rows (of dW), `n_tiles` of them from the layer's width alone; a tile is one single-threaded BLAS
call plus the fused elementwise work on it. Tiles never depend on the thread count, and nothing
is reduced across threads except the batch loss (summed row by row in order) and the gradient
norm (summed tile by tile in order), so results are bit-identical run to run and across thread
counts.

Compile time: each distinct `prange` loop is one gufunc, about a second of a cold compile, so there
are two, forward's and backward's: the minibatch gather is forward's pass -1 and the last step's
update a forward pass of no rows. A cold start compiles loss_delta, backward, coefficients and
outputs in a second process meanwhile (compute/compile_helper.py).
"""

import math

import numba
import numpy as np
from numba import prange

from deltaprop.kernels._config import JIT, PJIT
from deltaprop.kernels.blas import gemm
from deltaprop.kernels.blocks import call_forward_block, call_grad_block
from deltaprop.kernels.loss import cross_entropy_rows, mse_rows
from deltaprop.kernels.optim import chunk, coefficients, update_range

CROSS_ENTROPY, MSE = 0, 1
# Arguments typed as plain bool/int64, not as literals: a literal True or 16 in a call compiles the
# callee once per distinct value (gemm three times, chunk six), seconds of a cold compile.
NO, YES = np.bool_(False), np.bool_(True)
ONE, LINE = np.int64(1), np.int64(16)  # chunk alignments; 16 float32 = a cache line, no false sharing
MIN_TILE, MAX_TILES = 128, 16  # a layer's GEMM work: a tile per 128 columns, at least 2, at most 16
SMALL_BATCH = 128  # below this, per-call BLAS overhead is large: z^T = W a^T
# Tiles depend on the shapes only, never on the thread count: each tile is the same BLAS call
# with 1 thread or 8, so results are bit-identical across thread counts, not only run to run.
# Each tile's BLAS call packs the whole other operand again, so fewer, wider tiles waste less:
# step time, 2 threads, float32, interleaved in one process (p10): 784-256-128-10 at batch 128
# 562 us with 64-wide tiles, 541 with 128; at 512 1,784 / 1,714; 784-4096-4096-10 at batch 128
# 60.8 ms with 64-wide tiles, 57.5 with 128, 56.6 with 256, 55.7 with 512. 16 tiles at most still
# give every core of a 16-core machine a share of a wide layer.
# Measured (1 thread, float32, 784->256 at batch 32): a @ W[64 rows].T 48-56 GFLOP/s,
# W[128 rows] @ a.T 79; at batch >= 128 the two orders are within ~10 %.


@numba.njit(**JIT)
def n_tiles(width):
    """How many tiles split `width` columns (or dW rows): one per 128, at most MAX_TILES, and at
    least 2 when the width allows (a 2-core machine gets both cores)."""
    t = min((width + MIN_TILE - 1) // MIN_TILE, MAX_TILES)
    if t < 2 and width > MIN_TILE // 2:
        t = 2
    return t


@numba.njit(**JIT)
def _sumsq(x):
    """sum(x**2) in float64. On a slice indexed from 0, so it vectorises (see optim.update_range)."""
    s = 0.0
    for i in range(x.size):
        s += x[i] * x[i]
    return s


@numba.njit(**JIT)
def _mix(z):
    """splitmix64's finaliser: every input bit reaches every output bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(**JIT)
def _row_key(seed, step, layer, row):
    """A 64-bit key for one row of one layer's mask at one step. Each coordinate passes through the
    full finaliser in turn, so neighbouring steps, layers and rows give unrelated keys (mixing
    them with one multiplier made step t+1's mask step t's shifted by a column)."""
    g = np.uint64(0x9E3779B97F4A7C15)
    h = _mix(np.uint64(seed) + g)
    h = _mix(h ^ (np.uint64(step) + g))
    h = _mix(h ^ (np.uint64(layer) + g))
    return _mix(h ^ (np.uint64(row) + g))


@numba.njit(**JIT)
def _keep(key, col, rate):
    """Mask entry `col` of a row: 0 or 1/(1-rate), from splitmix64's stream seeded with the row key."""
    h = _mix(key + np.uint64(col + 1) * np.uint64(0x9E3779B97F4A7C15))
    u = np.float64(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return 0.0 if u < rate else 1.0 / (1.0 - rate)


@numba.njit(**JIT)
def _keep_scale(seed, step, layer, row, col, rate):
    """Dropout mask entry: a pure function of its coordinates (so a resume draws the same masks)."""
    return _keep(_row_key(seed, step, layer, row), col, rate)


@numba.njit(**JIT)
def _dropout(X, off, r0, r1, ncols, c0, c1, seed, step, layer, rate):
    for r in range(r0, r1):
        key = _row_key(seed, step, layer, r)
        base = off + r * ncols
        for j in range(c0, c1):
            X[base + j] *= _keep(key, j, rate)


@numba.njit(**JIT)
def _gather(X, mean, inv_std, perm, p0, lo, hi, xb, labels, yb, targets, tb, weights, wb):
    """Rows lo..hi of the minibatch: xb[i] = (X[perm[p0+i]] - mean) * inv_std, and the matching
    labels/targets (and sample weights, when `weights` is not empty)."""
    d = X.shape[1]
    for i in range(lo, hi):
        r = perm[p0 + i]
        x, out = X[r], xb[i * d:(i + 1) * d]  # slices from 0: the loop vectorises
        for j in range(d):
            out[j] = (x[j] - mean[j]) * inv_std[j]
        if labels.size > 0:
            yb[i] = labels[r]
        if targets.shape[0] > 0:
            for j in range(targets.shape[1]):
                tb[i, j] = targets[r, j]
        if weights.size > 0:
            wb[i] = weights[r]


@numba.njit(**PJIT)
def forward(parts, X, mean, inv_std, perm, p0, labels, yb, targets, tb, weights, wb,
            nb, xb, theta, sizes, woff, boff, hoff, fwd, drop, seed, step, Z, A, S,
            pending, opt_kind, grad, opt_state, coef, hyper, t):
    """Gather the minibatch, then z_l = a_{l-1} @ W_l.T + b_l, a_l = f_l(z_l) (dropout on hidden
    layers when drop[l] > 0).

    Pass -1 gathers rows p0.. of the epoch's permutation `perm` in `parts` chunks:
    xb[i] = (X[perm[p0+i]] - mean) * inv_std with its labels/targets/weights (`_gather`). It shares
    the layers' parallel region: each distinct `prange` is one more gufunc, ~1 s of a cold compile.
    Small batches compute the tile's z^T = W_l[c0:c1] @ a_{l-1}.T into the scratch S (same
    layout as Z) and transpose it back: BLAS runs that order much faster when nb is small.
    With `pending`, the previous step's optimizer update (coefficients `coef`, step count `t`) is
    applied first, tile by tile, to the rows of W_l and b_l that the tile's GEMM then reads while
    they are still in cache: no separate pass over the parameters. With nb = 0 it applies only that
    update (the last step's, at the end of `run_steps`).
    """
    L = sizes.size - 1
    for l in range(-1, L):
        tiles = parts if l < 0 else n_tiles(sizes[l + 1])
        for tile in prange(tiles):
            if l < 0:
                lo, hi = chunk(nb, parts, np.int64(tile), ONE)
                _gather(X, mean, inv_std, perm, p0, lo, hi, xb, labels, yb, targets, tb, weights, wb)
            else:
                _forward_tile(l, np.int64(tile), tiles, nb, xb, theta, sizes, woff, boff, hoff, fwd, drop,
                              seed, step, Z, A, S, pending, opt_kind, grad, opt_state, coef, hyper, t)


@numba.njit(**JIT)
def _forward_tile(l, tile, tiles, nb, xb, theta, sizes, woff, boff, hoff, fwd, drop, seed, step,
                  Z, A, S, pending, opt_kind, grad, opt_state, coef, hyper, t):
    """Tile `tile` of layer l's forward: its columns c0..c1 of z_l and a_l (see `forward`)."""
    L = sizes.size - 1
    nin, nout = sizes[l], sizes[l + 1]
    src, soff = (xb, 0) if l == 0 else (A, hoff[l - 1])
    c0, c1 = chunk(nout, tiles, np.int64(tile), LINE)
    if c1 <= c0:
        return
    if pending:
        update_range(opt_kind, theta, grad, opt_state, woff[l] + c0 * nin, woff[l] + c1 * nin,
                     coef, hyper, t)
        update_range(opt_kind, theta, grad, opt_state, boff[l] + c0, boff[l] + c1, coef, hyper, t)
    if nb < SMALL_BATCH:
        # (c1-c0, nb) = W_l[c0:c1] @ a_{l-1}.T, then transposed into z's columns
        so = hoff[l] + c0 * nb
        gemm(NO, YES, c1 - c0, nb, nin, 1.0, theta, woff[l] + c0 * nin, nin,
             src, soff, nin, 0.0, S, so, nb)
        for r in range(nb):
            z = Z[hoff[l] + r * nout + c0:hoff[l] + r * nout + c1]
            for j in range(z.size):
                z[j] = S[so + j * nb + r]
    else:
        # (nb, c1-c0) = (nb, nin) @ W_l[c0:c1].T
        gemm(NO, YES, nb, c1 - c0, nin, 1.0, src, soff, nin,
             theta, woff[l] + c0 * nin, nin, 0.0, Z, hoff[l] + c0, nout)
    call_forward_block(fwd[l], Z, A, hoff[l], 0, nb, nout, c0, c1, theta, boff[l])
    if l < L - 1 and drop[l] > 0.0:
        _dropout(A, hoff[l], 0, nb, nout, c0, c1, seed, step, l, drop[l])


@numba.njit(**JIT)
def loss_delta(kind, nb, out_grd, k, off, Z, A, D, yb, tb, inv, w, rowloss, correct):
    """Per-row loss and the output delta dL/dz_out for rows 0..nb (`inv`, `w`: see kernels/loss.py).
    Serial: it is O(nb k) next to the output layer's O(nb k n_in) products, and as a parallel
    region it cost more to start (and ~2 s more to compile) than it saved (batch 512, 10 classes:
    30 us on 2 threads, 40 on 1)."""
    if kind == CROSS_ENTROPY:
        cross_entropy_rows(Z, D, off, k, 0, nb, inv, w, yb, rowloss, correct)
    else:
        mse_rows(A, D, off, k, 0, nb, inv, w, tb, rowloss)
        call_grad_block(out_grd, Z, D, off, 0, nb, k, 0, k)


@numba.njit(**PJIT)
def backward(nb, xb, theta, grad, sizes, woff, boff, hoff, grd, drop, seed, step, Z, A, D, sq):
    """dW_l = delta_l.T @ a_{l-1}, db_l = sum(delta_l), delta_{l-1} = (delta_l @ W_l) * f'(z_{l-1}).

    Layer l is split into T tiles (T from the shapes only); tile t computes one share of
    dW_l's rows and one share of delta_{l-1}'s columns, so the tiles cost about the same and a
    static split of them over threads is balanced. sq[l, t] gets the squared norm of tile t's
    share of layer l's gradient (clipping, NaN checks).
    """
    L = sizes.size - 1
    for l in range(L - 1, -1, -1):
        nin, nout = sizes[l], sizes[l + 1]
        src, soff = (xb, 0) if l == 0 else (A, hoff[l - 1])
        tiles = n_tiles(max(nout, nin) if l > 0 else nout)
        for tile in prange(tiles):
            r0, r1 = chunk(nout, tiles, np.int64(tile), np.int64(4))
            if r1 > r0:
                # (r1-r0, nin) = delta_l[:, r0:r1].T @ a_{l-1}
                gemm(YES, NO, r1 - r0, nin, nb, 1.0, D, hoff[l] + r0, nout,
                     src, soff, nin, 0.0, grad, woff[l] + r0 * nin, nin)
                db = grad[boff[l] + r0:boff[l] + r1]  # column sums of delta, row after row
                db[:] = 0.0
                for i in range(nb):
                    d = D[hoff[l] + i * nout + r0:hoff[l] + i * nout + r1]
                    for j in range(db.size):
                        db[j] += d[j]
                sq[l, tile] = _sumsq(grad[woff[l] + r0 * nin:woff[l] + r1 * nin]) + \
                    _sumsq(grad[boff[l] + r0:boff[l] + r1])
            if l > 0:
                c0, c1 = chunk(nin, tiles, np.int64(tile), LINE)
                if c1 > c0:
                    # (nb, c1-c0) = delta_l @ W_l[:, c0:c1]
                    gemm(NO, NO, nb, c1 - c0, nout, 1.0, D, hoff[l], nout,
                         theta, woff[l] + c0, nin, 0.0, D, hoff[l - 1] + c0, nin)
                    call_grad_block(grd[l - 1], Z, D, hoff[l - 1], 0, nb, nin, c0, c1)
                    if drop[l - 1] > 0.0:
                        _dropout(D, hoff[l - 1], 0, nb, nin, c0, c1, seed, step, l - 1, drop[l - 1])


@numba.njit(**JIT)
def run_steps(parts, X, mean, inv_std, labels, targets, weights, perm, pos0, n_steps, cap,
              sizes, woff, boff, hoff, fwd, grd, drop, seed, step0,
              theta, grad, opt_kind, opt_state, hyper, lrs, clip, loss_kind,
              xb, yb, tb, wb, Z, A, D, rowloss, correct, sq, step_loss, step_correct):
    """Run n_steps minibatch steps from position pos0 of the epoch's permutation.

    1) forward: gather, then the layers (applying the previous step's update on the way)
    2) loss + output delta  3) backward  4) clip and check; the last step's update is applied before returning.
    Returns the number of steps completed; fewer than n_steps means step `returned` produced a
    non-finite loss or gradient, and its update was not applied (theta is still the last good one).

    `weights` (one per row of X, or empty): sample weights. A batch's loss is then
    sum(w_i loss_i) / sum(w_i), its gradient that of this loss, and step_correct[s] its weighted
    accuracy times its rows (so rows-weighted sums over steps, as for the loss, give the epoch's).
    Without them the loss is the batch mean and step_correct[s] the count of correct rows.
    """
    n = perm.size
    L = sizes.size - 1
    k = sizes[L]
    weighted = weights.size > 0
    coef = np.zeros(10, theta.dtype)
    pending = False  # the last step's update, applied inside the next forward pass or at the end
    for s in range(n_steps):
        p0 = pos0 + s * cap
        nb = min(cap, n - p0)
        step = step0 + s
        forward(parts, X, mean, inv_std, perm, p0, labels, yb, targets, tb, weights, wb,
                nb, xb, theta, sizes, woff, boff, hoff, fwd, drop, seed, step, Z, A, D,
                pending, opt_kind, grad, opt_state, coef, hyper, step)
        inv = 1.0 / nb
        if weighted:
            wsum = 0.0
            for i in range(nb):
                wsum += wb[i]
            inv = 1.0 / wsum if wsum > 0.0 else 0.0  # a batch of zero weights: no data gradient
        pending = False
        loss_delta(loss_kind, nb, grd[L - 1], k, hoff[L - 1], Z, A, D, yb, tb, inv, wb[:nb] if weighted else
                   wb[:0], rowloss, correct)
        total = 0.0
        hits = 0.0
        for i in range(nb):
            total += rowloss[i]
            hits += correct[i] * wb[i] if weighted else correct[i]
        if weighted:
            step_loss[s] = total * inv
            step_correct[s] = min(hits * inv, 1.0) * nb  # <= nb, as a resumed state is checked to be
        else:
            step_loss[s] = total / nb
            step_correct[s] = hits
        if not math.isfinite(total):
            return s
        sq[:] = 0.0
        backward(nb, xb, theta, grad, sizes, woff, boff, hoff, grd, drop, seed, step, Z, A, D, sq)
        norm = math.sqrt(sq.sum())  # a fixed order: layer by layer, tile by tile
        if not math.isfinite(norm):
            return s
        gscale = 1.0
        if clip > 0.0:
            gscale = min(1.0, clip / (norm + 1e-6))
        coefficients(coef, opt_kind, lrs[s], gscale, hyper, step + 1)
        pending = True
    if pending:  # the last step's update: a forward pass of no rows applies only that
        none = np.int64(0)  # typed, not a literal 0: a literal argument compiles forward a second time
        forward(parts, X, mean, inv_std, perm, none, labels, yb, targets, tb, weights, wb,
                none, xb, theta, sizes, woff, boff, hoff, fwd, drop, seed, step0 + n_steps, Z, A, D,
                YES, opt_kind, grad, opt_state, coef, hyper, step0 + n_steps)
    return n_steps


@numba.njit(**JIT)
def outputs(Z, A, off, nb, k, loss_kind, out, p0):
    """out[p0:p0+nb] = the output layer's rows 0..nb after `forward`: softmax probabilities
    (cross-entropy) or the output activation (mse). Prediction is a Python loop over batches of
    forward (which gathers) and this (compute/engine.py `Engine.predict`): a compiled loop would link
    forward's code into one more function, seconds more of a cold compile for nothing."""
    for i in range(nb):
        r = off + i * k
        if loss_kind == CROSS_ENTROPY:
            zmax = Z[r]
            for j in range(1, k):
                zmax = max(zmax, Z[r + j])
            s = 0.0
            for j in range(k):
                s += math.exp(Z[r + j] - zmax)
            for j in range(k):
                out[p0 + i, j] = math.exp(Z[r + j] - zmax) / s
        else:
            for j in range(k):
                out[p0 + i, j] = A[r + j]
