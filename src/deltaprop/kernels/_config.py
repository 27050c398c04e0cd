"""JIT flags for every kernel, in one place.

fastmath deliberately leaves out `nnan`/`ninf` (NaN/Inf checks must survive, the trainer relies on
them to detect divergence) and `afn` (approximate exp/log would break the 1e-10 agreement with the
float64 reference).
"""

FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

# Serial kernels (called from inside parallel regions or on tiny data).
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
# Kernels with a `prange` over thread chunks.
PJIT = dict(JIT, parallel=True)
# C callbacks (the activation blocks, kernels/blocks.py): compiled as they are defined.
CJIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy")
