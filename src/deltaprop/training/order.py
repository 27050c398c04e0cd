"""Which training rows an epoch visits, in which order.

An epoch's order is a pure function of the shuffling RNG state at the epoch's start, which every
checkpoint carries: a resumed run draws the very permutation the interrupted one was in.

    order = EpochOrder(train_idx, seed=0, shuffle=True, block=0)
    rows, next_state = order.draw(state)      # next_state: the RNG state for the next epoch
"""

import numpy as np

from ..io.datasets import prefetch_rows


class EpochOrder:
    def __init__(self, train_idx: np.ndarray, seed: int, shuffle: bool, block: int):
        self.train_idx, self.seed, self.shuffle, self.block = train_idx, seed, shuffle, block

    def initial_state(self) -> dict:
        """The RNG state of the first epoch."""
        return np.random.default_rng(self.seed).bit_generator.state

    def draw(self, state: dict) -> tuple[np.ndarray, dict]:
        """(training rows in this epoch's order, the RNG state after drawing them).

        block = N > 0 shuffles blocks of N consecutive rows, then the rows within each block:
        every block is read from one contiguous stretch of the file, so a memory-mapped dataset
        larger than RAM streams instead of faulting in one random page per row."""
        rng = np.random.default_rng(self.seed)
        rng.bit_generator.state = state
        n, block = len(self.train_idx), self.block
        if not self.shuffle:
            order = np.arange(n)
        elif block:
            starts = np.arange(0, n, block)[rng.permutation((n + block - 1) // block)]
            order = np.concatenate([s + rng.permutation(min(block, n - s)) for s in starts])
        else:
            order = rng.permutation(n)
        return self.train_idx[order], rng.bit_generator.state


def prefetch_blocks(X: np.ndarray, rows: np.ndarray, block: int) -> None:
    """Memory-mapped data shuffled by blocks: have the kernel read the blocks these rows (the
    next chunk's, and the block after) fall in now, each as one sequential read, instead of
    faulting in one page per row in shuffled order. (Rows in file order need nothing: the kernel
    reads ahead itself.)"""
    keys = rows // block
    for k in np.unique(keys):
        part = rows[keys == k]
        prefetch_rows(X, int(part.min()), int(part.max()) + 1)
