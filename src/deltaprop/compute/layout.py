"""The flat parameter vector every kernel works on: for each dense layer l in order, its weights
W_l (out, in) row-major, then its bias b_l (out,). One vector makes the optimizer update, the
gradient norm and a checkpoint one loop each; this module is the only place that knows the offsets.

    woff, boff, n = offsets([784, 256, 10])    # where W_l and b_l start
    for W, b in layer_views(theta, sizes): ...  # (out, in) and (out,) views, no copies
    theta = flatten([(W0, b0), (W1, b1)], dtype)
"""

import numpy as np


def offsets(sizes) -> tuple[np.ndarray, np.ndarray, int]:
    """(start of each W_l, start of each b_l, number of parameters) for layer sizes [n_in, ..., n_out]."""
    woff, boff, o = [], [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        woff.append(o)
        o += int(n_in) * int(n_out)
        boff.append(o)
        o += int(n_out)
    return np.array(woff, dtype=np.int64), np.array(boff, dtype=np.int64), o


def layer_views(theta: np.ndarray, sizes) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W (out, in), b (out,))] views into the flat vector."""
    woff, boff, _ = offsets(sizes)
    return [(theta[w0:w0 + int(n_out) * int(n_in)].reshape(int(n_out), int(n_in)), theta[b0:b0 + int(n_out)])
            for w0, b0, n_in, n_out in zip(woff, boff, sizes[:-1], sizes[1:])]


def flatten(layers, dtype) -> np.ndarray:
    """The flat vector of [(W (out, in), b (out,)), ...]."""
    return np.concatenate([part for W, b in layers for part in (np.ravel(W), np.ravel(b))]).astype(dtype)
