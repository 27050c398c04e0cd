"""The benchmark's worker side: one system trained for timed epochs in this process.

A runner factory per system (deltaprop's `Engine.run_steps`, PyTorch, a hand-written NumPy loop,
scikit-learn's `MLPClassifier.partial_fit`; the JAX and torch.compile peers are in peers.py)
imports its library, sets its threads and returns `run(X, y, sizes, batch, epochs, clock) ->
last-batch loss per epoch` plus an `info` dict; `clock` (procinfo.EpochClock) is started and
stopped around each epoch by the runner itself, after any asynchronous work has finished.
`worker(args)` is what `bench.py --worker SYSTEM ...` runs in a child process: it pins the
process to `--threads` cores (before importing the library), builds the data in `--dtype`, runs
a warm-up epoch and the timed epochs for every hidden spec x batch size, and returns the dict the
parent reads as JSON from the child's stdout (with the affinity and the threads that really ran);
`--worker gemm` measures NumPy's GEMM peak in `--dtype` instead. Libraries are imported inside
the factories so that only the system being measured is loaded (and sets threads) in its process.

    import runners                       # with bench/ on sys.path, as bench.py has it
    out = runners.worker(args)           # args: bench.parse_args(["--worker", "numpy", ...])
"""

import time

import procinfo
from spec import LR, N_IN, N_OUT, SEED, parse_hidden, parse_ints


def make_data(samples: int, seed: int = SEED, dtype: str = "float32"):
    """X ~ U[0,1) drawn in float32 (so float64 runs see the same values), labels 0..9."""
    import numpy as np
    rng = np.random.default_rng(seed)
    X = rng.random((samples, N_IN), dtype=np.float32).astype(dtype)
    y = rng.integers(0, N_OUT, samples, dtype=np.int64)
    return X, y


def epoch_perm(samples: int, epoch: int, seed: int = SEED):
    """The shuffled order of epoch `epoch` (0 = warm-up); identical for every system."""
    import numpy as np
    return np.random.default_rng([seed, epoch]).permutation(samples).astype(np.int64)


def init_layers(sizes, seed: int = SEED, dtype: str = "float32"):
    """torch.nn.Linear's default init (U(+-1/sqrt(fan_in))) drawn in float32, as [(W (n_out, n_in),
    b (n_out,))]: every system but scikit-learn starts from these values."""
    import numpy as np
    rng = np.random.default_rng([seed, 7])
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        a = 1.0 / np.sqrt(n_in)
        out.append((rng.uniform(-a, a, (n_out, n_in)).astype(np.float32).astype(dtype),
                    rng.uniform(-a, a, n_out).astype(np.float32).astype(dtype)))
    return out


def numpy_blas_threads():
    """Threads of the OpenBLAS NumPy uses in this process (None if it cannot be asked)."""
    try:
        from threadpoolctl import threadpool_info
        for p in threadpool_info():
            if p.get("internal_api") == "openblas" and "numpy" in p.get("filepath", ""):
                return p.get("num_threads")
    except Exception:
        pass
    return None


def _deltaprop_runner(threads: int, dtype: str):
    import numpy as np

    from deltaprop.compute.engine import Engine, OptimizerSpec
    from deltaprop.plugins.manager import load_registry

    registry = load_registry(entry_points=False)
    opt = OptimizerSpec("sgd")
    info = {"threads": None, "dtype": dtype}

    def run(X, y, sizes, batch, epochs, clock):
        acts = ["relu"] * (len(sizes) - 2) + ["identity"]
        engine = Engine(list(sizes), acts, "cross_entropy", dtype, registry, threads)
        info["threads"] = engine.threads
        theta = engine.flatten(init_layers(sizes, dtype=dtype))
        grad = np.zeros_like(theta)
        state = np.zeros((2, theta.size), theta.dtype)
        mean = np.zeros(X.shape[1], dtype)
        inv_std = np.ones(X.shape[1], dtype)
        n = len(X)
        steps = -(-n // batch)
        lrs = np.full(steps, LR)
        losses, step = [], 0
        for e in range(epochs):
            perm = epoch_perm(n, e)
            clock.start()
            done, step_loss, _ = engine.run_steps(X, mean, inv_std, y, perm, 0, steps, batch, theta, grad,
                                                  opt, state, lrs, step)
            clock.stop()
            if done != steps:
                raise RuntimeError(f"deltaprop diverged at step {done} of {steps}")
            step += steps
            losses.append(float(step_loss[-1]))
        return losses

    return run, info


def torch_model(sizes, dtype: str):
    """The nn.Sequential of Linear/ReLU with init_layers' weights, in `dtype`."""
    import torch
    from torch import nn
    layers = []
    for i, (W, b) in enumerate(init_layers(sizes, dtype=dtype)):
        lin = nn.Linear(sizes[i], sizes[i + 1], dtype=getattr(torch, dtype))
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_epochs(model, X, y, batch, epochs, clock):
    """The PyTorch training loop (eager or compiled model): SGD, mean cross-entropy, batches
    indexed from a pre-made tensor; returns the last-batch loss per epoch."""
    import torch
    import torch.nn.functional as F
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n = len(X)
    losses = []
    for e in range(epochs):
        perm = torch.from_numpy(epoch_perm(n, e))
        clock.start()
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            xb, yb = Xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        clock.stop()
        losses.append(float(loss.item()))
    return losses


def _pytorch_runner(threads: int, dtype: str):
    import torch

    torch.set_num_threads(threads)
    info = {"threads": torch.get_num_threads(), "dtype": dtype, "torch": torch.__version__}

    def run(X, y, sizes, batch, epochs, clock):
        return torch_epochs(torch_model(sizes, dtype), X, y, batch, epochs, clock)

    return run, info


def _numpy_runner(threads: int, dtype: str):
    import numpy as np

    info = {"threads": numpy_blas_threads(), "dtype": dtype}

    def epoch(X, y, perm, batch, params):
        n, L = len(perm), len(params)
        lr = X.dtype.type(LR)
        loss = 0.0
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            x, t = X[idx], y[idx]
            nb = len(idx)
            acts = [x]
            for i, (W, b) in enumerate(params):             # forward
                z = acts[-1] @ W.T
                z += b
                if i < L - 1:
                    np.maximum(z, 0, out=z)
                acts.append(z)
            z = acts.pop()                                  # softmax cross-entropy
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            rows = np.arange(nb)
            loss = -np.log(z[rows, t]).mean()
            z[rows, t] -= 1
            z /= nb
            d, grads = z, []
            for i in range(L - 1, -1, -1):                  # backward
                a = acts[i]
                grads.append((d.T @ a, d.sum(axis=0)))
                if i > 0:
                    d = d @ params[i][0]
                    d *= a > 0
            for (W, b), (gW, gb) in zip(params, reversed(grads)):   # SGD, in place
                gW *= lr
                W -= gW
                gb *= lr
                b -= gb
        return float(loss)

    def run(X, y, sizes, batch, epochs, clock):
        params = init_layers(sizes, dtype=dtype)
        losses = []
        for e in range(epochs):
            perm = epoch_perm(len(X), e)
            clock.start()
            loss = epoch(X, y, perm, batch, params)
            clock.stop()
            losses.append(loss)
        return losses

    return run, info


def _sklearn_runner(threads: int, dtype: str):
    import warnings

    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    info = {"threads": numpy_blas_threads(), "dtype": None, "sklearn": sklearn.__version__}

    def run(X, y, sizes, batch, epochs, clock):
        clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="sgd", learning_rate_init=LR,
                            momentum=0.0, batch_size=batch, max_iter=1, alpha=0.0, shuffle=True,
                            random_state=SEED)
        classes = np.arange(N_OUT)
        losses = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(epochs):  # partial_fit = exactly one epoch (its own shuffle)
                clock.start()
                clf.partial_fit(X, y, classes=classes)
                clock.stop()
                losses.append(float(clf.loss_))
        info["dtype"] = str(clf.coefs_[0].dtype)
        return losses

    return run, info


def runner(system: str):
    """The runner factory of `system` (threads, dtype) -> (run, info)."""
    if system in ("deltaprop", "pytorch", "numpy", "sklearn"):
        return globals()[f"_{system}_runner"]
    import peers
    return peers.RUNNERS[system]


def worker(args) -> dict:
    """Run one system: pinned to --threads cores, for every hidden spec x batch size, a warm-up
    epoch then timed epochs; the threads that accumulated CPU time in the timed epochs go in info."""
    affinity = procinfo.pin_cores(args.threads)
    if args.worker == "gemm":
        return gemm_worker(args.gemm_n, args.dtype, affinity)
    try:
        run, info = runner(args.worker)(args.threads, args.dtype)
    except ImportError as exc:
        return {"system": args.worker, "status": "skipped", "note": f"not installed ({exc})"}
    except RuntimeError as exc:  # e.g. a library without float64 support
        return {"system": args.worker, "status": "skipped", "note": str(exc)}
    X, y = make_data(args.samples, dtype=args.dtype)
    results = []
    for hidden in parse_hidden(args.hidden):
        sizes = [N_IN, *hidden, N_OUT]
        for batch in parse_ints(args.batch_sizes):
            clock = procinfo.EpochClock()
            try:
                losses = run(X, y, sizes, batch, 1 + args.timed_epochs, clock)
            except Exception as exc:  # e.g. torch.compile without a working C++ compiler
                if args.worker != "torch_compile":
                    raise
                return {"system": args.worker, "status": "skipped",
                        "note": f"torch.compile unavailable: {type(exc).__name__}: {str(exc)[:200]}"}
            results.append({"hidden": list(hidden), "batch": batch, "seconds": clock.times[1:],
                            "warmup_seconds": clock.times[0], "loss": losses[-1],
                            "threads_used": clock.threads_info()})
    info["affinity"] = affinity
    info["threads_used"] = max((r["threads_used"] for r in results), key=lambda t: t["threads_busy"])
    return {"system": args.worker, "status": "ok", "info": info, "results": results}


def gemm_worker(n: int, dtype: str, affinity) -> dict:
    """GEMM peak of NumPy's BLAS in `dtype` on the pinned cores: best of several n x n x n products."""
    import numpy as np
    rng = np.random.default_rng(SEED)
    a = rng.random((n, n)).astype(dtype)
    b = rng.random((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    np.matmul(a, b, out=c)
    best, reps, t_end = float("inf"), 0, time.perf_counter() + 3.0
    while reps < 5 or (reps < 50 and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return {"system": "gemm", "status": "ok", "n": n, "dtype": dtype, "reps": reps, "best_seconds": best,
            "gflops": 2.0 * n ** 3 / best / 1e9, "info": {"threads": numpy_blas_threads(), "affinity": affinity}}
