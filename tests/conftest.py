"""Shared test setup: the NumPy oracle importable as `reference`, a temporary DELTAPROP_HOME, a
private temp dir for every test, one plugin registry per session and cached `Engine`s (each new
activation set costs a ~10 s compile the first time; later runs load it from the cache)."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import deltaprop  # noqa: F401  (first: it sets NUMBA_CACHE_DIR before anything imports Numba)

TESTS = Path(__file__).resolve().parent
# Every DELTAPROP_HOME the tests use is a temporary one (train without --run-dir, the job queue):
# a test never writes into the checkout or a user's real queue.
os.environ["DELTAPROP_HOME"] = tempfile.mkdtemp(prefix="deltaprop-test-home-")
# Before anything imports scipy: scikit-learn's array-API estimator check (test_sklearn.py) runs
# instead of skipping itself.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
sys.path.insert(0, str(TESTS))

import reference as ref  # noqa: E402

# The machine's temp dir, before any test replaces it (private_tmpdir)
MACHINE_TMP = tempfile.gettempdir()


def pytest_configure(config):
    """A parallel kernel that Numba could not parallelise is a bug (it once cost 20x): fail the test
    that compiled it. CI always compiles cold, so every kernel is checked there. Added here, not in
    pyproject.toml: resolving the class there imports Numba before deltaprop sets its cache
    directory, and Numba then wrote its cache into the checkout."""
    config.addinivalue_line("filterwarnings", "error::numba.core.errors.NumbaPerformanceWarning")


@pytest.fixture(autouse=True)
def private_tmpdir(monkeypatch, tmp_path_factory):
    """Every test gets a temp dir of its own (TMPDIR for its subprocesses, tempfile's for itself):
    state kept in the machine's temp dir, such as the registry of the machine's workers
    (/tmp/deltaprop-workers-UID), is not shared with other tests or other users of this machine.
    An in-process `cli("worker")` registers pytest's own pid there and keeps the lock for the
    session: later worker processes would see a phantom "other worker". Short (directly in the
    machine's temp dir, not under tmp_path): Ray, which follows TMPDIR, needs socket paths under
    108 bytes. Higher-scoped fixtures (the module's Ray head) are set up before this one and keep
    the machine's temp dir."""
    tmp_path_factory.getbasetemp()  # pytest's own base (tmp_path), found in the temp dir on first use: not this one
    path = tempfile.mkdtemp(prefix="dp-tmp-", dir=MACHINE_TMP)
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def registry():
    """Builtins plus every installed entry-point plugin."""
    from deltaprop.plugins.manager import load_registry
    return load_registry()


@pytest.fixture(scope="session")
def engine(registry):
    """engine(sizes, activations, loss, dtype="float64", threads=2) -> a cached Engine."""
    from deltaprop.compute.engine import Engine
    cache = {}

    def make(sizes, activations, loss, dtype="float64", threads=2):
        key = (tuple(sizes), tuple(activations), loss, np.dtype(dtype).name, threads)
        if key not in cache:
            cache[key] = Engine(list(sizes), list(activations), loss, dtype, registry, threads=threads)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def ref_act(registry):
    """ref_act(name) -> what reference.py takes for a registry activation: the builtin's name (the
    oracle's own independent formulas), or for a plugin an (f, f') pair built from its jitted
    scalar functions (z -> f'(z), whatever its derivative_of)."""
    memo = {}

    def resolve(name):
        act = registry.activations[name]
        if act.source == "deltaprop" and name in ref.ACTIVATIONS:
            return name
        if name not in memo:
            f, d = act.forward, act.derivative
            if act.derivative_of == "output":
                def fp(z):
                    return float(d(f(float(z))))
            else:
                def fp(z):
                    return float(d(float(z)))
            memo[name] = (np.vectorize(lambda z: float(f(float(z))), otypes=[np.float64]),
                          np.vectorize(fp, otypes=[np.float64]))
        return memo[name]

    return resolve


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3000 x 32 float32 rows, 4 linearly separable classes: the data of the process-level fault
    tests (resume, worker), big enough that a run takes a few seconds."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 32)).astype(np.float32)
    y = (X @ rng.normal(size=(32, 4))).argmax(1)
    np.savez(d / "d.npz", X=X, y=y)
    return d / "d.npz"
