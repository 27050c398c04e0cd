"""Gradients of the Numba network, and the activation derivative check.

For every registry activation (collected at import: a new plugin is covered automatically) and
both losses, `Engine.gradient` is compared with
  1) reference.loss_and_grads (the delta rule in plain NumPy), to ~1e-10;
  2) reference.numerical_grads (central differences of the NumPy loss), to 1e-6;
  3) central differences of the kernel's *own* loss (theta perturbed, `Engine.gradient` called
     again), on 50 random parameters, to 1e-6.
Then `deltaprop.plugins.gradcheck.check_derivative`: every builtin passes, wrong derivatives fail,
and the registry refuses to build an engine with one.
"""

import math
import types

import numba
import numpy as np
import pytest
import reference as ref

import deltaprop
from deltaprop.errors import PluginError
from deltaprop.plugins import builtin
from deltaprop.plugins.activation import Activation
from deltaprop.plugins.gradcheck import TOLERANCE, check_derivative
from deltaprop.plugins.manager import load_registry

ACT_NAMES = sorted(load_registry().activations)
SIZES = [5, 7, 6, 3]  # the same shape as test_kernels: the same compiled kernels
N = 12
MARGIN = 1e-3  # hidden |z| this far from 0: a parameter step of 1e-6 never crosses a kink
H = 1e-6

VARIANTS = []
for _a in ACT_NAMES:
    VARIANTS += [(_a, "cross_entropy", "identity"), (_a, "mse", "identity")]
    if _a != "identity":
        VARIANTS.append((_a, "mse", _a))
IDS = [f"{a}-{l}-out_{o}" for a, l, o in VARIANTS]


def flat(layers):
    return np.concatenate([np.ravel(x) for layer in layers for x in layer])


def rel_err(a, b):
    """Norm-wise relative error."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))


def make_problem(hidden, loss, out, sizes=SIZES, seed0=100):
    for seed in range(seed0, seed0 + 500):
        rng = np.random.default_rng(seed)
        params = ref.init_params(sizes, seed=seed)
        X = rng.normal(size=(N, sizes[0]))
        y = rng.uniform(size=(N, sizes[-1])) if loss == "mse" else rng.integers(0, sizes[-1], size=N)
        zs, _ = ref.forward(params, X, hidden, out)
        checked = zs[:-1] if out == "identity" else zs
        if min(np.abs(z).min() for z in checked) > MARGIN:
            return params, X, y
    raise AssertionError("no seed keeps the pre-activations away from 0")


@pytest.fixture
def setup(engine, ref_act, act, loss, out):
    hidden, rout = [ref_act(act)] * 2, ref_act(out)
    params, X, y = make_problem(hidden, loss, rout)
    eng = engine(SIZES, [act, act, out], loss)
    return eng, params, X, y, hidden, rout


@pytest.mark.parametrize("act,loss,out", VARIANTS, ids=IDS)
def test_gradient_matches_reference(setup, loss):
    eng, params, X, y, hidden, out = setup
    theta = eng.flatten(params)
    before = theta.copy()
    L, g = eng.gradient(X, y, theta)
    np.testing.assert_array_equal(theta, before)  # gradient() never moves theta
    want_L, want = ref.loss_and_grads(params, X, y, hidden, loss, out)
    assert L == pytest.approx(want_L, rel=1e-12)
    want = flat(want)
    # elementwise, relative to the largest gradient entry for the tiny ones
    assert np.max(np.abs(g - want)) <= 1e-10 * np.max(np.abs(want))
    assert np.max(np.abs(g - want) / np.maximum(np.abs(want), 1e-3 * np.max(np.abs(want)))) <= 1e-10
    for (dW, db), (W, b) in zip(eng.layer_views(g), params):
        assert dW.shape == W.shape and db.shape == b.shape
    num = flat(ref.numerical_grads(params, X, y, hidden, loss, out))
    assert rel_err(g, num) <= 1e-6


@pytest.mark.parametrize("act,loss,out", VARIANTS, ids=IDS)
def test_kernel_loss_central_differences(setup):
    """The kernel against itself: d(kernel loss)/d(theta_i) by central differences."""
    eng, params, X, y, _, _ = setup
    theta = eng.flatten(params)
    L0, g = eng.gradient(X, y, theta)
    idx = np.random.default_rng(0).choice(theta.size, size=min(50, theta.size), replace=False)
    fd = np.empty(idx.size)
    for n, i in enumerate(idx):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += H
        tm[i] -= H
        fd[n] = (eng.gradient(X, y, tp)[0] - eng.gradient(X, y, tm)[0]) / (2 * H)
    assert np.isfinite(L0)
    assert rel_err(g[idx], fd) <= 1e-6
    assert np.max(np.abs(g[idx] - fd)) <= 1e-6 * max(np.max(np.abs(g)), 1e-3)


def test_float32_gradient_close_to_float64(engine):
    # test_kernels' mixed net: its float32 kernels are compiled (and cached) already
    hidden, sizes = ["tanh", "relu", "sigmoid"], [5, 7, 6, 4, 3]
    params, X, y = make_problem(hidden, "cross_entropy", "identity", sizes)
    e64 = engine(sizes, hidden + ["identity"], "cross_entropy")
    e32 = engine(sizes, hidden + ["identity"], "cross_entropy", dtype="float32")
    L64, g64 = e64.gradient(X, y, e64.flatten(params))
    L32, g32 = e32.gradient(X.astype(np.float32), y, e32.flatten(params))
    assert g32.dtype == np.float32
    assert L32 == pytest.approx(L64, rel=1e-5)
    assert np.max(np.abs(g32 - g64)) <= 1e-5 * np.max(np.abs(g64))


# ------------------------------------------------------------------ activation derivative check


@pytest.mark.parametrize("act", builtin.BUILTINS, ids=[a.name for a in builtin.BUILTINS])
def test_every_builtin_derivative_passes(act):
    result = check_derivative(act)
    assert result.ok
    assert result.worst_error < 1e-5
    assert result.points > 900  # only the few points next to a kink are skipped


@pytest.mark.parametrize("name", ACT_NAMES)
def test_every_registered_activation_passes(registry, name):
    """Plugins too: the registry would refuse to train with them otherwise."""
    assert registry.check(name).ok, registry.check(name)
    assert registry.require_checked(name).name == name


@numba.njit
def _tanh(x):
    return math.tanh(x)


@numba.njit
def _tanh_wrong(x):  # d/dx tanh written as 1 - x
    return 1.0 - x


@numba.njit
def _tanh_output_form(y):  # right, but in terms of the output: needs derivative_of="output"
    return 1.0 - y * y


@numba.njit
def _gelu_missing_term(x):  # Phi(x) only, the x * phi(x) term forgotten
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@numba.njit
def _sigmoid_slightly_off(y):
    return 1.001 * y * (1.0 - y)


WRONG = [
    Activation("tanh_wrong", _tanh, _tanh_wrong),
    Activation("tanh_wrong_side", _tanh, _tanh_output_form, derivative_of="input"),
    Activation("gelu_wrong", builtin.gelu, _gelu_missing_term),
    Activation("sigmoid_off", builtin.sigmoid, _sigmoid_slightly_off, derivative_of="output"),
]


@pytest.mark.parametrize("act", WRONG, ids=[a.name for a in WRONG])
def test_wrong_derivative_fails(act):
    result = check_derivative(act)
    assert not result.ok
    assert result.worst_error > TOLERANCE
    assert math.isfinite(result.worst_at)


def test_right_derivative_in_output_form_passes():
    assert check_derivative(Activation("tanh_right", _tanh, _tanh_output_form, derivative_of="output")).ok


def test_registry_refuses_a_wrong_derivative(registry):
    """A plugin whose derivative is wrong loads (it is well-formed) but is refused for training."""
    from deltaprop.compute.engine import Engine

    plugin = types.ModuleType("bad_tanh_plugin")

    @deltaprop.hookimpl
    def register_activations(register):
        register(Activation("bad_tanh", _tanh, _tanh_wrong))

    plugin.register_activations = register_activations
    reg = load_registry(extra=(("bad_tanh_plugin", plugin),), entry_points=False)
    assert "bad_tanh" in reg.activations
    assert not reg.check("bad_tanh").ok
    with pytest.raises(PluginError, match="bad_tanh"):
        reg.require_checked("bad_tanh")
    with pytest.raises(PluginError, match="derivative"):
        Engine(SIZES, ["bad_tanh", "tanh", "identity"], "cross_entropy", "float64", reg)
