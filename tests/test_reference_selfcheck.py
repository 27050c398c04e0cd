"""The oracle checks itself: tests/reference.py must be right on its own before anything is
compared against it. Nothing here imports deltaprop."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

ACT_NAMES = sorted(ref.ACTIVATIONS)
# not smooth at z = 0: relu/leaky_relu (f' jumps), elu (f'' jumps; central differences lose
# their O(h^2) accuracy there). Keep test points and hidden pre-activations away from 0.
KINKED = {"relu", "leaky_relu", "elu"}
SIZES = [3, 5, 4, 3]  # 2 hidden layers
BATCH = 4
MARGIN = 1e-3  # every hidden |z| at least this far from 0


def rel_err(a, b):
    """Norm-wise relative error of two gradient lists."""
    fa = np.concatenate([np.ravel(x) for layer in a for x in layer])
    fb = np.concatenate([np.ravel(x) for layer in b for x in layer])
    return np.linalg.norm(fa - fb) / max(np.linalg.norm(fa), np.linalg.norm(fb), 1e-300)


def make_problem(loss, activations, seed0=1234):
    """Tiny random net + data: the first seed (deterministic) whose hidden pre-activations all
    stay MARGIN away from 0, where the KINKED activations are not smooth."""
    for seed in range(seed0, seed0 + 1000):
        rng = np.random.default_rng(seed)
        params = ref.init_params(SIZES, seed=seed, scale=0.8)
        X = rng.normal(size=(BATCH, SIZES[0]))
        if loss == "mse":
            y = rng.normal(size=(BATCH, SIZES[-1]))
        else:
            y = rng.integers(0, SIZES[-1], size=BATCH)
        zs, _ = ref.forward(params, X, activations)
        if min(np.abs(z).min() for z in zs[:-1]) > MARGIN:
            return params, X, y
    raise AssertionError("no seed kept hidden z away from 0")


# ---------------------------------------------------------------------------------- activations


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_derivative_matches_central_differences(name):
    f, fp = ref.ACTIVATIONS[name]
    z = np.linspace(-6.0, 6.0, 1201)
    if name in KINKED:
        z = z[np.abs(z) > 1e-3]
    h = 1e-5
    num = (f(z + h) - f(z - h)) / (2 * h)
    np.testing.assert_allclose(fp(z), num, rtol=1e-7, atol=1e-9)


def test_activation_values_by_hand():
    A = ref.ACTIVATIONS
    assert A["relu"][1](np.array([0.0]))[0] == 0.0
    assert A["relu"][0](np.array([-2.0, 3.0])).tolist() == [0.0, 3.0]
    assert A["leaky_relu"][1](np.array([0.0]))[0] == 0.01
    assert A["leaky_relu"][0](np.array([-2.0]))[0] == pytest.approx(-0.02, rel=1e-15)
    assert A["elu"][0](np.array([-1.0]))[0] == pytest.approx(math.exp(-1) - 1, rel=1e-15)
    assert A["elu"][1](np.array([-1.0, 0.5])).tolist() == pytest.approx([math.exp(-1), 1.0], rel=1e-15)
    # gelu(1) = Phi(1); gelu'(0) = 1/2
    assert A["gelu"][0](np.array([1.0]))[0] == pytest.approx(0.8413447460685429, rel=1e-15)
    assert A["gelu"][1](np.array([0.0]))[0] == pytest.approx(0.5, rel=1e-15)
    assert A["softplus"][0](np.array([0.0]))[0] == pytest.approx(math.log(2), rel=1e-15)
    assert A["sigmoid"][0](np.array([0.0]))[0] == 0.5
    assert A["tanh"][1](np.array([0.0]))[0] == 1.0
    assert A["silu"][0](np.array([1.0]))[0] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-15)
    assert A["identity"][0](np.array([-3.5]))[0] == -3.5


def test_activations_stable_in_the_tails():
    z = np.array([-1000.0, -50.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        for name in ACT_NAMES:
            f, fp = ref.ACTIVATIONS[name]
            assert np.all(np.isfinite(f(z))), name
            assert np.all(np.isfinite(fp(z))), name
    sp = ref.ACTIVATIONS["softplus"][0](z)
    assert sp[-1] == 1000.0 and sp[0] == 0.0
    sg = ref.ACTIVATIONS["sigmoid"][0](z)
    assert sg[-1] == 1.0 and sg[0] == 0.0


# ------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("name", ACT_NAMES)
def test_delta_rule_matches_numerical_grads(name, loss):
    acts = [name, name]
    params, X, y = make_problem(loss, acts)
    L, grads = ref.loss_and_grads(params, X, y, acts, loss)
    num = ref.numerical_grads(params, X, y, acts, loss)
    assert L == pytest.approx(ref.loss_value(params, X, y, acts, loss), rel=1e-15)
    for (W, b), (dW, db) in zip(params, grads):
        assert dW.shape == W.shape and db.shape == b.shape
    assert rel_err(grads, num) < 1e-7


@pytest.mark.parametrize("out_name", ACT_NAMES)
def test_mse_output_activation_gradients(out_name):
    acts = ["tanh", "sigmoid"]
    params, X, y = make_problem("mse", acts, seed0=99)
    _, grads = ref.loss_and_grads(params, X, y, acts, "mse", output_activation=out_name)
    num = ref.numerical_grads(params, X, y, acts, "mse", output_activation=out_name)
    assert rel_err(grads, num) < 1e-7


def test_mixed_layers_and_callable_pairs():
    my_tanh = (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2)
    acts = [my_tanh, "gelu"]
    params, X, y = make_problem("cross_entropy", acts, seed0=7)
    L1, g1 = ref.loss_and_grads(params, X, y, acts, "cross_entropy")
    L2, g2 = ref.loss_and_grads(params, X, y, ["tanh", "gelu"], "cross_entropy")
    assert L1 == pytest.approx(L2, rel=1e-14)
    assert rel_err(g1, g2) < 1e-14
    assert rel_err(g1, ref.numerical_grads(params, X, y, acts, "cross_entropy")) < 1e-7
    # single name broadcasts to every hidden layer
    L3, _ = ref.loss_and_grads(params, X, y, "tanh", "cross_entropy")
    L4, _ = ref.loss_and_grads(params, X, y, ["tanh", "tanh"], "cross_entropy")
    assert L3 == L4


def test_forward_shapes_and_layer_rule():
    params = ref.init_params([2, 3, 1], seed=0)
    X = np.array([[1.0, -2.0], [0.5, 0.25]])
    zs, As = ref.forward(params, X, ["relu"])
    (W0, b0), (W1, b1) = params
    np.testing.assert_array_equal(As[0], X)
    np.testing.assert_allclose(zs[0], X @ W0.T + b0, rtol=1e-15)
    np.testing.assert_allclose(As[1], np.maximum(zs[0], 0), rtol=1e-15)
    np.testing.assert_allclose(zs[1], As[1] @ W1.T + b1, rtol=1e-15)
    np.testing.assert_array_equal(As[2], zs[1])  # identity output
    assert [z.shape for z in zs] == [(2, 3), (2, 1)]


def test_losses_by_hand():
    # one linear layer, W = [[2]], b = [1]: yhat = 2x + 1
    params = [(np.array([[2.0]]), np.array([1.0]))]
    X = np.array([[1.0], [2.0]])  # yhat = 3, 5
    y = np.array([[1.0], [1.0]])  # errors 2, 4
    L, ((dW, db),) = ref.loss_and_grads(params, X, y, [], "mse")
    assert L == pytest.approx((4 + 16) / (2 * 2), rel=1e-15)  # 5
    # delta = err / B = [1, 2]; dW = 1*1 + 2*2 = 5; db = 3
    assert dW.tolist() == [[5.0]] and db.tolist() == [3.0]
    # cross entropy: zero logits -> log(k), delta = (1/k - onehot) / B
    params = [(np.zeros((4, 2)), np.zeros(4))]
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    L, ((dW, db),) = ref.loss_and_grads(params, X, np.array([0, 3]), [], "cross_entropy")
    assert L == pytest.approx(math.log(4), rel=1e-15)
    np.testing.assert_allclose(db, [(0.25 - 1 + 0.25) / 2, 0.25, 0.25, (0.25 + 0.25 - 1) / 2], rtol=1e-15)


def test_batch_mean_is_invariant_to_duplicating_the_batch():
    acts = ["silu", "elu"]
    for loss in ("mse", "cross_entropy"):
        params, X, y = make_problem(loss, acts, seed0=3)
        L1, g1 = ref.loss_and_grads(params, X, y, acts, loss)
        L2, g2 = ref.loss_and_grads(params, np.vstack([X, X]), np.concatenate([y, y]), acts, loss)
        assert L1 == pytest.approx(L2, rel=1e-13)
        assert rel_err(g1, g2) < 1e-13


def test_bad_input_is_rejected():
    params = ref.init_params([2, 3, 2], seed=0)
    X = np.zeros((2, 2))
    with pytest.raises(ValueError):
        ref.loss_and_grads(params, X, np.array([0, 1]), ["relu"], "cross_entropy", output_activation="sigmoid")
    with pytest.raises(ValueError):
        ref.forward(params, X, ["relu", "relu"])
    with pytest.raises(ValueError):
        ref.forward(params, X, ["nope"])
    with pytest.raises(ValueError):
        ref.loss_and_grads(params, X, np.zeros((2, 2)), ["relu"], "hinge")
    with pytest.raises(ValueError):
        ref.loss_and_grads(params, X, np.array([0, 2]), ["relu"], "cross_entropy")
    with pytest.raises(ValueError):
        ref.SGD(lr=0.1, nesterov=True)


# ----------------------------------------------------------------------------------- optimizers


def run_1param(opt, grads, p0=1.0):
    """Step a single scalar parameter through the given gradient sequence; return the history."""
    params = [(np.array([p0]),)]
    out = []
    for g in grads:
        params = opt.step(params, [(np.array([g]),)])
        out.append(float(params[0][0][0]))
    return out


def test_sgd_by_hand():
    # plain: p = 1 - 0.1*1 = 0.9; then 0.9 - 0.1*2 = 0.7
    assert run_1param(ref.SGD(lr=0.1), [1.0, 2.0]) == pytest.approx([0.9, 0.7], rel=1e-15)
    # momentum 0.9: buf1 = g1 = 1 -> 0.9; buf2 = 0.9*1 + 2 = 2.9 -> 0.9 - 0.29 = 0.61
    assert run_1param(ref.SGD(lr=0.1, momentum=0.9), [1.0, 2.0]) == pytest.approx([0.9, 0.61], rel=1e-15)
    # dampening 0.5: first buffer is the raw grad (no dampening); buf2 = 0.9 + 0.5*2 = 1.9 -> 0.71
    assert run_1param(ref.SGD(lr=0.1, momentum=0.9, dampening=0.5), [1.0, 2.0]) == pytest.approx(
        [0.9, 0.71], rel=1e-15
    )
    # nesterov: d1 = 1 + 0.9*1 = 1.9 -> 0.81; buf2 = 2.9, d2 = 2 + 0.9*2.9 = 4.61 -> 0.349
    assert run_1param(ref.SGD(lr=0.1, momentum=0.9, nesterov=True), [1.0, 2.0]) == pytest.approx(
        [0.81, 0.349], rel=1e-14
    )
    # weight decay 0.1: d = 1 + 0.1*1 = 1.1 -> 0.89; d = 0 + 0.1*0.89 -> 0.89 - 0.0089 = 0.8811
    assert run_1param(ref.SGD(lr=0.1, weight_decay=0.1), [1.0, 0.0]) == pytest.approx(
        [0.89, 0.8811], rel=1e-15
    )


def test_adam_by_hand():
    eps = 1e-8
    # step 1, g = 1: m = 0.1, v = 0.001, bc1 = 0.1, bc2 = 0.001 -> m/bc1 = 1, sqrt(v/bc2) = 1
    #   p = 1 - 0.1 * 1 / (1 + eps)
    # step 2, g = -1: m = 0.09 - 0.1 = -0.01, v = 0.000999 + 0.001 = 0.001999,
    #   bc1 = 0.19, bc2 = 0.001999 -> m/bc1 = -1/19, sqrt(v/bc2) = 1
    #   p += 0.1 * (1/19) / (1 + eps)
    p1 = 1 - 0.1 / (1 + eps)
    p2 = p1 + 0.1 / 19 / (1 + eps)
    assert run_1param(ref.Adam(lr=0.1), [1.0, -1.0]) == pytest.approx([p1, p2], rel=1e-12)
    # constant g = 2: every bias-corrected step is lr * 2 / (2 + eps)
    s = 0.1 * 2 / (2 + eps)
    assert run_1param(ref.Adam(lr=0.1), [2.0, 2.0, 2.0]) == pytest.approx([1 - s, 1 - 2 * s, 1 - 3 * s], rel=1e-12)
    # L2 (coupled) decay 0.1 with zero grad: effective g = 0.1 * p = 0.1 -> p = 1 - 0.1 * 0.1/(0.1 + eps)
    assert run_1param(ref.Adam(lr=0.1, weight_decay=0.1), [0.0]) == pytest.approx(
        [1 - 0.1 * 0.1 / (0.1 + eps)], rel=1e-14
    )
    # defaults are torch's
    a = ref.Adam()
    assert (a.lr, a.betas, a.eps, a.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)


def test_adamw_by_hand():
    eps = 1e-8
    # p = 1 * (1 - 0.1*0.1) = 0.99, then Adam step with g = 2 (decay NOT added to g): -0.1*2/(2+eps)
    assert run_1param(ref.AdamW(lr=0.1, weight_decay=0.1), [2.0]) == pytest.approx(
        [0.99 - 0.1 * 2 / (2 + eps)], rel=1e-14
    )
    # zero grad: only the decay acts (m = v = 0 -> Adam step 0)
    assert run_1param(ref.AdamW(lr=0.1, weight_decay=0.1), [0.0, 0.0]) == pytest.approx([0.99, 0.99**2], rel=1e-15)
    w = ref.AdamW()
    assert (w.lr, w.betas, w.eps, w.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)


def test_optimizer_keeps_structure_and_does_not_mutate():
    params = ref.init_params([3, 4, 2], seed=5)
    before = [(W.copy(), b.copy()) for W, b in params]
    grads = [(np.ones_like(W), np.ones_like(b)) for W, b in params]
    for opt in (ref.SGD(lr=0.1, momentum=0.9), ref.Adam(), ref.AdamW()):
        new = opt.step(params, grads)
        assert [(W.shape, b.shape) for W, b in new] == [(W.shape, b.shape) for W, b in params]
        for (W, b), (W0, b0) in zip(params, before):
            np.testing.assert_array_equal(W, W0)
            np.testing.assert_array_equal(b, b0)


# ------------------------------------------------------------------------------------- training


def test_train_steps_batches_in_order_with_partial_last_batch():
    acts = ["tanh", "relu"]
    params, _, _ = make_problem("cross_entropy", acts, seed0=11)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, SIZES[0]))
    y = rng.integers(0, SIZES[-1], size=5)
    order = np.array([4, 0, 3, 1, 2])

    got = ref.train_steps(params, X, y, acts, "cross_entropy", ref.SGD(lr=0.5, momentum=0.9), 2, order=order)

    opt = ref.SGD(lr=0.5, momentum=0.9)
    want = params
    for idx in ([4, 0], [3, 1], [2]):  # last batch of one row, averaged over 1
        _, g = ref.loss_and_grads(want, X[idx], y[idx], acts, "cross_entropy")
        want = opt.step(want, g)
    assert rel_err(got, want) == 0.0

    # full batch in default order == one step on the whole-batch mean gradient
    got = ref.train_steps(params, X, y, acts, "cross_entropy", ref.SGD(lr=0.5), 5)
    _, g = ref.loss_and_grads(params, X, y, acts, "cross_entropy")
    want = [(W - 0.5 * dW, b - 0.5 * db) for (W, b), (dW, db) in zip(params, g)]
    assert rel_err(got, want) < 1e-15


def test_training_reduces_the_loss():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(64, 3))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    params = ref.init_params([3, 8, 8, 2], seed=1)
    acts = ["tanh", "tanh"]
    L0 = ref.loss_value(params, X, y, acts, "cross_entropy")
    opt = ref.Adam(lr=0.02)
    for epoch in range(20):
        params = ref.train_steps(params, X, y, acts, "cross_entropy", opt, 16, order=rng.permutation(64))
    L1 = ref.loss_value(params, X, y, acts, "cross_entropy")
    assert L1 < 0.5 * L0


def test_gradcheck_catches_a_wrong_derivative():
    # the comparison above must be able to fail: a slightly wrong tanh' is caught
    bad_tanh = (np.tanh, lambda z: 1.0 - 0.99 * np.tanh(z) ** 2)
    params, X, y = make_problem("mse", [bad_tanh, "tanh"])
    _, grads = ref.loss_and_grads(params, X, y, [bad_tanh, "tanh"], "mse")
    num = ref.numerical_grads(params, X, y, [bad_tanh, "tanh"], "mse")
    assert rel_err(grads, num) > 1e-4
