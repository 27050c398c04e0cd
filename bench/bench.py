#!/usr/bin/env python3
"""deltaprop vs PyTorch CPU vs a plain-NumPy loop vs scikit-learn on one MLP (issue 5).

    python bench/bench.py                  # the table: 784-256-128-10 relu, batch 32/128/512
    python bench/bench.py --json           # the same as one JSON object
    python bench/bench.py --scaling        # plus epoch time vs hidden width and vs batch size
    python bench/bench.py --quick --json   # tiny sizes (the smoke test)

Every system, and the GEMM-peak measurement, runs in its own subprocess
(`bench.py --worker SYSTEM ...`, JSON on stdout), so that deltaprop pinning the process-wide
OpenBLAS to 1 thread never leaks into the NumPy loop or scikit-learn, and torch's thread pool
never meets Numba's. A round runs one worker per system (all batch sizes; a warm-up epoch, then
one timed epoch, per batch size); `--repeats` rounds, interleaved, and medians are reported.
Only the epoch is timed: data generation, the epoch's permutation and model set-up are not.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata, util

SYSTEMS = ("deltaprop", "pytorch", "numpy", "sklearn")
PEERS = SYSTEMS[1:]
LABELS = {"deltaprop": "deltaprop", "pytorch": "PyTorch", "numpy": "NumPy loop", "sklearn": "sklearn"}
MODULE = {"deltaprop": "deltaprop", "pytorch": "torch", "numpy": "numpy", "sklearn": "sklearn"}
DIST = {"deltaprop": "deltaprop", "pytorch": "torch", "numpy": "numpy", "sklearn": "scikit-learn"}

N_IN, N_OUT, LR, SEED = 784, 10, 0.01, 1234
HIDDEN = (256, 128)
# issue 5: batch -> minimum deltaprop/peer ratio; and the share of the GEMM peak at batch 512
TARGETS = {32: {"pytorch": 2.0, "numpy": 1.3}, 128: {"pytorch": 1.3, "numpy": 1.1},
           512: {"pytorch": 1.1, "numpy": 1.0}}
PEAK_TARGET_BATCH, PEAK_TARGET = 512, 0.70
SCALING_WIDTHS = (128, 512, 1024, 2048, 4096)
SCALING_BATCHES = (32, 64, 128, 256, 512, 1024)
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def flops_per_sample(sizes) -> int:
    """GEMM FLOPs one sample needs: forward and dW for every layer, dX for all but the first."""
    prods = [sizes[i] * sizes[i + 1] for i in range(len(sizes) - 1)]
    return 2 * sum(prods) + 2 * sum(prods) + 2 * sum(prods[1:])


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ================================= workers (one system per process) ===========================

def make_data(samples: int, seed: int = SEED):
    import numpy as np
    rng = np.random.default_rng(seed)
    X = rng.random((samples, N_IN), dtype=np.float32)
    y = rng.integers(0, N_OUT, samples, dtype=np.int64)
    return X, y


def epoch_perm(samples: int, epoch: int, seed: int = SEED):
    """The shuffled order of epoch `epoch` (0 = warm-up); identical for every system."""
    import numpy as np
    return np.random.default_rng([seed, epoch]).permutation(samples).astype(np.int64)


def init_layers(sizes, seed: int = SEED):
    """torch.nn.Linear's default init (U(+-1/sqrt(fan_in))), float32, for deltaprop and NumPy."""
    import numpy as np
    rng = np.random.default_rng([seed, 7])
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        a = 1.0 / np.sqrt(n_in)
        out.append((rng.uniform(-a, a, (n_out, n_in)).astype(np.float32),
                    rng.uniform(-a, a, n_out).astype(np.float32)))
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


def _deltaprop_runner(threads: int):
    import numpy as np

    from deltaprop.plugins.manager import load_registry
    from deltaprop.compute.engine import Engine, OptimizerSpec

    registry = load_registry(entry_points=False)
    opt = OptimizerSpec("sgd")
    info = {"threads": None, "dtype": "float32"}

    def run(X, y, sizes, batch, epochs):
        acts = ["relu"] * (len(sizes) - 2) + ["identity"]
        engine = Engine(list(sizes), acts, "cross_entropy", "float32", registry, threads)
        info["threads"] = engine.threads
        theta = engine.flatten(init_layers(sizes))
        grad = np.zeros_like(theta)
        state = np.zeros((2, theta.size), theta.dtype)
        mean = np.zeros(X.shape[1], np.float32)
        inv_std = np.ones(X.shape[1], np.float32)
        n = len(X)
        steps = -(-n // batch)
        lrs = np.full(steps, LR)
        times, losses, step = [], [], 0
        for e in range(epochs):
            perm = epoch_perm(n, e)
            t0 = time.perf_counter()
            done, step_loss, _ = engine.run_steps(X, mean, inv_std, y, perm, 0, steps, batch, theta, grad,
                                                  opt, state, lrs, step)
            times.append(time.perf_counter() - t0)
            if done != steps:
                raise RuntimeError(f"deltaprop diverged at step {done} of {steps}")
            step += steps
            losses.append(float(step_loss[-1]))
        return times, losses

    return run, info


def _pytorch_runner(threads: int):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(threads)
    info = {"threads": torch.get_num_threads(), "dtype": "float32", "torch": torch.__version__}

    def run(X, y, sizes, batch, epochs):
        torch.manual_seed(SEED)
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        n = len(X)
        times, losses = [], []
        for e in range(epochs):
            perm = torch.from_numpy(epoch_perm(n, e))
            t0 = time.perf_counter()
            for s in range(0, n, batch):
                idx = perm[s:s + batch]
                xb, yb = Xt[idx], yt[idx]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.item()))
        return times, losses

    del np
    return run, info


def _numpy_runner(threads: int):
    import numpy as np

    info = {"threads": numpy_blas_threads(), "dtype": "float32"}

    def epoch(X, y, perm, batch, params):
        n, L = len(perm), len(params)
        lr = np.float32(LR)
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

    def run(X, y, sizes, batch, epochs):
        params = init_layers(sizes)
        times, losses = [], []
        for e in range(epochs):
            perm = epoch_perm(len(X), e)
            t0 = time.perf_counter()
            loss = epoch(X, y, perm, batch, params)
            times.append(time.perf_counter() - t0)
            losses.append(loss)
        return times, losses

    return run, info


def _sklearn_runner(threads: int):
    import warnings

    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    info = {"threads": numpy_blas_threads(), "dtype": None, "sklearn": sklearn.__version__}

    def run(X, y, sizes, batch, epochs):
        clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="sgd", learning_rate_init=LR,
                            momentum=0.0, batch_size=batch, max_iter=1, alpha=0.0, shuffle=True,
                            random_state=SEED)
        classes = np.arange(N_OUT)
        times, losses = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(epochs):  # partial_fit = exactly one epoch (its own shuffle)
                t0 = time.perf_counter()
                clf.partial_fit(X, y, classes=classes)
                times.append(time.perf_counter() - t0)
                losses.append(float(clf.loss_))
        info["dtype"] = str(clf.coefs_[0].dtype)
        return times, losses

    return run, info


RUNNERS = {"deltaprop": _deltaprop_runner, "pytorch": _pytorch_runner, "numpy": _numpy_runner,
           "sklearn": _sklearn_runner}


def worker(args) -> dict:
    """Run one system: for every hidden spec x batch size, a warm-up epoch then timed epochs."""
    if args.worker == "gemm":
        return gemm_worker(args.gemm_n)
    try:
        run, info = RUNNERS[args.worker](args.threads)
    except ImportError as exc:
        return {"system": args.worker, "status": "skipped", "note": f"not installed ({exc})"}
    X, y = make_data(args.samples)
    results = []
    for hidden in parse_hidden(args.hidden):
        sizes = [N_IN, *hidden, N_OUT]
        for batch in parse_ints(args.batch_sizes):
            times, losses = run(X, y, sizes, batch, 1 + args.timed_epochs)
            results.append({"hidden": list(hidden), "batch": batch, "seconds": times[1:],
                            "warmup_seconds": times[0], "loss": losses[-1]})
    return {"system": args.worker, "status": "ok", "info": info, "results": results}


def gemm_worker(n: int) -> dict:
    """float32 GEMM peak of NumPy's BLAS: best of several n x n x n products."""
    import numpy as np
    rng = np.random.default_rng(SEED)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    best, reps, t_end = float("inf"), 0, time.perf_counter() + 3.0
    while reps < 5 or (reps < 50 and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return {"system": "gemm", "status": "ok", "n": n, "reps": reps, "best_seconds": best,
            "gflops": 2.0 * n ** 3 / best / 1e9, "info": {"threads": numpy_blas_threads()}}


# ================================= the driver ==================================================

def parse_ints(s: str) -> list[int]:
    return [int(v) for v in str(s).split(",") if v.strip()]


def parse_hidden(s: str) -> list[list[int]]:
    """'256,128;512' -> [[256, 128], [512]]."""
    return [parse_ints(h) for h in str(s).split(";") if h.strip()]


def worker_env(system: str, threads: int, explicit_threads: bool) -> dict:
    """deltaprop and torch set their own threads; NumPy-BLAS users get OpenBLAS's default (all
    cores) unless --threads was given, then exactly that."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    if system in ("numpy", "sklearn", "gemm") and explicit_threads:
        for k in BLAS_ENV:
            env[k] = str(threads)
    return env


def call_worker(system: str, opts, *, samples=0, hidden="", batches="", timed_epochs=1) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", system, "--threads", str(opts.threads),
           "--samples", str(samples), "--hidden", hidden, "--batch-sizes", batches,
           "--timed-epochs", str(timed_epochs), "--gemm-n", str(opts.gemm_n)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=worker_env(system, opts.threads, opts.explicit_threads))
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"system": system, "status": "failed", "note": f"worker exited {proc.returncode}: {tail}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"system": system, "status": "failed", "note": f"no JSON from worker: {proc.stdout[-200:]!r}"}


def installed(system: str) -> bool:
    return util.find_spec(MODULE[system]) is not None


def version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_available": default_threads(), "threads": threads,
            "python": platform.python_version(),
            "versions": {d: version(d) for d in ("deltaprop", "numpy", "numba", "torch", "scikit-learn")}}


def _median(xs):
    return statistics.median(xs) if xs else None


def run_round(r, opts, *, samples, hidden, batches, status, times, losses, log):
    """One worker per system still ok, in an order rotated by round `r` (so drift and the
    machine's other load do not always hit the same system); seconds go into
    times[system][(hidden tuple, batch)], failures and skips into `status`."""
    k = r % len(SYSTEMS)
    for system in SYSTEMS[k:] + SYSTEMS[:k]:
        if status[system]["status"] != "ok":
            continue
        log(f"round {r + 1}/{opts.repeats}: {system} ...")
        out = call_worker(system, opts, samples=samples, hidden=hidden, batches=batches)
        if out["status"] != "ok":
            status[system] = {"status": out["status"], "note": out.get("note", "")}
            continue
        status[system].setdefault("info", out["info"])
        for res in out["results"]:
            times[system].setdefault((tuple(res["hidden"]), res["batch"]), []).extend(res["seconds"])
            losses[system].setdefault((tuple(res["hidden"]), res["batch"]), res["loss"])


def main_bench(opts, log) -> dict:
    status = {}
    for s in SYSTEMS:
        if installed(s):
            status[s] = {"status": "ok"}
        else:
            status[s] = {"status": "skipped", "note": f"{DIST[s]} not installed"}
    if status["deltaprop"]["status"] != "ok":
        raise SystemExit("deltaprop is not importable from this interpreter; install it (make setup)")
    sizes = [N_IN, *HIDDEN, N_OUT]
    fps = flops_per_sample(sizes)
    hidden = ",".join(map(str, HIDDEN))
    batches = ",".join(map(str, opts.batch_sizes))
    gemm_runs, gemm_threads = [], None
    times = {s: {} for s in SYSTEMS}
    losses = {s: {} for s in SYSTEMS}
    for r in range(opts.repeats):
        log(f"round {r + 1}/{opts.repeats}: GEMM peak ...")
        g = call_worker("gemm", opts)
        if g["status"] == "ok":
            gemm_runs.append(g["gflops"])
            gemm_threads = g["info"]["threads"]
        else:
            log(f"GEMM peak failed: {g.get('note')}")
        run_round(r, opts, samples=opts.samples, hidden=hidden, batches=batches, status=status,
                  times=times, losses=losses, log=log)
    if status["deltaprop"]["status"] != "ok":
        raise SystemExit(f"deltaprop worker failed: {status['deltaprop'].get('note')}")
    peak = _median(gemm_runs)
    rows = []
    for b in opts.batch_sizes:
        key = (tuple(HIDDEN), b)
        sps = {}
        runs = {}
        for s in SYSTEMS:
            secs = times[s].get(key, []) if status[s]["status"] == "ok" else []
            runs[s] = [opts.samples / t for t in secs]
            sps[s] = _median(runs[s])
        ratios = {p: (sps["deltaprop"] / sps[p] if sps[p] and sps["deltaprop"] else None) for p in PEERS}
        gflops = sps["deltaprop"] * fps / 1e9 if sps["deltaprop"] else None
        frac = gflops / peak if gflops is not None and peak else None
        targets = {}
        for p, need in TARGETS.get(b, {}).items():
            targets[p] = {"target": need, "ratio": ratios[p],
                          "met": None if ratios[p] is None else ratios[p] >= need}
        if b == PEAK_TARGET_BATCH:
            targets["peak"] = {"target": PEAK_TARGET, "fraction": frac,
                               "met": None if frac is None else frac >= PEAK_TARGET}
        rows.append({"batch": b, "samples_per_s": sps, "runs_samples_per_s": runs, "ratios": ratios,
                     "deltaprop_gflops": gflops, "peak_fraction": frac, "targets": targets,
                     "last_batch_loss": {s: losses[s].get(key) for s in SYSTEMS}})
    return {
        "config": {"sizes": sizes, "activation": "relu", "loss": "cross_entropy", "dtype": "float32",
                   "optimizer": f"sgd lr={LR} momentum=0", "samples": opts.samples,
                   "batch_sizes": opts.batch_sizes, "repeats": opts.repeats, "threads": opts.threads,
                   "seed": SEED, "data": "synthetic: X ~ U[0,1) float32, y ~ randint(0, 10)",
                   "timing": "one epoch after a warm-up epoch, shuffled order per epoch; median of repeats"},
        "machine": machine_info(opts.threads),
        "flops_per_sample": fps,
        "gemm_peak": {"gflops": peak, "runs": gemm_runs, "n": opts.gemm_n, "dtype": "float32",
                      "threads": gemm_threads},
        "systems": status,
        "results": rows,
    }


def scaling_bench(opts, log) -> dict:
    """Epoch seconds vs hidden width (784-W-10, batch 128) and vs batch size (784-256-128-10),
    deltaprop vs PyTorch; warm-up epoch then `repeats` timed epochs in one worker, medians."""
    systems = [s for s in ("deltaprop", "pytorch") if installed(s)]
    status = {s: {"status": "ok"} for s in systems}
    if "pytorch" not in systems:
        status["pytorch"] = {"status": "skipped", "note": "torch not installed"}
    out = {"samples": opts.scaling_samples, "systems": status, "width": [], "batch": []}
    sweeps = (("width", ";".join(map(str, opts.scaling_widths)), str(opts.scaling_batch)),
              ("batch", ",".join(map(str, HIDDEN)), ",".join(map(str, opts.scaling_batches))))
    for name, hidden, batches in sweeps:
        times = {}
        for s in systems:
            if status[s]["status"] != "ok":
                continue
            log(f"scaling ({name}): {s} ...")
            res = call_worker(s, opts, samples=opts.scaling_samples, hidden=hidden, batches=batches,
                              timed_epochs=opts.repeats)
            if res["status"] != "ok":
                status[s] = {"status": res["status"], "note": res.get("note", "")}
                continue
            times[s] = {(tuple(r["hidden"]), r["batch"]): _median(r["seconds"]) for r in res["results"]}
        for h in parse_hidden(hidden):
            for b in parse_ints(batches):
                secs = {s: times.get(s, {}).get((tuple(h), b)) for s in ("deltaprop", "pytorch")}
                row = {"hidden": h, "batch": b, "seconds": secs,
                       "gflops": {s: (opts.scaling_samples * flops_per_sample([N_IN, *h, N_OUT]) / t / 1e9
                                      if t else None) for s, t in secs.items()},
                       "speedup_vs_pytorch": (secs["pytorch"] / secs["deltaprop"]
                                              if secs["pytorch"] and secs["deltaprop"] else None)}
                out[name].append(row)
    return out


# ================================= output ======================================================

def _k(v):
    return "—" if v is None else (f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}")


def _x(v):
    return "—" if v is None else f"{v:.2f}×"


def print_table(report: dict, console) -> None:
    from rich.table import Table

    sysst = report["systems"]
    t = Table(title=f"samples/s, {report['config']['sizes']} relu, float32 SGD, "
                    f"{report['config']['samples']} samples/epoch, median of {report['config']['repeats']}")
    t.add_column("batch", justify="right")
    for s in SYSTEMS:
        t.add_column(LABELS[s] if sysst[s]["status"] == "ok" else f"{LABELS[s]} ({sysst[s]['status']})",
                     justify="right")
    for p in PEERS:
        t.add_column(f"÷{LABELS[p].split()[0]}", justify="right")
    t.add_column("GFLOP/s", justify="right")
    t.add_column("% peak", justify="right")
    t.add_column("targets (issue 5)")
    for row in report["results"]:
        marks = []
        for k, tg in row["targets"].items():
            label = f"≥{tg['target']:.0%} peak" if k == "peak" else f"{LABELS[k].split()[0]} ≥{tg['target']}×"
            mark = "n/a" if tg["met"] is None else ("[green]met[/]" if tg["met"] else "[red]not met[/]")
            marks.append(f"{label}: {mark}")
        frac = row["peak_fraction"]
        t.add_row(str(row["batch"]), *[_k(row["samples_per_s"][s]) for s in SYSTEMS],
                  *[_x(row["ratios"][p]) for p in PEERS],
                  "—" if row["deltaprop_gflops"] is None else f"{row['deltaprop_gflops']:.1f}",
                  "—" if frac is None else f"{frac:.0%}", "; ".join(marks) or "—")
    console.print(t)
    m, g = report["machine"], report["gemm_peak"]
    v = m["versions"]
    console.print(f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_available']} available), "
                  f"{m['threads']} threads used; python {m['python']}, numpy {v['numpy']}, numba {v['numba']}, "
                  f"torch {v['torch'] or '—'}, scikit-learn {v['scikit-learn'] or '—'}")
    peak = "—" if g["gflops"] is None else f"{g['gflops']:.1f}"
    console.print(f"float32 GEMM peak (numpy {g['n']}×{g['n']}, best of several, median of "
                  f"{len(g['runs'])}): {peak} GFLOP/s; FLOPs/sample (forward + dW + dX of layers 2..L): "
                  f"{report['flops_per_sample']:,}")
    for s in SYSTEMS:
        st = sysst[s]
        if st["status"] != "ok":
            console.print(f"[yellow]{LABELS[s]}: {st['status']}[/] — {st.get('note', '')}")
    sk = sysst["sklearn"].get("info", {})
    if sk.get("dtype"):
        console.print(f"note: scikit-learn computed in {sk['dtype']} (reported as is)")
    if "scaling" in report:
        print_scaling(report["scaling"], console)


def print_scaling(sc: dict, console) -> None:
    from rich.table import Table
    for name, title, key in (("width", "epoch seconds vs hidden width (784-W-10)", "hidden"),
                             ("batch", "epoch seconds vs batch size (784-256-128-10)", "batch")):
        t = Table(title=f"{title}, {sc['samples']} samples")
        t.add_column("width" if name == "width" else "batch", justify="right")
        if name == "width":
            t.add_column("batch", justify="right")
        for s in ("deltaprop", "pytorch"):
            t.add_column(f"{LABELS[s]} s", justify="right")
            t.add_column(f"{LABELS[s]} GFLOP/s", justify="right")
        t.add_column("speed-up vs PyTorch", justify="right")
        for row in sc[name]:
            first = [",".join(map(str, row["hidden"])), str(row["batch"])] if name == "width" else [str(row["batch"])]
            cells = []
            for s in ("deltaprop", "pytorch"):
                sec, gf = row["seconds"][s], row["gflops"][s]
                cells += ["—" if sec is None else f"{sec:.3f}", "—" if gf is None else f"{gf:.1f}"]
            t.add_row(*first, *cells, _x(row["speedup_vs_pytorch"]))
        console.print(t)
    for s, st in sc["systems"].items():
        if st["status"] != "ok":
            console.print(f"[yellow]scaling, {LABELS[s]}: {st['status']}[/] — {st.get('note', '')}")


# ================================= CLI =========================================================

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per system; medians reported (3)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (32,128,512)")
    ap.add_argument("--samples", type=int, default=None, help="samples per epoch (60000)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every system (all cores)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    ap.add_argument("--scaling", action="store_true",
                    help="also report epoch time vs hidden width and vs batch size, deltaprop vs PyTorch")
    ap.add_argument("--scaling-samples", type=int, default=None, help="samples per scaling epoch (10000)")
    ap.add_argument("--gemm-n", type=int, default=None, help="GEMM peak matrix size (2048)")
    # internal: one system in this process
    ap.add_argument("--worker", choices=(*SYSTEMS, "gemm"), help=argparse.SUPPRESS)
    ap.add_argument("--hidden", default=",".join(map(str, HIDDEN)), help=argparse.SUPPRESS)
    ap.add_argument("--timed-epochs", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    q = a.quick
    a.explicit_threads = a.threads is not None
    a.threads = a.threads or default_threads()
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
    return a


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.worker:
        print(json.dumps(worker(opts)))
        return 0
    from rich.console import Console
    err = Console(stderr=True)
    console = Console() if sys.stdout.isatty() else Console(width=200)

    def log(msg):
        if not opts.json:
            err.print(f"[dim]{msg}[/]")

    t0 = time.perf_counter()
    report = main_bench(opts, log)
    if opts.scaling:
        report["scaling"] = scaling_bench(opts, log)
    report["wall_seconds"] = time.perf_counter() - t0
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
