"""Where a training step's time goes: each compiled phase timed on its own.

    .venv/bin/python bench/phases.py [--batch 32,128,512] [--threads 2] [--sizes 784,256,128,10]

Calls the network kernels' phases (gather, forward with and without the pending optimizer
update, loss, backward, a whole-vector update, an empty parallel region) directly, many times
each, and reports the 10th percentile in microseconds: on a shared machine the low percentile
is what the code costs, the median is what the neighbours cost. `empty` is the price of one
parallel region; a step has 1 + 2 x layers of them.
"""

import argparse
import time

import numpy as np


def _p10_us(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.percentile(ts, 10) * 1e6)


def phases(sizes: list[int], batch: int, threads: int, reps: int = 200) -> dict[str, float]:
    from deltaprop.plugins.manager import load_registry
    from deltaprop.compute.engine import Engine, OptimizerSpec

    rng = np.random.default_rng(0)
    n = max(4 * batch, 256)
    X = rng.random((n, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], n)
    acts = ["relu"] * (len(sizes) - 2) + ["identity"]
    e = Engine(sizes, acts, "cross_entropy", "float32", load_registry(entry_points=False), threads)
    theta = (rng.standard_normal(e.n_params) * 0.05).astype(np.float32)
    grad = np.zeros_like(theta)
    state = np.zeros((2, theta.size), np.float32)
    mean, inv_std = np.zeros(sizes[0], np.float32), np.ones(sizes[0], np.float32)
    perm = rng.permutation(n)
    opt = OptimizerSpec("sgd")
    e.run_steps(X, mean, inv_std, y, perm, 0, 2, batch, theta, grad, opt, state, np.zeros(2), 0)
    k, P, L = e.kernels, e.threads, e.L
    labels, targets = e._targets(y)
    drop, coef, hyper = np.zeros(L), np.zeros(10, np.float32), opt.hyper()  # lr 0: theta stays
    no_w = np.zeros(0)  # no sample weights

    def forward(pending):
        return lambda: k.forward(batch, e.xb, theta, e.sizes, e.woff, e.boff, e.hoff, e.act_ids, drop, 0, 0,
                                 e.Z, e.A, e.D, pending, 0, grad, state, coef, hyper, 2)

    out = {
        "gather": lambda: k.gather(P, X, mean, inv_std, perm, 0, batch, e.xb, labels, e.yb, targets, e.tb,
                                    no_w, e.wb),
        "forward": forward(False),
        "forward+update": forward(True),
        "loss": lambda: k.loss_delta(0, batch, e.act_ids[L - 1], sizes[-1], e.hoff[L - 1], e.Z, e.A, e.D,
                                 e.yb, e.tb, 1.0 / batch, no_w, e.rowloss, e.correct),
        "backward": lambda: k.backward(batch, e.xb, theta, grad, e.sizes, e.woff, e.boff, e.hoff, e.act_ids,
                                       drop, 0, 0, e.Z, e.A, e.D, e.sq),
        "update": lambda: k.apply(P, 0, theta, grad, state, coef, hyper, 2),
        "empty": lambda: k.apply(P, 0, theta[:0], grad[:0], state[:, :0], coef, hyper, 2),
    }
    res = {name: _p10_us(fn, reps) for name, fn in out.items()}
    res["step"] = res["gather"] + res["forward+update"] + res["loss"] + res["backward"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="32,128,512")
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--sizes", default="784,256,128,10")
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args(argv)
    sizes = [int(v) for v in a.sizes.split(",")]
    for b in (int(v) for v in a.batch.split(",")):
        r = phases(sizes, b, a.threads, a.reps)
        cols = " ".join(f"{name} {us:.0f}" for name, us in r.items())
        print(f"batch {b}: {cols} (us, p10) -> {b / r['step'] * 1e3:.1f}k samples/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
