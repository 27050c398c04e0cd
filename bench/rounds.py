"""The benchmark's driver side: every system in its own process, interleaved rounds, medians.

`call_worker` starts `python bench/bench.py --worker SYSTEM ...` (by file path, so the child has
bench/ on sys.path like the parent; the child pins itself to `--threads` cores) with the thread
environment that system should see, and reads the JSON dict the child prints as its last stdout
line; a crash or missing JSON becomes a "failed" status with the child's last stderr lines.
`main_bench` runs `--repeats` rounds; each round runs every section (float32, float64, wide): a
GEMM-peak worker in the section's dtype, then one worker per system in an order rotated by
round; it assembles the report (config, machine, per section: GEMM peak, system statuses, one
row per batch size). `threads_bench` does the same at 1, 2, ... cores for deltaprop, JAX scan
and PyTorch; `scaling_bench` sweeps hidden width and batch size for deltaprop and PyTorch.

    import rounds                                 # with bench/ on sys.path
    report = rounds.main_bench(opts, log)         # opts from bench.parse_args(), log(str) -> None
    report["threads_scaling"] = rounds.threads_bench(opts, log)
    report["scaling"] = rounds.scaling_bench(opts, log)
"""

import json
import os
import subprocess
import sys
from importlib import util

from report import machine_info, result_row, scaling_row, threads_row
from spec import (
    DIST,
    HIDDEN,
    LR,
    MODULE,
    N_IN,
    N_OUT,
    SEED,
    THREAD_SCALING_SYSTEMS,
    flops_per_sample,
    median,
    parse_hidden,
    parse_ints,
    sections,
)

BENCH_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def worker_env(system: str, threads: int) -> dict:
    """deltaprop, torch and XLA set their own threads (within the worker's affinity);
    NumPy-BLAS users are told the worker's thread count (what OpenBLAS would pick on the pinned
    cores anyway). No XLA_FLAGS are added."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    if system in ("numpy", "sklearn", "gemm"):
        for k in BLAS_ENV:
            env[k] = str(threads)
    return env


def call_worker(system: str, opts, *, threads=None, samples=0, hidden="", batches="", dtype="float32",
                timed_epochs=1) -> dict:
    threads = threads or opts.threads
    cmd = [sys.executable, BENCH_PY, "--worker", system, "--threads", str(threads),
           "--samples", str(samples), "--hidden", hidden, "--batch-sizes", batches, "--dtype", dtype,
           "--timed-epochs", str(timed_epochs), "--gemm-n", str(opts.gemm_n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(system, threads))
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"system": system, "status": "failed", "note": f"worker exited {proc.returncode}: {tail}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"system": system, "status": "failed", "note": f"no JSON from worker: {proc.stdout[-200:]!r}"}


def installed(system: str) -> bool:
    return util.find_spec(MODULE[system]) is not None


def initial_status(systems) -> dict:
    return {s: ({"status": "ok"} if installed(s) else {"status": "skipped", "note": f"{DIST[s]} not installed"})
            for s in systems}


def run_round(r, opts, systems, *, status, times, losses, log, tag="", **kw):
    """One worker per system still ok, in an order rotated by round `r` (so drift and the
    machine's other load do not always hit the same system); seconds go into
    times[system][(hidden tuple, batch)], failures and skips into `status`."""
    k = r % len(systems)
    for system in systems[k:] + systems[:k]:
        if status[system]["status"] != "ok":
            continue
        log(f"round {r + 1}/{opts.repeats}{tag}: {system} ...")
        out = call_worker(system, opts, **kw)
        if out["status"] != "ok":
            status[system] = {"status": out["status"], "note": out.get("note", "")}
            continue
        status[system].setdefault("info", out["info"])
        status[system].setdefault("rounds_info", []).append(out["info"].get("threads_used"))
        for res in out["results"]:
            times[system].setdefault((tuple(res["hidden"]), res["batch"]), []).extend(res["seconds"])
            losses[system].setdefault((tuple(res["hidden"]), res["batch"]), res["loss"])


def gemm(opts, dtype, runs, log, threads=None):
    g = call_worker("gemm", opts, dtype=dtype, threads=threads)
    if g["status"] == "ok":
        runs.append(g["gflops"])
        return g["info"]
    log(f"GEMM peak ({dtype}) failed: {g.get('note')}")
    return None


def main_bench(opts, log) -> dict:
    secs = {k: v for k, v in sections(opts.quick, opts.batch_sizes, opts.samples).items() if k in opts.sections}
    state = {}
    for name, sec in secs.items():
        status = initial_status(sec["systems"])
        if status["deltaprop"]["status"] != "ok":
            raise SystemExit("deltaprop is not importable from this interpreter; install it (make setup)")
        state[name] = {"status": status, "times": {s: {} for s in sec["systems"]},
                       "losses": {s: {} for s in sec["systems"]}, "gemm": [], "gemm_info": None}
    for r in range(opts.repeats):
        for name, sec in secs.items():
            st = state[name]
            log(f"round {r + 1}/{opts.repeats} {name}: GEMM peak ({sec['dtype']}) ...")
            st["gemm_info"] = gemm(opts, sec["dtype"], st["gemm"], log) or st["gemm_info"]
            run_round(r, opts, sec["systems"], status=st["status"], times=st["times"], losses=st["losses"],
                      log=log, tag=f" {name}", samples=sec["samples"], hidden=",".join(map(str, sec["hidden"])),
                      batches=",".join(map(str, sec["batches"])), dtype=sec["dtype"])
    out = {}
    for name, sec in secs.items():
        st = state[name]
        if st["status"]["deltaprop"]["status"] != "ok":
            raise SystemExit(f"deltaprop worker failed ({name}): {st['status']['deltaprop'].get('note')}")
        sizes = [N_IN, *sec["hidden"], N_OUT]
        fps = flops_per_sample(sizes)
        peak = median(st["gemm"])
        rows = [result_row(b, tuple(sec["hidden"]), st["times"], st["losses"], st["status"], sec, fps, peak)
                for b in sec["batches"]]
        out[name] = {"config": {**sec, "sizes": sizes}, "flops_per_sample": fps,
                     "gemm_peak": {"gflops": peak, "runs": st["gemm"], "n": opts.gemm_n, "dtype": sec["dtype"],
                                   "threads": (st["gemm_info"] or {}).get("threads"),
                                   "affinity": (st["gemm_info"] or {}).get("affinity")},
                     "systems": st["status"], "results": rows}
    first = out[next(iter(out))]
    return {
        "config": {"sizes": first["config"]["sizes"], "activation": "relu", "loss": "cross_entropy",
                   "dtype": first["config"]["dtype"], "optimizer": f"sgd lr={LR} momentum=0",
                   "samples": first["config"]["samples"], "batch_sizes": first["config"]["batches"],
                   "repeats": opts.repeats, "threads": opts.threads, "seed": SEED, "sections": list(out),
                   "data": "synthetic: X ~ U[0,1) float32, y ~ randint(0, 10)",
                   "threads_control": "each worker os.sched_setaffinity to the first --threads allowed cores "
                                      "before importing its library; no XLA_FLAGS",
                   "timing": "one epoch after a warm-up epoch, shuffled order per epoch; median of repeats"},
        "machine": machine_info(opts.threads),
        # the first section's figures at the top level too (the float32 table of earlier reports)
        "flops_per_sample": first["flops_per_sample"], "gemm_peak": first["gemm_peak"],
        "systems": first["systems"], "results": first["results"],
        "sections": out,
    }


def threads_bench(opts, log) -> dict:
    """Samples/s of the float32 net at batch `opts.threads_batch` with 1, 2, ... N cores (N = the
    cores this process may use), deltaprop vs JAX scan vs PyTorch, with the float32 GEMM peak
    at each count; `repeats` interleaved rounds, medians."""
    counts = list(range(1, opts.max_threads + 1))
    systems = list(THREAD_SCALING_SYSTEMS)
    status = initial_status(systems)
    hidden = ",".join(map(str, HIDDEN))
    times = {t: {s: {} for s in systems} for t in counts}
    losses = {t: {s: {} for s in systems} for t in counts}
    gemms = {t: [] for t in counts}
    for r in range(opts.repeats):
        for t in counts:
            log(f"threads {t}, round {r + 1}/{opts.repeats}: GEMM peak ...")
            gemm(opts, "float32", gemms[t], log, threads=t)
            run_round(r, opts, systems, status=status, times=times[t], losses=losses[t], log=log,
                      tag=f" ({t} threads)", threads=t, samples=opts.samples, hidden=hidden,
                      batches=str(opts.threads_batch))
    fps = flops_per_sample([N_IN, *HIDDEN, N_OUT])
    rows = [threads_row(t, opts.threads_batch, tuple(HIDDEN), times[t], status, opts.samples, fps,
                        median(gemms[t])) for t in counts]
    return {"batch": opts.threads_batch, "samples": opts.samples, "systems": status, "rows": rows}


def scaling_bench(opts, log) -> dict:
    """Epoch seconds vs hidden width (784-W-10, batch 128) and vs batch size (784-256-128-10),
    deltaprop vs PyTorch; warm-up epoch then `repeats` timed epochs in one worker, medians."""
    status = initial_status(("deltaprop", "pytorch"))
    systems = [s for s, st in status.items() if st["status"] == "ok"]
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
            times[s] = {(tuple(r["hidden"]), r["batch"]): median(r["seconds"]) for r in res["results"]}
        for h in parse_hidden(hidden):
            for b in parse_ints(batches):
                out[name].append(scaling_row(h, b, times, opts.scaling_samples))
    return out
