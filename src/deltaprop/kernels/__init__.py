"""Numba kernels: arrays in, arrays out. No Python objects, no I/O, no deltaprop imports.

- `_config`  JIT flags in one place.
- `blas`     row-major GEMM into OpenBLAS from compiled code (pointer + leading dimension).
- `loss`     softmax cross-entropy and mean squared error, fused with their deltas.
- `optim`    flat-vector SGD / Adam / AdamW updates with torch.optim's rules.
- `network`  forward, backward and whole runs of minibatch steps; a template compiled once
             per set of activations by `deltaprop.plugins.compile`.
"""
