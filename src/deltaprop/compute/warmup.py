"""Compiling a run's kernels before its first step: visibly, and so that Ctrl-C works.

The first call of a kernel compiles it (tens of seconds cold) or loads it from Numba's cache.
Doing that in the first training step made a silent pause, left SIGINT to the trainer's own
handler (so Ctrl-C did nothing until the compile ended), and counted the compile in epoch 1's
samples/s. `compile_kernels` runs the warm-up calls in a thread the main thread waits for in
short slices (a KeyboardInterrupt reaches it at once; the daemon thread is abandoned on exit),
says when a compile is under way, and reports whether the cache was used and how long it took.
"""

import threading
import time


def compile_kernels(work, *, what: str, note, compiled=lambda: (), helper=lambda: None,
                    slow_after: float = 1.0) -> float:
    """Run `work()` (calls that compile the kernels), reporting through `note`; returns seconds.
    `compiled()`, asked after the work: the Numba dispatchers and C callbacks it compiled or
    loaded, whose cache statistics say which. `helper()`, called first: a process compiling some
    of the kernels meanwhile (compute/compile_helper.py) or None; it is ended when the work ends,
    however it ends."""
    from .compile_helper import stop

    failure: list[BaseException] = []

    def target():
        try:
            work()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    t0 = time.perf_counter()
    process = helper()
    try:
        thread = threading.Thread(target=target, name="deltaprop-compile", daemon=True)
        thread.start()
        thread.join(slow_after)
        if thread.is_alive():
            note(f"compiling kernels for {what} (first run only: later runs load them from the cache) ...")
        while thread.is_alive():
            thread.join(0.1)  # in slices: Ctrl-C raises KeyboardInterrupt here at once
    finally:
        stop(process)
    if failure:
        raise failure[0]
    seconds = time.perf_counter() - t0
    note(f"compiled kernels for {what} in {seconds:.1f} s" if any(map(_was_compiled, compiled()))
         else f"kernels for {what} loaded from the cache in {seconds:.1f} s")
    return seconds


def _was_compiled(f) -> bool:
    if hasattr(f, "stats"):  # a dispatcher: misses are signatures compiled in this process
        return sum(f.stats.cache_misses.values()) > 0
    return getattr(f, "cache_hits", 1) == 0  # a C callback, compiled unless loaded
