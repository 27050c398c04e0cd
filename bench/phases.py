"""Where a training step's time goes: each compiled phase timed on its own.

    .venv/bin/python bench/phases.py [--batch 32,128,512] [--threads 2] [--sizes 784,256,128,10]
                                     [--dtype float32] [--peak GFLOP/s]

Calls the network kernels' phases (forward, which gathers the minibatch first, with and without
the pending optimizer update; loss; backward; the update alone; the forward's parallel regions
with no rows) directly, many times each, and reports the 10th percentile in microseconds: on a
shared machine the low percentile is what the code costs, the median is what the neighbours cost.
`empty` is the price of the forward's 1 + layers parallel regions; a step has 1 + 2 x layers.

Against the FLOP floor: the forward (2 x batch x sum of n_in x n_out) and the backward (the dW
products of every layer and the dX products of all but the first) each take at least
FLOPs / peak; the GEMM peak is measured first in the same dtype on the same pinned cores
(`bench.py --worker gemm`, in its own process) unless `--peak` gives it. Each line ends with
each product phase's floor and the share of the peak it reaches, and what the rest of a step
(the loss) costs on top.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _p10_us(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.percentile(ts, 10) * 1e6)


def phases(sizes: list[int], batch: int, threads: int, reps: int = 200, dtype: str = "float32") -> dict[str, float]:
    from deltaprop.compute.engine import Engine, OptimizerSpec
    from deltaprop.plugins.manager import load_registry

    rng = np.random.default_rng(0)
    n = max(4 * batch, 256)
    X = rng.random((n, sizes[0]), dtype=np.float32).astype(dtype)
    y = rng.integers(0, sizes[-1], n)
    acts = ["relu"] * (len(sizes) - 2) + ["identity"]
    e = Engine(sizes, acts, "cross_entropy", dtype, load_registry(entry_points=False), threads)
    theta = (rng.standard_normal(e.n_params) * 0.05).astype(dtype)
    grad = np.zeros_like(theta)
    state = np.zeros((2, theta.size), dtype)
    mean, inv_std = np.zeros(sizes[0], dtype), np.ones(sizes[0], dtype)
    perm = rng.permutation(n)
    opt = OptimizerSpec("sgd")
    e.run_steps(X, mean, inv_std, y, perm, 0, 2, batch, theta, grad, opt, state, np.zeros(2), 0)
    k, P, L = e.kernels, e.threads, e.L
    fwd, grd = e.blocks()
    labels, targets = e._targets(y)
    drop, coef, hyper = np.zeros(L), np.zeros(10, dtype), opt.hyper()  # lr 0: theta stays
    no_w = np.zeros(0)  # no sample weights

    def forward(pending, nb=batch):
        return lambda: k.forward(P, X, mean, inv_std, perm, 0, labels, e.yb, targets, e.tb, no_w, e.wb,
                                 nb, e.xb, theta, e.sizes, e.woff, e.boff, e.hoff, fwd, drop, 0, 0,
                                 e.Z, e.A, e.D, pending, 0, grad, state, coef, hyper, 2)

    out = {
        "forward": forward(False),
        "forward+update": forward(True),
        "loss": lambda: k.loss_delta(0, batch, grd[L - 1], sizes[-1], e.hoff[L - 1], e.Z, e.A, e.D,
                                 e.yb, e.tb, 1.0 / batch, no_w, e.rowloss, e.correct),
        "backward": lambda: k.backward(batch, e.xb, theta, grad, e.sizes, e.woff, e.boff, e.hoff, grd,
                                       drop, 0, 0, e.Z, e.A, e.D, e.sq),
        "update": forward(True, 0),  # no rows: the whole-vector update alone, in the layers' regions
        "empty": forward(False, 0),  # no rows, no update: the price of the L + 1 parallel regions
    }
    res = {name: _p10_us(fn, reps) for name, fn in out.items()}
    res["step"] = res["forward+update"] + res["loss"] + res["backward"]
    return res


def product_flops(sizes: list[int], batch: int) -> dict[str, int]:
    """GEMM FLOPs of one step's forward and backward products."""
    prods = [sizes[i] * sizes[i + 1] for i in range(len(sizes) - 1)]
    return {"forward": 2 * batch * sum(prods), "backward": 2 * batch * (sum(prods) + sum(prods[1:]))}


def measure_peak(threads: int, dtype: str) -> float:
    """The GEMM peak in GFLOP/s, from a `bench.py --worker gemm` process on the same cores."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), "--worker", "gemm", "--threads",
                          str(threads), "--dtype", dtype], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["gflops"]


def floor_note(r: dict, sizes: list[int], batch: int, peak: float) -> str:
    """Each product phase's FLOP floor at `peak` and the share of the peak it reaches; the rest."""
    fl = product_flops(sizes, batch)
    parts = []
    for name, key in (("forward", "forward+update"), ("backward", "backward")):
        floor_us = fl[name] / (peak * 1e3)
        parts.append(f"{name} floor {floor_us:.0f} us ({floor_us / r[key]:.0%} of peak)")
    floor_step = (fl["forward"] + fl["backward"]) / (peak * 1e3)
    rest = r["step"] - r["forward+update"] - r["backward"]
    return (f"at {peak:.0f} GFLOP/s: " + ", ".join(parts) +
            f", loss {rest:.0f} us; step floor {floor_step:.0f} us ({floor_step / r['step']:.0%} of peak)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="32,128,512")
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--sizes", default="784,256,128,10")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--peak", type=float, default=None, help="GEMM peak in GFLOP/s (default: measure it)")
    a = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    import procinfo
    threads = a.threads or len(os.sched_getaffinity(0))
    procinfo.pin_cores(threads)  # the same cores as bench.py's workers
    peak = a.peak or measure_peak(threads, a.dtype)
    sizes = [int(v) for v in a.sizes.split(",")]
    for b in (int(v) for v in a.batch.split(",")):
        r = phases(sizes, b, threads, a.reps, a.dtype)
        cols = " ".join(f"{name} {us:.0f}" for name, us in r.items())
        print(f"batch {b}: {cols} (us, p10) -> {b / r['step'] * 1e3:.1f}k samples/s; "
              f"{floor_note(r, sizes, b, peak)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
