"""The bridge to compiled code: `Engine` (buffers, threads, calls into the kernels) and the kernel
factory that compiles the network template for a set of activations. Numba is imported here."""
