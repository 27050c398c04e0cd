"""Choosing the thread count while training, chunk by chunk.

The kernels split work in fixed tiles, so results do not depend on the thread count (see
kernels/network.py). That lets a run change it at any chunk boundary: when other processes take
the cores, threads that wait on each other at every parallel region cost more than they give
(measured on 2 cores with one busy-looping neighbour, batch 128: 28k samples/s with 2 threads,
60k with 1). The tuner keeps a time-per-sample estimate per thread count, probes another count
now and then, and uses the fastest; a probe that loses backs off exponentially (to 1 % overhead).
"""

import threading
import time

from .._system import cores


class ThreadTuner:
    def __init__(self, max_threads: int, probe_every_s: float = 4.0, max_backoff_s: float = 60.0):
        self.options = sorted({max_threads, max(1, max_threads // 2), 1}, reverse=True)
        self.current = max_threads
        self.seconds_per_sample: dict[int, tuple[float, float]] = {}  # threads -> (estimate, when)
        self.base_every = self.every = probe_every_s
        self.max_backoff = max_backoff_s
        self.next_probe = time.monotonic() + probe_every_s
        self.probing: int | None = None

    def choose(self) -> int:
        """The thread count for the next chunk."""
        if len(self.options) > 1 and self.probing is None and time.monotonic() >= self.next_probe:
            others = [t for t in self.options if t != self.current]
            # the alternative measured longest ago
            self.probing = min(others, key=lambda t: self.seconds_per_sample.get(t, (0, 0.0))[1])
            return self.probing
        return self.current

    def record(self, threads: int, seconds: float, samples: int) -> None:
        """Report a chunk; after a probe, switch if the probed count was faster."""
        if samples <= 0:
            return
        now = time.monotonic()
        rate = seconds / samples
        old = self.seconds_per_sample.get(threads)
        fresh = old is not None and now - old[1] < 2 * self.every and threads == self.current
        self.seconds_per_sample[threads] = (0.5 * old[0] + 0.5 * rate if fresh else rate, now)
        if threads != self.probing:
            return
        self.probing = None
        mine = self.seconds_per_sample.get(self.current)
        if mine is not None and rate < 0.9 * mine[0]:
            self.current, self.every = threads, self.base_every  # switch; keep checking often
        else:
            self.every = min(self.max_backoff, self.every * 2)
        self.next_probe = now + self.every


class SharedThreadTuner:
    """One thread count for many short runs in this process (the scikit-learn estimators' fits).

    The trainer's own tuner probes another thread count every few seconds of one run, but the fits
    of a GridSearchCV or cross_val_score last about a second each: each would run with every core
    and never find out that, on a busy machine, threads waiting for each other at every parallel
    region cost more than they give (digits, 2 cores, one busy neighbour: 2 threads ~6x slower
    than 1). This keeps one `ThreadTuner` for all fits, fed with each fit's time per unit of work
    (rows x epochs x weights, so networks of different sizes compare). Results do not depend on
    the thread count (the kernels' tiles are fixed)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tuner = None

    def choose(self) -> int:
        with self.lock:
            if self.tuner is None:
                self.tuner = ThreadTuner(cores())
            return self.tuner.choose()

    def record(self, threads: int, seconds: float, work: int) -> None:
        with self.lock:
            self.tuner.record(threads, seconds, work)
