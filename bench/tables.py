"""The benchmark's tables: the report dict of rounds.py rendered with rich.

One table per section (float32, float64, wide): samples/s per system (median of the rounds),
deltaprop's ratio to every peer, its GFLOP/s and share of the section's GEMM peak, and the
targets as met / not met; under it the peak, the threads each system really ran (affinity, OS
threads that accumulated CPU time in the timed epochs, cores' worth of CPU used) and the
last-batch loss check. Then `--threads-scaling` and `--scaling`, when present.

    import tables                                  # with bench/ on sys.path
    tables.print_table(rounds.main_bench(opts, log), rich.console.Console())
"""

from spec import LABELS, SHORT


def _k(v):
    return "—" if v is None else (f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}")


def _x(v):
    return "—" if v is None else f"{v:.2f}×"


def _pct(v):
    return "—" if v is None else f"{v:.0%}"


def _mark(met):
    return "n/a" if met is None else ("[green]met[/]" if met else "[red]not met[/]")


def threads_line(label, info) -> str:
    tu = info.get("threads_used") or {}
    names = ", ".join(f"{n}×{c}" for n, c in tu.get("busy_names", {}).items())
    cores = tu.get("cores_used")
    allnames = ", ".join(f"{n}×{c}" for n, c in tu.get("all_names", {}).items())
    return (f"  {label}: affinity {info.get('affinity')}, library threads {info.get('threads')}; "
            f"{tu.get('threads_busy', '—')} of {tu.get('threads_total', '—')} OS threads ({allnames}) ran in the "
            f"timed epochs ({names}); {'—' if cores is None else f'{cores:.2f}'} cores' worth of CPU")


def print_section(name, sec, console) -> None:
    from rich.table import Table

    cfg, sysst = sec["config"], sec["systems"]
    systems = cfg["systems"]
    peers = [s for s in systems if s != "deltaprop"]
    t = Table(title=f"{name}: samples/s, {cfg['sizes']} relu, {cfg['dtype']} SGD, {cfg['samples']} "
                    f"samples/epoch, median of the rounds")
    t.add_column("batch", justify="right")
    for s in systems:
        t.add_column(LABELS[s] if sysst[s]["status"] == "ok" else f"{LABELS[s]} ({sysst[s]['status']})",
                     justify="right")
    for p in peers:
        t.add_column(f"÷{SHORT[p]}", justify="right")
    t.add_column("GFLOP/s", justify="right")
    t.add_column("% peak", justify="right")
    t.add_column("targets")
    for row in sec["results"]:
        marks = []
        for k, tg in row["targets"].items():
            label = f"≥{tg['target']:.0%} peak" if k == "peak" else f"{SHORT[k]} ≥{tg['target']}×"
            marks.append(f"{label}: {_mark(tg['met'])}")
        g = row["deltaprop_gflops"]
        t.add_row(str(row["batch"]), *[_k(row["samples_per_s"][s]) for s in systems],
                  *[_x(row["ratios"][p]) for p in peers], "—" if g is None else f"{g:.1f}",
                  _pct(row["peak_fraction"]), "; ".join(marks) or "—")
    console.print(t)
    gp = sec["gemm_peak"]
    peak = "—" if gp["gflops"] is None else f"{gp['gflops']:.1f}"
    runs = ", ".join(f"{v:.0f}" for v in gp["runs"])
    console.print(f"{gp['dtype']} GEMM peak (numpy {gp['n']}×{gp['n']}, OpenBLAS {gp['threads']} threads on cores "
                  f"{gp['affinity']}, best of several per round; rounds {runs}): {peak} GFLOP/s; "
                  f"FLOPs/sample {sec['flops_per_sample']:,}")
    for row in sec["results"]:
        gf = ", ".join(f"{SHORT[s]} {v:.0f} ({row['peak_fractions'][s]:.0%})" for s, v in row["gflops"].items()
                       if v is not None and row["peak_fractions"][s] is not None)
        lc = row["loss_check"]
        losses = ", ".join(f"{SHORT[s]} {v:.4f}" for s, v in lc["losses"].items())
        rel = lc["max_rel_diff_vs_deltaprop"]
        console.print(f"batch {row['batch']}: GFLOP/s (% peak) {gf}; last-batch loss {losses} "
                      f"(max rel. diff from deltaprop {'—' if rel is None else f'{rel:.1e}'})")
    console.print("threads (each worker pinned with sched_setaffinity; no XLA flags):")
    for s in systems:
        st = sysst[s]
        if st["status"] == "ok":
            console.print(threads_line(LABELS[s], st.get("info", {})))
        else:
            console.print(f"  [yellow]{LABELS[s]}: {st['status']}[/] — {st.get('note', '')}")
    sk = sysst.get("sklearn", {}).get("info", {})
    if sk.get("dtype"):
        console.print(f"note: scikit-learn computed in {sk['dtype']} (own init and shuffle; reported as is)")


def print_table(report: dict, console) -> None:
    for name, sec in report["sections"].items():
        print_section(name, sec, console)
        console.print()
    m = report["machine"]
    v = m["versions"]
    console.print(f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_available']} available), "
                  f"{m['threads']} threads per system; python {m['python']}, numpy {v['numpy']}, numba {v['numba']}, "
                  f"torch {v['torch'] or '—'}, jax {v['jax'] or '—'}, scikit-learn {v['scikit-learn'] or '—'}")
    ob = m.get("openblas") or {}
    forced = ob.get("OPENBLAS_CORETYPE")
    console.print(f"OpenBLAS {ob.get('version') or '?'} kernels: {ob.get('core') or '?'}"
                  + (f" (forced by OPENBLAS_CORETYPE={forced}: the GEMM peak and deltaprop's products run at "
                     "that kernel set's speed; make bench unsets it)" if forced else ""))
    if "threads_scaling" in report:
        print_threads(report["threads_scaling"], console)
    if "scaling" in report:
        print_scaling(report["scaling"], console)


def print_threads(ts: dict, console) -> None:
    from rich.table import Table
    systems = list(ts["systems"])
    t = Table(title=f"--threads-scaling: samples/s at batch {ts['batch']}, float32 784-256-128-10, "
                    f"{ts['samples']} samples, median of the rounds")
    t.add_column("threads", justify="right")
    for s in systems:
        t.add_column(LABELS[s], justify="right")
    for s in systems[1:]:
        t.add_column(f"÷{SHORT[s]}", justify="right")
    t.add_column("GEMM peak", justify="right")
    t.add_column("dp % peak", justify="right")
    for row in ts["rows"]:
        pk = row["gemm_peak"]
        t.add_row(str(row["threads"]), *[_k(row["samples_per_s"][s]) for s in systems],
                  *[_x(row["ratios"].get(s)) for s in systems[1:]], "—" if pk is None else f"{pk:.0f}",
                  _pct(row["peak_fractions"].get("deltaprop")))
    console.print(t)
    for s, st in ts["systems"].items():
        if st["status"] != "ok":
            console.print(f"[yellow]threads scaling, {LABELS[s]}: {st['status']}[/] — {st.get('note', '')}")


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
