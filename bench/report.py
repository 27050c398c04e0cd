"""The benchmark's numbers and tables: what the driver's timings mean, and how they are shown.

`result_row` turns one batch size's epoch seconds into the report row (median samples/s per
system, deltaprop's ratio to each peer, its GFLOP/s and share of the GEMM peak, and the targets
as met / not met: reported, never asserted); `scaling_row` does the same for one point of the
scaling sweeps; `machine_info` describes the machine and library versions. `print_table` renders
the whole report (and its scaling part, if any) with rich; `--json` prints the same dict instead.

    import report                                  # with bench/ on sys.path
    report.print_table(rounds.main_bench(opts, log), rich.console.Console())
"""

import os
import platform
from importlib import metadata

from spec import (LABELS, N_IN, N_OUT, PEAK_TARGET, PEAK_TARGET_BATCH, PEERS, SYSTEMS, TARGETS, default_threads,
                  flops_per_sample, median)


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



def result_row(b, hidden, times, losses, status, samples, fps, peak) -> dict:
    """The row of batch size `b`: times[system][(hidden, b)] are epoch seconds of `samples`
    samples, `fps` the FLOPs per sample, `peak` the GEMM peak in GFLOP/s (None if unmeasured)."""
    key = (hidden, b)
    sps = {}
    runs = {}
    for s in SYSTEMS:
        secs = times[s].get(key, []) if status[s]["status"] == "ok" else []
        runs[s] = [samples / t for t in secs]
        sps[s] = median(runs[s])
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
    return {"batch": b, "samples_per_s": sps, "runs_samples_per_s": runs, "ratios": ratios,
            "deltaprop_gflops": gflops, "peak_fraction": frac, "targets": targets,
            "last_batch_loss": {s: losses[s].get(key) for s in SYSTEMS}}


def scaling_row(h, b, times, samples) -> dict:
    """One point of a scaling sweep: times[system][(tuple(h), b)] is the median epoch seconds."""
    secs = {s: times.get(s, {}).get((tuple(h), b)) for s in ("deltaprop", "pytorch")}
    return {"hidden": h, "batch": b, "seconds": secs,
            "gflops": {s: (samples * flops_per_sample([N_IN, *h, N_OUT]) / t / 1e9
                           if t else None) for s, t in secs.items()},
            "speedup_vs_pytorch": (secs["pytorch"] / secs["deltaprop"]
                                   if secs["pytorch"] and secs["deltaprop"] else None)}


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
    t.add_column("targets")
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
