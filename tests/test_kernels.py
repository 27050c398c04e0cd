"""The Numba training kernels against the plain-NumPy oracle (tests/reference.py).

`Engine.run_steps` (gather + forward + loss + backward + clip + optimizer, fused) is compared in
float64 with `reference.train_steps` for every registry activation (collected at import, so a new
plugin is covered without editing this file) x both losses x four optimizer settings, with the
identity order and a shuffled one. Then: float32 vs float64, determinism, thread counts, predict,
NaN steps, gradient clipping, dropout and resuming in the middle of an epoch.

Every test reuses one network shape per activation set, so the kernels compile once per set
(~10 s each, then loaded from NUMBA_CACHE_DIR in well under a second).
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import reference as ref

from deltaprop.compute.engine import OptimizerSpec
from deltaprop.plugins.manager import load_registry

_REGISTRY = load_registry()  # at import: parametrisation follows the installed plugins
ACT_NAMES = sorted(_REGISTRY.activations)

SIZES = [5, 7, 6, 3]  # two hidden layers, all narrower than the kernels' 16-column split
N, BATCH = 37, 8  # 5 steps, the last one partial (5 rows)
N_STEPS = math.ceil(N / BATCH)
MARGIN = 1e-3  # every |z| that goes through an activation stays this far from a kink at 0
MIXED = ["tanh", "relu", "sigmoid"]  # hidden layers of the mixed net (mse output: sigmoid), so
MIXED_SIZES = [5, 7, 6, 4, 3]  # its cross-entropy and mse engines share one compiled kernel set
TOL64 = 1e-10


@dataclass(frozen=True)
class Opt:
    spec: OptimizerSpec
    make_ref: type  # reference optimizer class; called with lr
    kwargs: tuple
    lr: float

    def reference(self, lr=None):
        return self.make_ref(lr=self.lr if lr is None else lr, **dict(self.kwargs))


OPTS = {
    "sgd": Opt(OptimizerSpec("sgd"), ref.SGD, (), 0.1),
    "sgd_nesterov_wd": Opt(OptimizerSpec("sgd", momentum=0.9, nesterov=True, weight_decay=1e-3),
                           ref.SGD, (("momentum", 0.9), ("nesterov", True), ("weight_decay", 1e-3)), 0.05),
    "adam_wd": Opt(OptimizerSpec("adam", weight_decay=1e-3), ref.Adam, (("weight_decay", 1e-3),), 0.01),
    "adamw": Opt(OptimizerSpec("adamw", weight_decay=1e-2), ref.AdamW, (("weight_decay", 1e-2),), 0.01),
}


def max_rel(a, b, floor=1e-3):
    """Largest elementwise |a - b| / |b| (for |b| < floor: |a - b| / floor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


def norm_rel(a, b):
    """max |a - b| over max |b|: for float32 vs float64, where tiny entries have no relative accuracy."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ------------------------------------------------------------------------------------- problems


@dataclass
class Problem:
    sizes: list
    params: list  # reference (W, b) pairs, float64
    X: np.ndarray  # raw rows (N, d); the kernel standardises them with mean / inv_std
    Xs: np.ndarray  # (X - mean) * inv_std, what the reference sees
    mean: np.ndarray
    inv_std: np.ndarray
    y: np.ndarray  # int labels (N,) or float targets (N, k)
    perm: np.ndarray


def variant_acts(hidden, out):
    """Engine activation list: hidden activation(s) then the output one."""
    hidden = [hidden] * (len(SIZES) - 2) if isinstance(hidden, str) else list(hidden)
    return hidden + [out]


@functools.lru_cache(maxsize=None)
def _problem(ref_hidden, loss, ref_out, order, seed0):
    """The first seed (deterministic) whose pre-activations on all N rows stay MARGIN away from 0
    in every layer that has an activation with a possible kink there."""
    sizes = MIXED_SIZES if len(ref_hidden) == len(MIXED) else SIZES
    for seed in range(seed0, seed0 + 500):
        rng = np.random.default_rng(seed)
        params = ref.init_params(sizes, seed=seed)
        X = rng.normal(1.0, 2.0, size=(N, sizes[0]))
        mean, inv_std = X.mean(0), 1.0 / X.std(0)
        Xs = (X - mean) * inv_std
        if loss == "mse":
            y = rng.uniform(0.0, 1.0, size=(N, sizes[-1]))
        else:
            y = rng.integers(0, sizes[-1], size=N)
        zs, _ = ref.forward(params, Xs, list(ref_hidden), ref_out)
        checked = zs[:-1] if ref_out == "identity" else zs
        if min(np.abs(z).min() for z in checked) > MARGIN:
            perm = np.arange(N) if order == "sequential" else rng.permutation(N)
            return Problem(sizes, params, X, Xs, mean, inv_std, y, perm)
    raise AssertionError("no seed keeps the pre-activations away from 0")


def problem(ref_act, hidden, loss, out, order="shuffled", seed0=0):
    acts = variant_acts(hidden, out)
    return _problem(tuple(ref_act(a) for a in acts[:-1]), loss, ref_act(out), order, seed0)


# ------------------------------------------------------------------------------------- runners


def kernel_run(eng, pb, spec, lr, *, dtype=np.float64, theta=None, state=None, pos=0, n_steps=N_STEPS,
               step0=0, lrs=None, X=None, y=None, perm=None, **kw):
    """run_steps from `theta` (default: the problem's initial params). Returns
    (theta, opt_state, done, step_loss, step_correct)."""
    theta = eng.flatten(pb.params) if theta is None else theta
    state = np.zeros((2, theta.size), dtype) if state is None else state
    lrs = np.full(n_steps, lr) if lrs is None else lrs
    X = pb.X if X is None else X
    done, loss, correct = eng.run_steps(
        X.astype(dtype), pb.mean.astype(dtype), pb.inv_std.astype(dtype), pb.y if y is None else y,
        pb.perm if perm is None else perm, pos, n_steps, BATCH, theta, np.zeros_like(theta), spec,
        state, lrs, step0, **kw)
    return theta, state, done, loss, correct


def ref_loop(pb, hidden, loss, out, opt, *, lrs=None, clip=0.0, masks=None):
    """reference.train_steps spelt out step by step, plus what it lacks: a per-step lr, torch's
    clip_grad_norm_ rule, dropout masks (masks(step, rows) -> one (rows, width) array per hidden
    layer), and the per-step loss / number of correct predictions."""
    params = [(W.copy(), b.copy()) for W, b in pb.params]
    losses, corrects = [], []
    for s, start in enumerate(range(0, N, BATCH)):
        idx = pb.perm[start:start + BATCH]
        acts = list(hidden)
        if masks is not None:
            pairs = [ref.resolve_activation(a) for a in acts]
            acts = [(lambda z, f=f, M=M: f(z) * M, lambda z, fp=fp, M=M: fp(z) * M)
                    for (f, fp), M in zip(pairs, masks(s, len(idx)))]
        L, grads = ref.loss_and_grads(params, pb.Xs[idx], pb.y[idx], acts, loss, out)
        losses.append(L)
        if loss == "cross_entropy":
            _, As = ref.forward(params, pb.Xs[idx], acts)
            corrects.append(int((As[-1].argmax(1) == pb.y[idx]).sum()))
        if clip > 0.0:
            norm = math.sqrt(sum(float((g * g).sum()) for layer in grads for g in layer))
            scale = min(1.0, clip / (norm + 1e-6))
            grads = [(dW * scale, db * scale) for dW, db in grads]
        if lrs is not None:
            opt.lr = float(lrs[s])
        params = opt.step(params, grads)
    return params, np.array(losses), np.array(corrects)


# ------------------------------------------------------------------- run_steps vs the reference

VARIANTS = []
for _a in ACT_NAMES:
    VARIANTS += [(_a, "cross_entropy", "identity"), (_a, "mse", "identity")]
    if _a != "identity":
        VARIANTS.append((_a, "mse", _a))  # the activation as the mse output too (same kernels)


@pytest.mark.parametrize("order", ["sequential", "shuffled"])
@pytest.mark.parametrize("opt_name", list(OPTS))
@pytest.mark.parametrize("act,loss,out", VARIANTS, ids=[f"{a}-{l}-out_{o}" for a, l, o in VARIANTS])
def test_run_steps_matches_reference(engine, ref_act, act, loss, out, opt_name, order):
    opt = OPTS[opt_name]
    eng = engine(SIZES, variant_acts(act, out), loss)
    pb = problem(ref_act, act, loss, out, order)
    theta, _, done, step_loss, _ = kernel_run(eng, pb, opt.spec, opt.lr)
    assert done == N_STEPS
    assert step_loss.max() < 5.0  # a sane, non-diverging run
    want = ref.train_steps(pb.params, pb.Xs, pb.y, [ref_act(act)] * 2, loss, opt.reference(),
                           BATCH, order=pb.perm, output_activation=ref_act(out))
    assert max_rel(theta, eng.flatten(want)) <= TOL64


@pytest.mark.parametrize("opt_name", list(OPTS))
@pytest.mark.parametrize("loss,out", [("cross_entropy", "identity"), ("mse", "sigmoid")])
def test_mixed_layers_match_reference(engine, loss, out, opt_name):
    """Different activations per hidden layer, sigmoid mse output; also per-step loss / correct."""
    opt = OPTS[opt_name]
    eng = engine(MIXED_SIZES, MIXED + [out], loss)
    pb = problem(lambda a: a, MIXED, loss, out)
    theta, _, done, step_loss, step_correct = kernel_run(eng, pb, opt.spec, opt.lr)
    want, losses, corrects = ref_loop(pb, MIXED, loss, out, opt.reference())
    assert done == N_STEPS
    assert max_rel(theta, eng.flatten(want)) <= TOL64
    np.testing.assert_allclose(step_loss, losses, rtol=1e-12)
    if loss == "cross_entropy":
        np.testing.assert_array_equal(step_correct, corrects)
    # ref_loop is reference.train_steps, step by step
    direct = ref.train_steps(pb.params, pb.Xs, pb.y, MIXED, loss, opt.reference(), BATCH,
                             order=pb.perm, output_activation=out)
    assert max_rel(eng.flatten(direct), eng.flatten(want)) == 0.0


@pytest.mark.parametrize("opt_name", ["sgd_nesterov_wd", "adam_wd"])
def test_learning_rate_schedule_per_step(engine, opt_name):
    opt = OPTS[opt_name]
    eng = engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy")
    pb = problem(lambda a: a, MIXED, "cross_entropy", "identity")
    lrs = opt.lr * np.array([1.0, 0.5, 2.0, 0.0, 0.25])
    theta, *_ = kernel_run(eng, pb, opt.spec, None, lrs=lrs)
    want, _, _ = ref_loop(pb, MIXED, "cross_entropy", "identity", opt.reference(), lrs=lrs)
    assert max_rel(theta, eng.flatten(want)) <= TOL64


@pytest.mark.parametrize("opt_name", list(OPTS))
def test_resume_mid_epoch_is_bit_identical(engine, opt_name):
    """Two calls (2 steps, then 3 from pos=16 with step0=2) == one call of 5: Adam's t, the SGD
    momentum's first step and the dropout masks all follow the global step."""
    opt = OPTS[opt_name]
    eng = engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy")
    pb = problem(lambda a: a, MIXED, "cross_entropy", "identity")
    drop = [0.2, 0.3, 0.1, 0.0]
    whole, whole_state, *_ = kernel_run(eng, pb, opt.spec, opt.lr, dropout=drop, seed=5)
    theta, state, done, *_ = kernel_run(eng, pb, opt.spec, opt.lr, n_steps=2, dropout=drop, seed=5)
    assert done == 2
    theta, state, done, *_ = kernel_run(eng, pb, opt.spec, opt.lr, theta=theta, state=state, pos=2 * BATCH,
                                        n_steps=N_STEPS - 2, step0=2, dropout=drop, seed=5)
    assert done == N_STEPS - 2
    np.testing.assert_array_equal(theta, whole)
    np.testing.assert_array_equal(state, whole_state)


# ---------------------------------------------------------------------------- float32, predict


# float32: the mixed net (one compile covers several builtins), plus every plugin activation
PLUGIN_ACTS = [a for a in ACT_NAMES if _REGISTRY.activations[a].source != "deltaprop"]
F32_CASES = [("mixed", "cross_entropy", "identity"), ("mixed", "mse", "sigmoid")]
F32_CASES += [(a, loss, "identity") for a in PLUGIN_ACTS for loss in ("cross_entropy", "mse")]


@pytest.mark.parametrize("act,loss,out", F32_CASES, ids=[f"{a}-{l}-out_{o}" for a, l, o in F32_CASES])
def test_float32_agrees_with_float64(engine, ref_act, act, loss, out):
    opt = OPTS["sgd_nesterov_wd"]
    hidden = MIXED if act == "mixed" else act
    acts = variant_acts(hidden, out)
    pb = problem(ref_act, hidden, loss, out)
    e64, e32 = engine(pb.sizes, acts, loss), engine(pb.sizes, acts, loss, dtype="float32")
    t64, _, d64, l64, _ = kernel_run(e64, pb, opt.spec, opt.lr)
    t32, _, d32, l32, _ = kernel_run(e32, pb, opt.spec, opt.lr, dtype=np.float32,
                                     theta=e32.flatten(pb.params))
    assert d64 == d32 == N_STEPS
    assert t32.dtype == np.float32
    assert norm_rel(t32, t64) <= 1e-4
    np.testing.assert_allclose(l32, l64, rtol=1e-4)
    p64 = e64.predict(pb.X, pb.mean, pb.inv_std, t64)
    p32 = e32.predict(pb.X.astype(np.float32), pb.mean.astype(np.float32),
                      pb.inv_std.astype(np.float32), t64.astype(np.float32))
    assert p32.dtype == np.float32
    assert norm_rel(p32, p64) <= 1e-4


@pytest.mark.parametrize("act,loss,out", VARIANTS, ids=[f"{a}-{l}-out_{o}" for a, l, o in VARIANTS])
def test_predict_matches_reference_forward(engine, ref_act, act, loss, out):
    eng = engine(SIZES, variant_acts(act, out), loss)
    pb = problem(ref_act, act, loss, out)
    theta = eng.flatten(pb.params)
    zs, As = ref.forward(pb.params, pb.Xs, [ref_act(act)] * 2, ref_act(out))
    if loss == "cross_entropy":
        e = np.exp(zs[-1] - zs[-1].max(1, keepdims=True))
        want = e / e.sum(1, keepdims=True)
    else:
        want = As[-1]
    for batch_size in (1024, 8):  # one chunk; several, the last partial
        got = eng.predict(pb.X, pb.mean, pb.inv_std, theta, batch_size=batch_size)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    if loss == "cross_entropy":
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(theta, eng.flatten(pb.params))  # predict leaves theta alone


# ------------------------------------------------------------------ determinism and threads


def test_identical_runs_are_bit_identical(engine, registry):
    from deltaprop.compute.engine import Engine
    pb = problem(lambda a: a, MIXED, "cross_entropy", "identity")
    opt = OPTS["adam_wd"]
    kw = dict(dropout=[0.25, 0.25, 0.25, 0.0], seed=11, clip=0.5)
    a = kernel_run(engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy"), pb, opt.spec, opt.lr, **kw)
    b = kernel_run(engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy"), pb, opt.spec, opt.lr, **kw)
    fresh = Engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy", "float64", registry, threads=2)
    c = kernel_run(fresh, pb, opt.spec, opt.lr, **kw)
    for x in (b, c):
        np.testing.assert_array_equal(x[0], a[0])  # theta
        np.testing.assert_array_equal(x[1], a[1])  # optimizer state
        np.testing.assert_array_equal(x[3], a[3])  # step losses


def _thread_runs(registry, sizes, n, batch, **kw):
    """The same run (mixed net, adam) with threads=1 and threads=2, each on a freshly built Engine
    (Engine sets Numba's thread count when it is built)."""
    from deltaprop.compute.engine import Engine
    rng = np.random.default_rng(3)
    X, y, perm = rng.normal(size=(n, sizes[0])), rng.integers(0, sizes[-1], size=n), rng.permutation(n)
    mean, inv_std = np.zeros(sizes[0]), np.ones(sizes[0])
    params = ref.init_params(sizes, seed=3)
    steps = math.ceil(n / batch)
    out = []
    for threads in (1, 2):
        eng = Engine(sizes, MIXED + ["identity"], "cross_entropy", "float64", registry, threads=threads)
        theta = eng.flatten(params)
        done, loss, _ = eng.run_steps(
            X, mean, inv_std, y, perm, 0, steps, batch, theta, np.zeros_like(theta),
            OPTS["adam_wd"].spec, np.zeros((2, theta.size)), np.full(steps, 0.01), 0, **kw)
        assert done == steps
        out.append((theta, loss, eng.predict(X, mean, inv_std, theta)))
    return out


@pytest.mark.parametrize("kw", [{}, {"clip": 0.5, "dropout": [0.2, 0.2, 0.2, 0.0], "seed": 1}], ids=["plain", "clip_dropout"])
def test_thread_count_does_not_change_results_small_net(registry, kw):
    (t1, l1, p1), (t2, l2, p2) = _thread_runs(registry, MIXED_SIZES, N, BATCH, **kw)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(p1, p2)


WIDE = [20, 150, 130, 70, 10]  # every hidden layer is split into 2 tiles: work really splits across threads


def test_thread_count_wide_net_agrees_closely(registry):
    (t1, l1, p1), (t2, l2, p2) = _thread_runs(registry, WIDE, 100, 32, clip=0.5)
    assert max_rel(t2, t1) <= 1e-12
    np.testing.assert_allclose(l2, l1, rtol=1e-13)
    np.testing.assert_allclose(p2, p1, rtol=1e-12, atol=1e-15)


def test_thread_count_wide_net_bit_identical(registry):
    """GEMMs are split in tiles from the shapes (kernels/network.py n_tiles), not per thread: bit-identical."""
    (t1, l1, p1), (t2, l2, p2) = _thread_runs(registry, WIDE, 100, 32)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(t1, t2)



@pytest.mark.parametrize("n,batch", [(70, 32), (300, 160)], ids=["small_batch", "large_batch"])
@pytest.mark.parametrize("opt_name", list(OPTS))
def test_wide_net_matches_reference(registry, opt_name, n, batch):
    """Layers of several tiles, both backward splits (dW rows, delta columns) uneven, a partial
    last batch, 2 threads, both forward products (z^T = W a^T below network.SMALL_BATCH rows,
    z = a W^T from it on): the tiled kernels still match the oracle to 1e-10 in float64."""
    from deltaprop.compute.engine import Engine
    from deltaprop.kernels.network import SMALL_BATCH
    assert (batch < SMALL_BATCH) == (n % batch < SMALL_BATCH)  # every step takes the same path
    opt = OPTS[opt_name]
    rng = np.random.default_rng(11)
    X, y, perm = rng.normal(size=(n, WIDE[0])), rng.integers(0, WIDE[-1], size=n), rng.permutation(n)
    params = ref.init_params(WIDE, seed=11)
    eng = Engine(WIDE, MIXED + ["identity"], "cross_entropy", "float64", registry, threads=2)
    theta = eng.flatten(params)
    steps = math.ceil(n / batch)
    done, _, _ = eng.run_steps(X, np.zeros(WIDE[0]), np.ones(WIDE[0]), y, perm, 0, steps, batch, theta,
                               np.zeros_like(theta), opt.spec, np.zeros((2, theta.size)),
                               np.full(steps, opt.lr), 0)
    assert done == steps
    want = ref.train_steps(params, X, y, MIXED, "cross_entropy", opt.reference(), batch, order=perm,
                           output_activation="identity")
    assert max_rel(theta, eng.flatten(want)) <= TOL64

# -------------------------------------------------------------------------- non-finite steps


@pytest.mark.parametrize("clip", [0.0, 1.0])
@pytest.mark.parametrize("where", ["X", "target"])
def test_nan_step_stops_before_its_update(engine, where, clip):
    loss, out = ("cross_entropy", "identity") if where == "X" else ("mse", "sigmoid")
    eng = engine(MIXED_SIZES, MIXED + [out], loss)
    pb = problem(lambda a: a, MIXED, loss, out)
    opt = OPTS["adam_wd"]
    bad_row = pb.perm[2 * BATCH + 3]  # in step 2
    X, y = pb.X.copy(), pb.y.copy()
    if where == "X":
        X[bad_row, 1] = np.nan
    else:
        y[bad_row, 0] = np.nan
    good, good_state, *_ = kernel_run(eng, pb, opt.spec, opt.lr, n_steps=2, clip=clip)
    theta, state, done, step_loss, _ = kernel_run(eng, pb, opt.spec, opt.lr, X=X, y=y, clip=clip)
    assert done == 2
    assert np.all(np.isfinite(step_loss[:2])) and not np.isfinite(step_loss[2])
    np.testing.assert_array_equal(theta, good)
    np.testing.assert_array_equal(state, good_state)


def test_non_finite_gradient_with_finite_loss_is_not_applied(engine):
    """Regression: the gradient norm is checked every step, not only when clipping."""
    eng = engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy")
    pb = problem(lambda a: a, MIXED, "cross_entropy", "identity")
    X = pb.X.copy()
    X[pb.perm[2 * BATCH], 0] = np.inf  # tanh saturates: z = +-inf, a = +-1, the loss stays finite
    opt = OPTS["sgd"]
    good, *_ = kernel_run(eng, pb, opt.spec, opt.lr, n_steps=2)
    theta, _, done, step_loss, _ = kernel_run(eng, pb, opt.spec, opt.lr, X=X, n_steps=3)
    assert np.isfinite(step_loss[2])  # the premise: this step's loss is finite
    assert done == 2
    np.testing.assert_array_equal(theta, good)


# ------------------------------------------------------------------------------ clipping


@pytest.mark.parametrize("opt_name", ["sgd_nesterov_wd", "adam_wd"])
@pytest.mark.parametrize("loss,out", [("cross_entropy", "identity"), ("mse", "sigmoid")])
def test_clip_matches_torch_rule(engine, loss, out, opt_name):
    opt = OPTS[opt_name]
    eng = engine(MIXED_SIZES, MIXED + [out], loss)
    pb = problem(lambda a: a, MIXED, loss, out)
    # a threshold between the smallest and largest gradient norm of the run: some steps clip
    params = pb.params
    norms = []
    for start in range(0, N, BATCH):
        idx = pb.perm[start:start + BATCH]
        _, g = ref.loss_and_grads(params, pb.Xs[idx], pb.y[idx], MIXED, loss, out)
        norms.append(math.sqrt(sum(float((x * x).sum()) for layer in g for x in layer)))
    clip = float(np.median(norms))
    theta, _, done, *_ = kernel_run(eng, pb, opt.spec, opt.lr, clip=clip)
    want, _, _ = ref_loop(pb, MIXED, loss, out, opt.reference(), clip=clip)
    unclipped, _, _ = ref_loop(pb, MIXED, loss, out, opt.reference())
    assert done == N_STEPS
    assert max_rel(theta, eng.flatten(want)) <= TOL64
    assert max_rel(theta, eng.flatten(unclipped)) > 1e-6  # clipping did something


def test_clip_above_every_norm_changes_nothing(engine):
    eng = engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy")
    pb = problem(lambda a: a, MIXED, "cross_entropy", "identity")
    opt = OPTS["sgd_nesterov_wd"]
    plain, *_ = kernel_run(eng, pb, opt.spec, opt.lr)
    clipped, *_ = kernel_run(eng, pb, opt.spec, opt.lr, clip=1e6)
    np.testing.assert_array_equal(clipped, plain)


# -------------------------------------------------------------------------------- dropout


def _masks(seed, drop, sizes):
    """The kernel's masks (its own splitmix hash of seed, step, layer, row, col) as arrays."""
    from deltaprop.kernels.network import _keep_scale

    def masks(step, rows):
        return [np.array([[_keep_scale(seed, step, l, r, j, drop[l]) if drop[l] > 0 else 1.0
                           for j in range(sizes[l + 1])] for r in range(rows)])
                for l in range(len(sizes) - 2)]
    return masks


@pytest.mark.parametrize("loss,out", [("cross_entropy", "identity"), ("mse", "sigmoid")])
def test_dropout_matches_masked_reference(engine, loss, out):
    """Inverted dropout on hidden activations, the same mask on their deltas."""
    eng = engine(MIXED_SIZES, MIXED + [out], loss)
    pb = problem(lambda a: a, MIXED, loss, out)
    opt = OPTS["sgd_nesterov_wd"]
    drop = [0.3, 0.5, 0.2, 0.0]
    theta, _, done, step_loss, _ = kernel_run(eng, pb, opt.spec, opt.lr, dropout=drop, seed=7)
    want, losses, _ = ref_loop(pb, MIXED, loss, out, opt.reference(), masks=_masks(7, drop, MIXED_SIZES))
    assert done == N_STEPS
    assert max_rel(theta, eng.flatten(want)) <= TOL64
    np.testing.assert_allclose(step_loss, losses, rtol=1e-12)


def test_dropout_mask_rate_and_scale():
    from deltaprop.kernels.network import _keep_scale
    rate = 0.3
    m = np.array([_keep_scale(1, 2, 0, r, j, rate) for r in range(100) for j in range(100)])
    assert set(np.unique(m)) == {0.0, 1.0 / (1.0 - rate)}
    assert abs((m == 0).mean() - rate) < 0.02


def test_dropout_seeds_and_zero_rates(engine):
    eng = engine(MIXED_SIZES, MIXED + ["identity"], "cross_entropy")
    pb = problem(lambda a: a, MIXED, "cross_entropy", "identity")
    opt = OPTS["adam_wd"]
    run = functools.partial(kernel_run, eng, pb, opt.spec, opt.lr)
    plain = run()[0]
    drop = [0.3, 0.3, 0.3, 0.0]
    a, b = run(dropout=drop, seed=1)[0], run(dropout=drop, seed=1)[0]
    other_seed = run(dropout=drop, seed=2)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, plain)
    assert not np.array_equal(a, other_seed)
    np.testing.assert_array_equal(run(dropout=[0.0] * 4, seed=1)[0], plain)
    # the output layer never drops
    np.testing.assert_array_equal(run(dropout=[0.0, 0.0, 0.0, 0.5], seed=1)[0], plain)


def test_dropout_masks_are_independent_across_steps_rows_columns_and_layers():
    """Masks of neighbouring steps, rows, columns and layers are uncorrelated (|r| within 6
    standard errors of 0 at every shift tried) and the keep rate is within binomial bounds. The
    old hash failed this: step t+1's mask was step t's shifted by one column."""
    from deltaprop.kernels.network import _keep_scale
    rate, rows, cols = 0.5, 64, 256

    def mask(seed, step, layer):
        return np.array([[_keep_scale(seed, step, layer, r, j, rate) > 0 for j in range(cols)]
                         for r in range(rows)], dtype=np.float64)

    def corr(a, b):
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))

    for seed in (0, 1, 7):
        m = {(s, l): mask(seed, s, l) for s in (10, 11, 12) for l in (0, 1)}
        n = rows * cols
        bound = 6 / math.sqrt(n - 4 * cols)
        for (s, l), a in m.items():
            keep = a.mean()
            assert abs(keep - (1 - rate)) < 6 * math.sqrt(rate * (1 - rate) / n), (seed, s, l, keep)
        a = m[10, 0]
        for shift in range(-3, 4):  # the next step, shifted by up to 3 columns either way
            b = np.roll(m[11, 0], shift, axis=1)
            assert abs(corr(a[:, 4:-4], b[:, 4:-4])) < bound, (seed, "step", shift)
        assert abs(corr(a[:, 1:], a[:, :-1])) < bound, (seed, "column")
        assert abs(corr(a[1:], a[:-1])) < bound, (seed, "row")
        assert abs(corr(a, m[10, 1])) < bound, (seed, "layer")
        assert abs(corr(a, m[12, 0])) < bound, (seed, "two steps")
