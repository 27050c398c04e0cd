#!/usr/bin/env python3
"""deltaprop vs JAX (step-jitted and whole-epoch lax.scan), PyTorch eager and torch.compile, a
plain-NumPy loop and scikit-learn on one MLP.

    python bench/bench.py                    # float32 at batch 32/128/512, float64 and wide at 128
    python bench/bench.py --sections float32 # one section only
    python bench/bench.py --json             # the same as one JSON object
    python bench/bench.py --threads-scaling  # plus 1, 2, ... N cores: deltaprop vs JAX scan vs PyTorch
    python bench/bench.py --scaling          # plus epoch time vs hidden width and vs batch size
    python bench/bench.py --quick --json     # tiny sizes (the smoke test)

Every system, and the GEMM-peak measurement, runs in its own subprocess
(`bench.py --worker SYSTEM ...`, JSON on stdout) pinned to `--threads` cores with
sched_setaffinity, so that deltaprop pinning the process-wide OpenBLAS to 1 thread never leaks
into the NumPy loop or scikit-learn, torch's thread pool never meets Numba's, and XLA sizes its
pool from the pinned cores. A round runs, per section, the GEMM peak and one worker per system
(a warm-up epoch, then one timed epoch, per batch size); `--repeats` rounds, interleaved, and
medians are reported. Only the epoch is timed: data generation, the epoch's permutation and
model set-up are not.

This file is only the command line, for the driver and (with `--worker`) for the child
processes; its siblings, imported by plain name with bench/ on sys.path, hold the rest:
spec.py what is measured, runners.py and peers.py one system in one process, procinfo.py the
affinity and the threads that ran, rounds.py the processes, rounds and the report dict,
report.py the rows and ratios, tables.py the tables.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # already there when run by path; not when imported from elsewhere
    sys.path.insert(0, HERE)

import rounds  # noqa: E402
import runners  # noqa: E402
import tables  # noqa: E402
from spec import (  # noqa: E402
    HIDDEN,
    SCALING_BATCHES,
    SCALING_WIDTHS,
    SYSTEMS,
    default_threads,
    parse_ints,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--save-json", default=None, metavar="PATH", help="also write the JSON object to PATH")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per system; medians reported (3)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (32,128,512)")
    ap.add_argument("--samples", type=int, default=None, help="samples per epoch (60000)")
    ap.add_argument("--threads", type=int, default=None,
                    help="cores (affinity) and threads for every system (all cores)")
    ap.add_argument("--sections", default="float32,float64,wide",
                    help="comma-separated: float32 (batch 32/128/512), float64 (128), wide (4096x4096, 128)")
    ap.add_argument("--threads-scaling", action="store_true",
                    help="also 1, 2, ... N cores (N = cores available): deltaprop vs JAX scan vs PyTorch")
    ap.add_argument("--threads-batch", type=int, default=128, help="batch size of --threads-scaling (128)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    ap.add_argument("--scaling", action="store_true",
                    help="also report epoch time vs hidden width and vs batch size, deltaprop vs PyTorch")
    ap.add_argument("--scaling-samples", type=int, default=None, help="samples per scaling epoch (10000)")
    ap.add_argument("--gemm-n", type=int, default=None, help="GEMM peak matrix size (2048)")
    # internal: one system in this process
    ap.add_argument("--worker", choices=(*SYSTEMS, "gemm"), help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--hidden", default=",".join(map(str, HIDDEN)), help=argparse.SUPPRESS)
    ap.add_argument("--timed-epochs", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    q = a.quick
    a.explicit_threads = a.threads is not None
    a.max_threads = default_threads()
    a.threads = a.threads or a.max_threads
    a.sections = [v.strip() for v in a.sections.split(",") if v.strip()]
    a.repeats = a.repeats or (1 if q else 3)
    a.samples = a.samples or (1024 if q else 60000)
    a.batch_sizes = a.batch_sizes or ("128" if q else "32,128,512")
    a.gemm_n = a.gemm_n or (256 if q else 2048)
    a.scaling_samples = a.scaling_samples or (512 if q else 10000)
    a.scaling_widths = (32, 64) if q else SCALING_WIDTHS
    a.scaling_batches = (32, 128) if q else SCALING_BATCHES
    a.scaling_batch = 128
    if a.worker is None:
        a.batch_sizes = parse_ints(a.batch_sizes)
    if a.repeats < 1 or a.samples < 1 or a.threads < 1 or (a.worker is None and not a.batch_sizes):
        ap.error("--repeats, --samples, --threads and --batch-sizes must be positive")
    bad = [v for v in a.sections if v not in ("float32", "float64", "wide")]
    if bad or not a.sections:
        ap.error(f"--sections: unknown {bad}; choose from float32, float64, wide")
    return a


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.worker:
        print(json.dumps(runners.worker(opts)))
        return 0
    from rich.console import Console
    err = Console(stderr=True)
    console = Console() if sys.stdout.isatty() else Console(width=200)

    def log(msg):
        if not opts.json:
            err.print(f"[dim]{msg}[/]")

    t0 = time.perf_counter()
    result = rounds.main_bench(opts, log)
    if opts.threads_scaling:
        result["threads_scaling"] = rounds.threads_bench(opts, log)
    if opts.scaling:
        result["scaling"] = rounds.scaling_bench(opts, log)
    result["wall_seconds"] = time.perf_counter() - t0
    if opts.save_json:
        with open(opts.save_json, "w") as f:
            json.dump(result, f, indent=2)
    if opts.json:
        print(json.dumps(result, indent=2))
    else:
        tables.print_table(result, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
