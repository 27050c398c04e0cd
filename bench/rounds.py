"""The benchmark's driver side: every system in its own process, interleaved rounds, medians.

`call_worker` starts `python bench/bench.py --worker SYSTEM ...` (by file path, so the child has
bench/ on sys.path like the parent) with the thread environment that system should see, and reads
the JSON dict the child prints as its last stdout line; a crash or missing JSON becomes a
"failed" status with the child's last stderr lines. `main_bench` runs `--repeats` rounds, each a
GEMM-peak worker and then one worker per system in an order rotated by round, and assembles the
report (config, machine, GEMM peak, system statuses, one row per batch size). `scaling_bench`
sweeps hidden width and batch size for deltaprop and PyTorch.

    import rounds                                 # with bench/ on sys.path
    report = rounds.main_bench(opts, log)         # opts from bench.parse_args(), log(str) -> None
    report["scaling"] = rounds.scaling_bench(opts, log)
"""

import json
import os
import subprocess
import sys
from importlib import util

from report import machine_info, result_row, scaling_row
from spec import (DIST, HIDDEN, LR, MODULE, N_IN, N_OUT, SEED, SYSTEMS, flops_per_sample, median, parse_hidden,
                  parse_ints)

BENCH_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def worker_env(system: str, threads: int, explicit_threads: bool) -> dict:
    """deltaprop and torch set their own threads; NumPy-BLAS users get OpenBLAS's default (all
    cores) unless --threads was given, then exactly that."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    if system in ("numpy", "sklearn", "gemm") and explicit_threads:
        for k in BLAS_ENV:
            env[k] = str(threads)
    return env


def call_worker(system: str, opts, *, samples=0, hidden="", batches="", timed_epochs=1) -> dict:
    cmd = [sys.executable, BENCH_PY, "--worker", system, "--threads", str(opts.threads),
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
    peak = median(gemm_runs)
    rows = [result_row(b, tuple(HIDDEN), times, losses, status, opts.samples, fps, peak)
            for b in opts.batch_sizes]
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
            times[s] = {(tuple(r["hidden"]), r["batch"]): median(r["seconds"]) for r in res["results"]}
        for h in parse_hidden(hidden):
            for b in parse_ints(batches):
                out[name].append(scaling_row(h, b, times, opts.scaling_samples))
    return out
