"""The benchmark's numbers: what the driver's timings mean.

`result_row` turns one batch size's epoch seconds of one section into the report row (median
samples/s and GFLOP/s per system, deltaprop's ratio to every peer, its share of the section's
GEMM peak, the targets as met / not met: reported, never asserted, and the last-batch losses of
the systems that trained the same run, as a sanity check); `threads_row` does the same for one
thread count of `--threads-scaling`, `scaling_row` for one point of the width/batch sweeps;
`machine_info` describes the machine and library versions. tables.py renders these.

    import report                                  # with bench/ on sys.path
    row = report.result_row(128, (256, 128), times, losses, status, section, fps, peak)
"""

import os
import platform
from importlib import metadata

from spec import N_IN, N_OUT, SAME_RUN, default_threads, flops_per_sample, median


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
            "python": platform.python_version(), "openblas": openblas_info(),
            "versions": {d: version(d) for d in ("deltaprop", "numpy", "numba", "torch", "jax", "jaxlib",
                                                 "scikit-learn")}}


def openblas_info() -> dict:
    """The kernel set of NumPy's OpenBLAS (the library deltaprop's GEMMs call, and the NumPy and
    GEMM-peak workers'), and OPENBLAS_CORETYPE if the environment forces one."""
    info = {"core": None, "version": None, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        import numpy  # noqa: F401  (loads the library)
        from threadpoolctl import threadpool_info
        for p in threadpool_info():
            if p.get("internal_api") == "openblas" and "numpy" in p.get("filepath", ""):
                info.update(core=p.get("architecture"), version=p.get("version"))
    except Exception:
        pass
    return info


def _sps(times, status, systems, key, samples):
    runs, sps = {}, {}
    for s in systems:
        secs = times[s].get(key, []) if status[s]["status"] == "ok" else []
        runs[s] = [samples / t for t in secs]
        sps[s] = median(runs[s])
    return runs, sps


def _ratios(sps, systems):
    d = sps["deltaprop"]
    return {p: (d / sps[p] if sps[p] and d else None) for p in systems if p != "deltaprop"}


def loss_check(losses: dict) -> dict:
    """The last-batch losses of the systems that trained the same run (same data, init, order,
    loss, lr) and the largest relative difference from deltaprop's."""
    same = {s: v for s, v in losses.items() if s in SAME_RUN and v is not None}
    ref = same.get("deltaprop")
    rel = max((abs(v - ref) / abs(ref) for v in same.values()), default=None) if ref else None
    return {"losses": same, "max_rel_diff_vs_deltaprop": rel}


def result_row(b, hidden, times, losses, status, sec, fps, peak) -> dict:
    """The row of batch size `b` of section `sec`: times[system][(hidden, b)] are epoch seconds
    of sec["samples"] samples, `fps` the FLOPs per sample, `peak` the section's GEMM peak in
    GFLOP/s (None if unmeasured)."""
    key, systems = (hidden, b), sec["systems"]
    runs, sps = _sps(times, status, systems, key, sec["samples"])
    ratios = _ratios(sps, systems)
    gflops = {s: (v * fps / 1e9 if v else None) for s, v in sps.items()}
    frac = {s: (g / peak if g is not None and peak else None) for s, g in gflops.items()}
    targets = {}
    for p, need in sec["targets"].get(b, {}).items():
        r = ratios.get(p)
        targets[p] = {"target": need, "ratio": r, "met": None if r is None else r >= need}
    pt = sec.get("peak_target")
    if pt and b == pt[0]:
        f = frac["deltaprop"]
        targets["peak"] = {"target": pt[1], "fraction": f, "met": None if f is None else f >= pt[1]}
    last = {s: losses[s].get(key) for s in systems}
    return {"batch": b, "samples_per_s": sps, "runs_samples_per_s": runs, "ratios": ratios,
            "gflops": gflops, "peak_fractions": frac,
            "deltaprop_gflops": gflops["deltaprop"], "peak_fraction": frac["deltaprop"], "targets": targets,
            "last_batch_loss": last, "loss_check": loss_check(last)}


def threads_row(t, b, hidden, times, status, samples, fps, peak) -> dict:
    """One thread count of --threads-scaling: samples/s, ratios, GFLOP/s and % of that count's peak."""
    systems = list(times)
    runs, sps = _sps(times, status, systems, (hidden, b), samples)
    gflops = {s: (v * fps / 1e9 if v else None) for s, v in sps.items()}
    return {"threads": t, "samples_per_s": sps, "runs_samples_per_s": runs, "ratios": _ratios(sps, systems),
            "gflops": gflops, "gemm_peak": peak,
            "peak_fractions": {s: (g / peak if g is not None and peak else None) for s, g in gflops.items()}}


def scaling_row(h, b, times, samples) -> dict:
    """One point of a scaling sweep: times[system][(tuple(h), b)] is the median epoch seconds."""
    secs = {s: times.get(s, {}).get((tuple(h), b)) for s in ("deltaprop", "pytorch")}
    return {"hidden": h, "batch": b, "seconds": secs,
            "gflops": {s: (samples * flops_per_sample([N_IN, *h, N_OUT]) / t / 1e9
                           if t else None) for s, t in secs.items()},
            "speedup_vs_pytorch": (secs["pytorch"] / secs["deltaprop"]
                                   if secs["pytorch"] and secs["deltaprop"] else None)}
