"""The thread tuner, and why it is safe: changing the thread count between chunks does not change
a single bit of the result."""

import numpy as np

from deltaprop.compute.engine import Engine, OptimizerSpec
from deltaprop.plugins.manager import get_registry
from deltaprop.training.threads import ThreadTuner


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_tuner_switches_to_the_faster_count_and_backs_off(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("deltaprop.training.threads.time.monotonic", clock)
    tuner = ThreadTuner(2, probe_every_s=1.0, max_backoff_s=8.0)
    speed = {2: 1.0, 1: 0.5}  # seconds per sample: 1 thread is faster (a busy machine)
    used = []
    for _ in range(40):
        t = tuner.choose()
        used.append(t)
        tuner.record(t, speed[t] * 100, 100)
        clock.t += 0.5
    assert tuner.current == 1 and used[-10:].count(1) >= 8
    speed = {2: 0.2, 1: 0.5}  # the machine became idle: back to 2 threads at the next probe
    for _ in range(60):
        t = tuner.choose()
        tuner.record(t, speed[t] * 100, 100)
        clock.t += 0.5
    assert tuner.current == 2
    assert tuner.every > tuner.base_every  # losing probes back off


def test_changing_threads_between_chunks_is_bit_identical():
    reg = get_registry()
    rng = np.random.default_rng(0)
    sizes = [30, 150, 70, 5]
    X = rng.normal(size=(400, 30)).astype(np.float32)
    y = rng.integers(0, 5, 400)
    perm = rng.permutation(400)
    results = []
    for schedule in ([2, 2, 2, 2], [1, 2, 1, 2]):
        eng = Engine(sizes, ["relu", "tanh", "identity"], "cross_entropy", "float32", reg, threads=2)
        theta = eng.flatten([(rng.normal(size=(o, i)) * 0.1, np.zeros(o)) for i, o in zip(sizes, sizes[1:])]) \
            if not results else results[0][1].copy()
        start = theta.copy()
        state, grad = np.zeros((2, theta.size), np.float32), np.zeros_like(theta)
        for chunk, threads in enumerate(schedule):
            eng.threads = threads
            done, _, _ = eng.run_steps(X, np.zeros(30, np.float32), np.ones(30, np.float32), y, perm,
                                       chunk * 100, 4, 25, theta, grad, OptimizerSpec("adam"), state,
                                       np.full(4, 1e-3), chunk * 4, seed=3, dropout=[0.1, 0.1, 0.0])
            assert done == 4
        results.append((theta, start))
    assert results[0][0].tobytes() == results[1][0].tobytes()
