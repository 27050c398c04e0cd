"""A second process that compiles part of the network kernels while this one compiles the rest.

A cold compile of the network kernels for one dtype is a single thread of Numba type inference
and LLVM work (~11 s on this project's 2-core machine). `run_steps` calls `forward` first and then
`loss_delta`, `backward` and `coefficients`; `Engine.predict` calls `outputs`. Numba looks every
callee up in its on-disk cache before compiling it, so a second process that compiles those four
(with the argument types run_steps and predict pass: `signatures(dtype)`) while this one compiles
`forward` leaves them ready to be loaded when run_steps reaches them: about 5 s less on 2 cores
(`bench/startup.py`). Numba writes each cache file under a temporary name and renames it, and an
index entry whose data file is not written yet reads as a miss: a kernel the helper has not
finished is compiled here as well, as it would have been without the helper.

    helper = start(engine.kernels, dtype, threads)  # None: cached, or under 2 threads or cores
    ...                                             # compile run_steps here
    stop(helper)                                    # ends it if it is still running

The helper runs at a lower priority, so this process keeps its core when others compete.
"""

import os
import subprocess
import sys

import numpy as np

from .._system import cores

_HELPER_KERNELS = ("loss_delta", "backward", "coefficients", "outputs")  # the order run_steps needs them
# What decides whether a helper is worth starting: the two that are compiled, and cached, whenever
# run_steps is. `coefficients` is cached per source path (kernels/optim.py), so a second checkout
# sharing the cache lacks it although run_steps, in a file named by its hash, loads; `outputs` is
# compiled only by a predict. A helper started for those alone would start again on every warm run.
_DECIDING = ("loss_delta", "backward")


def signatures(dtype) -> dict[str, tuple]:
    """Numba argument types of the helper's kernels as run_steps and Engine.predict call them for a
    model of `dtype` (they never see the data, so its dtype does not matter)."""
    from numba import from_dtype
    from numba import types as nt

    dt = from_dtype(np.dtype(dtype))
    v, m = nt.Array(dt, 1, "C"), nt.Array(dt, 2, "C")
    iv, fv, fm = nt.Array(nt.int64, 1, "C"), nt.Array(nt.float64, 1, "C"), nt.Array(nt.float64, 2, "C")
    i, f = nt.int64, nt.float64
    return {
        "loss_delta": (i, i, i, i, i, v, v, v, iv, m, f, fv, fv, iv),
        "backward": (i, v, v, v, iv, iv, iv, iv, iv, fv, i, i, v, v, v, fm),
        "coefficients": (v, i, f, f, fv, i),
        "outputs": (v, v, i, i, i, i, m, i),
    }


def _cached(dispatcher, sig) -> bool:
    """Whether Numba's on-disk cache holds `sig` for `dispatcher` (the key its own lookup uses)."""
    cache = dispatcher._cache
    key = cache._index_key(sig, dispatcher.targetctx.codegen())
    return key in cache._cache_file._load_index()


def start(kernels, dtype, threads: int) -> subprocess.Popen | None:
    """Start the helper for the kernels of `kernels` (the network module) that the cache lacks, when
    the run may use 2 threads or more (`threads`) on as many cores."""
    if threads < 2 or cores() < 2:
        return None
    sigs = signatures(dtype)
    try:
        missing = [name for name in _HELPER_KERNELS if not _cached(getattr(kernels, name), sigs[name])]
    except Exception:  # Numba's cache internals differ (another version), or no cache: compile here
        return None
    if not set(missing) & set(_DECIDING):
        return None
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"import sys; sys.path.insert(0, {root!r}); from {__name__} import main; main(sys.argv[1:])"
    try:
        return subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), np.dtype(dtype).name, *missing],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def stop(helper: subprocess.Popen | None) -> None:
    """End the helper if it still runs (everything it compiles is then compiled here already)."""
    if helper is not None:
        if helper.poll() is None:
            helper.kill()
        helper.wait()


def _die_with_parent(parent: int) -> None:
    """Linux: end this process when `parent`, the process that started it, ends (a SIGKILLed
    `deltaprop train` leaves no helper compiling on)."""
    try:
        import ctypes
        import signal
        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL)) != 0:  # PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before prctl took effect
        os._exit(0)


def main(argv: list[str]) -> None:
    """The helper process: argv = [parent pid, dtype, kernel names...]; compiles the named kernels
    into the shared cache."""
    _die_with_parent(int(argv[0]))
    os.nice(5)
    import warnings

    from numba.core.errors import NumbaPerformanceWarning

    # A kernel Numba could not parallelise is not cached from here: the process that needs it then
    # compiles it and shows the warning (the tests turn it into a failure there).
    warnings.simplefilter("error", NumbaPerformanceWarning)
    from .factory import network_kernels

    kernels, sigs = network_kernels(), signatures(argv[1])
    for name in argv[2:]:
        getattr(kernels, name).compile(sigs[name])
