"""What the benchmark measures, shared by the driver and the worker processes.

The systems and their labels, the network (784-256-128-10, SGD lr 0.01, fixed seed), the targets
(minimum deltaprop/peer ratios per batch size and the share of the GEMM peak), the scaling sweeps,
the FLOP count of one sample, and the small parsing helpers both sides of the worker protocol use.
Nothing here imports NumPy or a peer library: importing it costs nothing and sets no threads.

    from spec import SYSTEMS, HIDDEN, flops_per_sample, parse_ints   # with bench/ on sys.path
"""

import os
import statistics

SYSTEMS = ("deltaprop", "jax_scan", "jax_step", "pytorch", "torch_compile", "numpy", "sklearn")
PEERS = SYSTEMS[1:]
LABELS = {"deltaprop": "deltaprop", "jax_scan": "JAX scan", "jax_step": "JAX step", "pytorch": "PyTorch",
          "torch_compile": "torch.compile", "numpy": "NumPy loop", "sklearn": "sklearn"}
SHORT = {"deltaprop": "dp", "jax_scan": "JAXscan", "jax_step": "JAXstep", "pytorch": "PyTorch",
         "torch_compile": "compile", "numpy": "NumPy", "sklearn": "sklearn"}
MODULE = {"deltaprop": "deltaprop", "jax_scan": "jax", "jax_step": "jax", "pytorch": "torch",
          "torch_compile": "torch", "numpy": "numpy", "sklearn": "sklearn"}
DIST = {"deltaprop": "deltaprop", "jax_scan": "jax", "jax_step": "jax", "pytorch": "torch",
        "torch_compile": "torch", "numpy": "numpy", "sklearn": "scikit-learn"}
# the systems that train on the same init, the same order and the same loss as deltaprop (their
# last-batch losses are compared); scikit-learn has its own init and shuffle
SAME_RUN = SYSTEMS[:-1]
DTYPE_SYSTEMS = SAME_RUN  # the systems with a --dtype float64

N_IN, N_OUT, LR, SEED = 784, 10, 0.01, 1234
HIDDEN = (256, 128)
# targets: batch -> minimum deltaprop/peer ratio; and the share of the GEMM peak at batch 512
TARGETS = {32: {"jax_scan": 1.2, "pytorch": 2.0, "numpy": 1.3},
           128: {"jax_scan": 1.2, "pytorch": 1.3, "numpy": 1.1},
           512: {"jax_scan": 1.2, "pytorch": 1.1, "numpy": 1.0}}
PEAK_TARGET_BATCH, PEAK_TARGET = 512, 0.85
WIDE = (4096, 4096)


def sections(quick: bool, batch_sizes, samples: int) -> dict:
    """name -> what one section measures: hidden sizes, dtype, batch sizes, samples per epoch,
    its systems, targets {batch: {peer: ratio}} and peak target (batch, fraction) or None."""
    b128 = [128]
    return {
        "float32": {"title": "float32", "hidden": list(HIDDEN), "dtype": "float32", "batches": list(batch_sizes),
                    "samples": samples, "systems": list(SYSTEMS), "targets": TARGETS,
                    "peak_target": [PEAK_TARGET_BATCH, PEAK_TARGET]},
        "float64": {"title": "float64", "hidden": list(HIDDEN), "dtype": "float64", "batches": b128,
                    "samples": samples, "systems": list(DTYPE_SYSTEMS), "targets": {128: {"jax_scan": 1.2}},
                    "peak_target": None},
        "wide": {"title": "wide float32", "hidden": [256, 256] if quick else list(WIDE), "dtype": "float32",
                 "batches": b128, "samples": 512 if quick else 4096, "systems": list(DTYPE_SYSTEMS),
                 "targets": {128: {"jax_scan": 1.2}}, "peak_target": None},
    }


# --threads-scaling: these systems, at 1, 2, ... cores, on the float32 net
THREAD_SCALING_SYSTEMS = ("deltaprop", "jax_scan", "pytorch")
SCALING_WIDTHS = (128, 512, 1024, 2048, 4096)
SCALING_BATCHES = (32, 64, 128, 256, 512, 1024)


def flops_per_sample(sizes) -> int:
    """GEMM FLOPs one sample needs: forward and dW for every layer, dX for all but the first."""
    prods = [sizes[i] * sizes[i + 1] for i in range(len(sizes) - 1)]
    return 2 * sum(prods) + 2 * sum(prods) + 2 * sum(prods[1:])


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_ints(s: str) -> list[int]:
    return [int(v) for v in str(s).split(",") if v.strip()]


def parse_hidden(s: str) -> list[list[int]]:
    """'256,128;512' -> [[256, 128], [512]]."""
    return [parse_ints(h) for h in str(s).split(";") if h.strip()]


def median(xs):
    """The median, or None for no values (a system that was skipped or failed)."""
    return statistics.median(xs) if xs else None
