"""The Python side of the kernels: shapes, buffers, threads, and the calls into compiled code.

An `Engine` is one network shape (layer sizes, activation per layer, loss, dtype) bound to the
kernels compiled for its activations. It owns the preallocated per-step buffers; the trainer,
evaluation and the tests drive it. Parameters live in one flat vector (see kernels/network.py);
`layer_views` gives (W, b) views into it without copies (compute/layout.py).
"""

from dataclasses import dataclass

import numba
import numpy as np

from .._system import cores
from ..kernels.network import CROSS_ENTROPY, MSE
from ..kernels.optim import ADAM, ADAMW, N_HYPER, SGD
from ..plugins.manager import Registry
from . import layout

LOSSES = {"cross_entropy": CROSS_ENTROPY, "mse": MSE}  # names (training.loss) -> kernel codes
OPTIMIZERS = {"sgd": SGD, "adam": ADAM, "adamw": ADAMW}


@dataclass(frozen=True)
class OptimizerSpec:
    """torch.optim-compatible hyperparameters (lr comes per step from the schedule)."""

    name: str = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def hyper(self) -> np.ndarray:
        """(N_HYPER,) in the order kernels/optim.py reads them."""
        h = np.array([self.momentum, self.dampening, float(self.nesterov), self.weight_decay,
                      self.betas[0], self.betas[1], self.eps], dtype=np.float64)
        assert h.shape == (N_HYPER,)
        return h


class Engine:
    """A compiled MLP: sizes [n_in, h1, ..., n_out], one activation name per dense layer (the
    last is the output activation: 'identity' for cross-entropy)."""

    def __init__(self, sizes, activations, loss, dtype, registry: Registry, threads: int = 0,
                 training: bool = True):
        """`training=False`: forward only (predict, evaluate), so an activation whose derivative fails
        its check is usable: the derivative is never called."""
        from .factory import network_kernels

        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.L = len(self.sizes) - 1
        if len(activations) != self.L:
            raise ValueError(f"need {self.L} activations, got {len(activations)}")
        self.activations = list(activations)
        self.loss = loss
        self.loss_kind = LOSSES[loss]
        self.dtype = np.dtype(dtype)
        get = registry.require_checked if training else registry.get
        self._acts = {n: get(n) for n in dict.fromkeys(self.activations)}
        self.kernels = network_kernels()
        self._blocks: list | None = None  # each activation's compiled blocks, at the first call
        self.threads = max(1, min(threads or cores(), numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(self.threads)
        self.woff, self.boff, self.n_params = layout.offsets(self.sizes)
        self._cap = 0

    # ---- parameters ------------------------------------------------------------------------
    def layer_views(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(W (out, in), b (out,))] views into the flat vector."""
        return layout.layer_views(theta, self.sizes)

    def flatten(self, layers) -> np.ndarray:
        return layout.flatten(layers, self.dtype)

    # ---- compiled code ---------------------------------------------------------------------
    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """(fwd, grd): each layer's forward and grad block addresses (kernels/blocks.py), their
        C callbacks compiled or loaded from the cache at the first call."""
        if self._blocks is None:
            from .factory import activation_blocks
            modules = {n: activation_blocks(act, self.dtype) for n, act in self._acts.items()}
            self._blocks = [modules[n] for n in self.activations]
            self._fwd = np.array([m.forward_block.address for m in self._blocks], np.int64)
            self._grd = np.array([m.grad_block.address for m in self._blocks], np.int64)
        return self._fwd, self._grd

    def compiled(self) -> list:
        """The Numba dispatchers and C callbacks this engine has called (their cache statistics
        say whether they were compiled or loaded)."""
        blocks = [f for m in self._blocks or () for f in (m.forward_block, m.grad_block)]
        k = self.kernels
        return [k.run_steps, k.forward, k.outputs, *blocks]

    def compile_helper(self):
        """A second process compiling the kernels run_steps calls after forward, when they are not
        cached (compute/compile_helper.py), or None; end it with compile_helper.stop."""
        from .compile_helper import start
        return start(self.kernels, self.dtype, self.threads)

    # ---- buffers ---------------------------------------------------------------------------
    def _buffers(self, cap: int):
        if cap != self._cap:
            dt, width = self.dtype, int(self.sizes[1:].sum())
            self.hoff = np.array([cap * int(self.sizes[1:l + 1].sum()) for l in range(self.L)])
            self.xb = np.zeros(cap * int(self.sizes[0]), dt)
            self.yb = np.zeros(cap, np.int64)
            self.tb = np.zeros((cap, int(self.sizes[-1])), dt)
            self.wb = np.zeros(cap, np.float64)
            self.Z, self.A, self.D = (np.zeros(cap * width, dt) for _ in range(3))
            self.rowloss = np.zeros(cap, np.float64)
            self.correct = np.zeros(cap, np.int64)
            from ..kernels.network import MAX_TILES
            self.sq = np.zeros((self.L, MAX_TILES), np.float64)
            self._cap = cap

    def _targets(self, y):
        """(labels, targets) arrays for the kernel: one of them is empty."""
        k = int(self.sizes[-1])
        if self.loss_kind == 0:
            return np.ascontiguousarray(y, dtype=np.int64), np.zeros((0, k), self.dtype)
        return np.zeros(0, np.int64), np.ascontiguousarray(np.asarray(y, self.dtype).reshape(len(y), k))

    # ---- calls into compiled code ----------------------------------------------------------
    def run_steps(self, X, mean, inv_std, y, perm, pos, n_steps, batch_size, theta, grad,
                  opt: OptimizerSpec, opt_state, lrs, step0, *, seed=0, dropout=None, clip=0.0,
                  weights=None):
        """Run n_steps minibatches of the permutation from `pos`. Returns (done, step_loss,
        step_correct); done < n_steps means step `done` was non-finite and not applied.
        `weights`: (len(X),) sample weights >= 0 (None: every row counts once); each batch's loss
        is then sum(w * loss) / sum(w) (kernels/network.py `run_steps`), and step_correct holds
        each batch's weighted accuracy times its rows instead of its count of correct rows."""
        self._buffers(batch_size)
        labels, targets = self._targets(y)
        if weights is None:
            w = np.zeros(0)
        else:
            w = np.ascontiguousarray(weights, np.float64)
            if w.shape != (len(X),):
                raise ValueError(f"weights need shape ({len(X)},), got {w.shape}")
        drop = np.zeros(self.L) if dropout is None else np.asarray(dropout, np.float64)
        if drop.shape != (self.L,) or not ((drop >= 0) & (drop < 1)).all():
            raise ValueError(f"dropout needs {self.L} rates in [0, 1), got {drop}")
        fwd, grd = self.blocks()
        numba.set_num_threads(self.threads)  # per OS thread: another Engine may have changed it
        step_loss = np.zeros(n_steps)
        step_correct = np.zeros(n_steps, np.float64)
        done = self.kernels.run_steps(
            self.threads, X, mean, inv_std, labels, targets, w, perm, pos, n_steps, batch_size,
            self.sizes, self.woff, self.boff, self.hoff, fwd, grd, drop, seed, step0,
            theta, grad, OPTIMIZERS[opt.name], opt_state, opt.hyper(),
            np.ascontiguousarray(lrs, np.float64), float(clip), self.loss_kind,
            self.xb, self.yb, self.tb, self.wb, self.Z, self.A, self.D, self.rowloss, self.correct,
            self.sq, step_loss, step_correct)
        return int(done), step_loss, step_correct

    def gradient(self, X, y, theta, weights=None) -> tuple[float, np.ndarray]:
        """(loss, dL/dtheta) over all of X as one batch, theta unchanged (an SGD step, lr 0)."""
        n = len(X)
        grad = np.zeros_like(theta)
        scratch = theta.copy()
        d = X.shape[1]
        done, loss, _ = self.run_steps(
            X, np.zeros(d, self.dtype), np.ones(d, self.dtype), y, np.arange(n), 0, 1, n,
            scratch, grad, OptimizerSpec(), np.zeros((2, theta.size), self.dtype), [0.0], 0, weights=weights)
        return float(loss[0]), grad

    def predict(self, X, mean, inv_std, theta, batch_size=1024) -> np.ndarray:
        """(n, n_out) softmax probabilities (cross-entropy) or outputs (mse), in self.dtype: forward
        (gathering in order; no dropout, no pending update) batch by batch, with run_steps' own argument
        types, so predicting compiles nothing that training has not."""
        self._buffers(batch_size)
        fwd, _ = self.blocks()
        numba.set_num_threads(self.threads)
        k, off, K = int(self.sizes[-1]), int(self.hoff[-1]), self.kernels
        n = len(X)
        out = np.zeros((n, k), self.dtype)
        perm, drop = np.arange(n, dtype=np.int64), np.zeros(self.L)
        no_i, no_f, no_w = np.zeros(0, np.int64), np.zeros((0, 1), self.dtype), np.zeros(0)
        no_state, coef, hyper = np.zeros((2, 0), self.dtype), np.zeros(10, self.dtype), np.zeros(N_HYPER)
        for p0 in range(0, n, batch_size):
            nb = min(batch_size, n - p0)
            K.forward(self.threads, X, mean, inv_std, perm, p0, no_i, no_i, no_f, no_f, no_w, no_w,
                      nb, self.xb, theta, self.sizes, self.woff, self.boff, self.hoff, fwd, drop, 0, 0,
                      self.Z, self.A, self.D, False, 0, theta, no_state, coef, hyper, 0)
            K.outputs(self.Z, self.A, off, nb, k, self.loss_kind, out, p0)
        return out
