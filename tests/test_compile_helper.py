"""The compile helper (compute/compile_helper.py): a second process compiling the kernels run_steps
calls after forward, so that a cold start compiles in two processes at once."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from deltaprop._system import cores
from deltaprop.compute import compile_helper
from deltaprop.compute.warmup import compile_kernels

two_cores = pytest.mark.skipif(cores() < 2, reason="the helper runs only with 2 cores or more")


def _train_and_predict(engine, dtype):
    rng = np.random.default_rng(0)
    d = int(engine.sizes[0])
    X = rng.random((40, d)).astype(dtype)
    y = rng.integers(0, int(engine.sizes[-1]), 40)
    theta = np.zeros(engine.n_params, dtype)
    state = np.zeros((2, theta.size), dtype)
    mean, inv_std = np.zeros(d, dtype), np.ones(d, dtype)
    from deltaprop.compute.engine import OptimizerSpec
    engine.run_steps(X, mean, inv_std, y, np.arange(40), 0, 2, 16, theta, np.zeros_like(theta),
                     OptimizerSpec("adam"), state, np.full(2, 0.01), 0)
    engine.predict(X, mean, inv_std, theta)


SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from deltaprop.compute.engine import Engine, OptimizerSpec
    from deltaprop.plugins.manager import load_registry
    sys.path.insert(0, sys.argv[1])
    from test_compile_helper import _train_and_predict
    dtype = sys.argv[2]
    e = Engine([6, 5, 3], ["relu", "identity"], "cross_entropy", dtype, load_registry(entry_points=False), 2)
    helper = e.compile_helper()
    started = helper is not None
    if started:
        helper.wait()  # let it finish first: then every kernel it compiled must load here
    _train_and_predict(e, dtype)
    stats = {n: [sum(getattr(e.kernels, n).stats.cache_hits.values()),
                 sum(getattr(e.kernels, n).stats.cache_misses.values())]
             for n in ("loss_delta", "backward", "coefficients", "outputs", "forward", "run_steps")}
    print(json.dumps({"started": started, "rc": helper.returncode if started else None, "stats": stats,
                      "again": e.compile_helper() is not None}))
""")


@two_cores
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_helper_fills_a_fresh_cache_and_this_process_loads_what_it_compiled(tmp_path, dtype):
    """In an empty cache the helper starts, compiles its four kernels, and the main process loads
    them instead of compiling them (cache hits, no misses: `signatures` are the very argument types
    of run_steps' and predict's calls, or the helper's work would be wasted); what only the main
    process compiles (forward, run_steps) is a miss. With everything cached, no helper starts."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SCRIPT, tests, dtype], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["started"] and report["rc"] == 0, report
    for name in ("loss_delta", "backward", "coefficients", "outputs"):
        assert report["stats"][name] == [1, 0], (name, report["stats"])
    for name in ("forward", "run_steps"):
        assert report["stats"][name] == [0, 1], (name, report["stats"])
    assert not report["again"]


def test_no_helper_when_everything_is_cached_or_on_one_core(engine, monkeypatch):
    """No helper when the cache has the network module's kernels (the test runs in a clean clone
    too, whose kernels/optim.py is cached apart from the shared network module), or on one core."""
    e = engine([5, 7, 3], ["tanh", "identity"], "cross_entropy", "float64")
    _train_and_predict(e, "float64")
    assert e.compile_helper() is None  # all four are in the (session's) cache now
    # only an imported kernel missing (another checkout's optim.py, sharing this cache): no helper
    monkeypatch.setattr(compile_helper, "_cached", lambda d, sig: d.py_func.__name__ != "coefficients")
    assert e.compile_helper() is None
    # nor for predict's outputs alone: training never compiles it, the helper would start every time
    monkeypatch.setattr(compile_helper, "_cached", lambda d, sig: d.py_func.__name__ != "outputs")
    assert e.compile_helper() is None
    monkeypatch.setattr(compile_helper, "_cached", lambda d, sig: d.py_func.__name__ != "backward")
    monkeypatch.setattr(compile_helper, "cores", lambda: 2)
    helper = e.compile_helper()
    assert helper is not None and helper.args[-3:] == [str(os.getpid()), "float64", "backward"]
    compile_helper.stop(helper)
    monkeypatch.setattr(compile_helper, "_cached", lambda d, sig: False)
    assert compile_helper.start(e.kernels, "float64", 1) is None  # a run told to use one thread
    monkeypatch.setattr(compile_helper, "cores", lambda: 1)
    assert e.compile_helper() is None


def test_a_helper_still_running_is_ended_when_the_compile_ends_or_is_interrupted():
    """Whether the work finishes or is interrupted (Ctrl-C reaches compile_kernels as a
    KeyboardInterrupt), the helper process does not outlive it."""
    started = []

    def helper():
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return started[-1]

    compile_kernels(lambda: None, what="t", note=lambda m: None, helper=helper)

    def interrupted():
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        compile_kernels(interrupted, what="t", note=lambda m: None, helper=helper)
    assert len(started) == 2 and all(p.poll() is not None for p in started)
    assert time.monotonic() - t0 < 30


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended
    except FileNotFoundError:
        return True


@two_cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_helper_ends_with_a_killed_parent(tmp_path):
    """SIGKILL of the process compiling (no finally runs) does not leave its helper compiling on."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    script = textwrap.dedent("""
        import time
        from deltaprop.compute.engine import Engine
        from deltaprop.plugins.manager import load_registry
        e = Engine([6, 5, 3], ["relu", "identity"], "cross_entropy", "float64", load_registry(entry_points=False), 2)
        print(e.compile_helper().pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = int(parent.stdout.readline())
        time.sleep(1.0)  # the helper is compiling by now
        assert not _gone(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 0.5  # PR_SET_PDEATHSIG acts at once; its compile takes seconds more
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)


def test_training_starts_the_helper_with_the_runs_threads(tmp_path, monkeypatch):
    """The trainer's warm-up is what asks for the helper (with the run's own thread count), and it
    is ended when the warm-up ends."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\nhidden = [5]\n[data]\ntrain = "{tmp_path / "d.npz"}"\n'
                   '[training]\nepochs = 1\nbatch_size = 16\nthreads = 2\n')
    calls, helpers = [], []

    def fake_start(kernels, dtype, threads):
        calls.append((kernels.__name__, str(dtype), threads))
        helpers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return helpers[-1]

    monkeypatch.setattr(compile_helper, "start", fake_start)
    import deltaprop
    deltaprop.train(cfg, run_dir=tmp_path / "run")
    assert len(calls) == 1 and calls[0][0].startswith("deltaprop_net_") and calls[0][1:] == ("float32", 2)
    assert helpers[0].poll() is not None
