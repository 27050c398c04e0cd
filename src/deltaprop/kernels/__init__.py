"""Numba kernels: arrays in, arrays out. No Python objects, no I/O, no deltaprop imports.

- `_config`  JIT flags in one place.
- `blas`     row-major GEMM into OpenBLAS from compiled code (pointer + leading dimension).
- `loss`     softmax cross-entropy and mean squared error, fused with their deltas.
- `optim`    flat-vector SGD / Adam / AdamW updates with torch.optim's rules.
- `network`  forward, backward and whole runs of minibatch steps; a template compiled once
             per set of activations by `deltaprop.compute.factory`.
"""

import os

# Numba's OpenMP threads wait for the next parallel region by spinning (libgomp's default spin
# count is 300,000). A step is ~9 short regions, so waiting threads spin most of the time; when
# another process wants the core, that spinning steals it. 10,000 spins (~10-20 us) still cover
# the gap between regions on an idle machine (median of 3 runs, 2 cores, 784-256-128-10 SGD,
# samples/s at batch 32/128/512: default 52k/93k/107k, 10k spins 56k/103k/118k). Read by
# libgomp when Numba first starts its threads, so it must be set before any parallel kernel runs.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
