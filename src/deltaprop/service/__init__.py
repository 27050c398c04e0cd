"""Service layer: config, data, trainer, checkpoint, queue, runner, evaluate (no Numba kernels here)."""
