"""Sample weights through every layer: the NumPy oracle's weighted loss, the kernels against it
and against central differences (float64), data files (.npz array `w`, a CSV weight column by
name or index), weighted metrics against scikit-learn's, the CLI (training, evaluate, metadata)
and integer weights against repeated rows.

The definition (scikit-learn's MLP `_backprop`): a minibatch's loss is sum(w_b loss_b) / sum(w_b),
its gradient that of this loss; a batch whose weights sum to 0 has no data gradient.
"""

import json

import numpy as np
import pytest
import reference as ref
from fixtures.cli import assert_exit, cli
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score

from deltaprop.compute.engine import OptimizerSpec
from deltaprop.errors import DataError
from deltaprop.io.datasets import load_dataset
from deltaprop.io.safetensors import read_safetensors

SIZES, N, BATCH = [5, 7, 6, 3], 37, 8  # 5 steps, the last one partial (5 rows)
ACTS = ["tanh", "tanh"]


def _problem(loss, seed=0):
    rng = np.random.default_rng(seed)
    params = ref.init_params(SIZES, seed=seed)
    X = rng.normal(size=(N, SIZES[0]))
    y = rng.integers(0, SIZES[-1], N) if loss == "cross_entropy" else rng.uniform(size=(N, SIZES[-1]))
    w = rng.integers(0, 4, N) * rng.uniform(0.5, 1.5, N)  # zeros included
    return params, X, y, w, rng.permutation(N)


def _engine(engine, loss, dtype="float64"):
    return engine(SIZES, ACTS + ["identity"], loss, dtype)


def _gradient(eng, X, y, theta, w=None):
    return eng.gradient(X.astype(eng.dtype), y, theta, weights=w)


# ---- the oracle -------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_reference_weighted_loss_is_the_repeated_rows_mean_and_its_gradient_is_exact(loss):
    params, X, y, _, _ = _problem(loss)
    w = np.array([0, 1, 2, 3, 1, 0, 2] + [1] * 30, dtype=float)
    L, grads = ref.loss_and_grads(params, X, y, ACTS, loss, weights=w)
    Xr, yr = np.repeat(X, w.astype(int), axis=0), np.repeat(y, w.astype(int), axis=0)
    Lr, gr = ref.loss_and_grads(params, Xr, yr, ACTS, loss)
    assert L == pytest.approx(Lr, rel=1e-13)
    for (dW, db), (rW, rb) in zip(grads, gr):
        np.testing.assert_allclose(dW, rW, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(db, rb, rtol=1e-12, atol=1e-15)
    numeric = ref.numerical_grads(params, X, y, ACTS, loss, weights=w)
    for (dW, db), (nW, nb) in zip(grads, numeric):
        np.testing.assert_allclose(dW, nW, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(db, nb, rtol=1e-6, atol=1e-9)


# ---- the kernels ------------------------------------------------------------------------------

OPTS = {"sgd": (OptimizerSpec("sgd", momentum=0.9, nesterov=True, weight_decay=1e-3),
                lambda: ref.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), 0.05),
        "adam": (OptimizerSpec("adam", weight_decay=1e-3), lambda: ref.Adam(lr=0.01, weight_decay=1e-3), 0.01)}


@pytest.mark.parametrize("opt_name", list(OPTS))
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_weighted_run_steps_match_the_reference(engine, loss, opt_name):
    """Five weighted steps over a shuffled order (a partial last batch, zero weights): weights,
    per-step losses and per-step weighted accuracy as the oracle's, float64, to ~1e-10."""
    spec, make_ref, lr = OPTS[opt_name]
    params, X, y, w, perm = _problem(loss, seed=1)
    eng = _engine(engine, loss)
    theta = eng.flatten(params)
    n_steps = -(-N // BATCH)
    done, step_loss, step_correct = eng.run_steps(
        X, np.zeros(SIZES[0]), np.ones(SIZES[0]), y, perm, 0, n_steps, BATCH, theta, np.zeros_like(theta),
        spec, np.zeros((2, theta.size)), np.full(n_steps, lr), 0, weights=w)
    assert done == n_steps
    opt, want_loss, want_correct = make_ref(), [], []
    for s in range(n_steps):
        idx = perm[s * BATCH:(s + 1) * BATCH]
        L, grads = ref.loss_and_grads(params, X[idx], y[idx], ACTS, loss, weights=w[idx])
        want_loss.append(L)
        if loss == "cross_entropy":
            _, As = ref.forward(params, X[idx], ACTS)
            hit = As[-1].argmax(1) == y[idx]
            want_correct.append(len(idx) * (w[idx] * hit).sum() / w[idx].sum())
        params = opt.step(params, grads)
    np.testing.assert_allclose(theta, eng.flatten(params), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(step_loss, want_loss, rtol=1e-12)
    if loss == "cross_entropy":
        np.testing.assert_allclose(step_correct, want_correct, rtol=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_weighted_kernel_gradient_matches_central_differences(engine, loss):
    """dL/dtheta of the kernels' own weighted loss against central differences of that loss, float64."""
    params, X, y, w, _ = _problem(loss, seed=2)
    eng = _engine(engine, loss)
    theta = eng.flatten(params)
    L, g = _gradient(eng, X, y, theta, w)
    L_ref, _ = ref.loss_and_grads(params, X, y, ACTS, loss, weights=w)
    assert L == pytest.approx(L_ref, rel=1e-12)
    eps, numeric = 1e-5, np.zeros_like(theta)
    for i in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (_gradient(eng, X, y, up, w)[0] - _gradient(eng, X, y, down, w)[0]) / (2 * eps)
    assert np.abs(g - numeric).max() < 1e-8 * max(1.0, np.abs(g).max())
    assert np.abs(g).max() > 1e-3  # a gradient worth checking


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_integer_weights_give_the_gradient_of_the_repeated_rows(engine, loss):
    params, X, y, w, _ = _problem(loss, seed=3)
    w = np.round(w)
    eng = _engine(engine, loss)
    theta = eng.flatten(params)
    L, g = _gradient(eng, X, y, theta, w)
    Lr, gr = _gradient(eng, np.repeat(X, w.astype(int), axis=0), np.repeat(y, w.astype(int), axis=0), theta)
    assert L == pytest.approx(Lr, rel=1e-13)
    np.testing.assert_allclose(g, gr, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unit_weights_give_the_unweighted_gradient_bit_for_bit(engine, dtype):
    params, X, y, _, _ = _problem("cross_entropy", seed=4)
    eng = _engine(engine, "cross_entropy", dtype)
    theta = eng.flatten(params)
    L, g = _gradient(eng, X, y, theta)
    L1, g1 = _gradient(eng, X, y, theta, np.ones(N))
    assert g1.tobytes() == g.tobytes()
    assert L1 == pytest.approx(L, rel=1e-14)
    _, g2 = _gradient(eng, X, y, theta, np.full(N, 2.5))  # a common factor changes nothing but rounding
    np.testing.assert_allclose(g2, g, rtol=1e-5 if dtype == "float32" else 1e-13, atol=1e-7)


def test_a_batch_of_zero_weights_has_no_data_gradient(engine):
    """Its loss is 0 and plain SGD leaves the weights as they were; the batches around it train."""
    params, X, y, _, _ = _problem("cross_entropy", seed=5)
    eng = _engine(engine, "cross_entropy")
    theta = eng.flatten(params)
    w = np.ones(N)
    w[8:16] = 0.0  # the second batch, in file order
    L, g = _gradient(eng, X[8:16], y[8:16], theta, w[8:16])
    assert L == 0.0 and not g.any()
    before = theta.copy()
    done, step_loss, step_correct = eng.run_steps(
        X, np.zeros(SIZES[0]), np.ones(SIZES[0]), y, np.arange(N), 8, 1, BATCH, theta, np.zeros_like(theta),
        OptimizerSpec("sgd"), np.zeros((2, theta.size)), [0.1], 0, weights=w)
    assert done == 1 and step_loss[0] == 0.0 and step_correct[0] == 0.0 and np.array_equal(theta, before)
    eng.run_steps(X, np.zeros(SIZES[0]), np.ones(SIZES[0]), y, np.arange(N), 0, 1, BATCH, theta,
                  np.zeros_like(theta), OptimizerSpec("sgd"), np.zeros((2, theta.size)), [0.1], 0, weights=w)
    assert not np.array_equal(theta, before)


def test_engine_rejects_weights_of_the_wrong_length(engine):
    params, X, y, _, _ = _problem("mse")
    eng = _engine(engine, "mse")
    with pytest.raises(ValueError, match=r"weights need shape \(37,\)"):
        _gradient(eng, X, y, eng.flatten(params), np.ones(N - 1))


# ---- data files ------------------------------------------------------------------------------

def test_npz_array_w_and_csv_weight_column_by_name_or_index(tmp_path):
    rng = np.random.default_rng(0)
    X, y, w = rng.normal(size=(6, 2)), np.array([0, 1, 2, 0, 1, 2]), np.array([1.0, 0.0, 2.5, 1.0, 3.0, 0.5])
    np.savez(tmp_path / "d.npz", X=X, y=y, w=w)
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert np.array_equal(ds.w, w) and ds.w.dtype == np.float64 and ds.w_from == "array 'w'"
    np.savez(tmp_path / "plain.npz", X=X, y=y)
    assert load_dataset(str(tmp_path / "plain.npz")).w is None
    np.savez(tmp_path / "named.npz", X=X, y=y, importance=w)
    assert np.array_equal(load_dataset(str(tmp_path / "named.npz"), weight_column="importance").w, w)

    rows = "\n".join(f"{a},{wi},{b},{yi}" for (a, b), wi, yi in zip(X, w, y))
    (tmp_path / "d.csv").write_text("a,wt,b,label\n" + rows + "\n")
    for column in ("wt", 1):
        ds = load_dataset(str(tmp_path / "d.csv"), weight_column=column, require_weights=True)
        assert np.array_equal(ds.w, w) and np.allclose(ds.X, X) and np.array_equal(ds.y, y)
    unweighted = load_dataset(str(tmp_path / "d.csv"))
    assert unweighted.w is None and unweighted.X.shape == (6, 3)  # no weight column named: a feature
    # evaluate/predict data may lack the column (no weights then); training data may not
    (tmp_path / "nw.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    assert load_dataset(str(tmp_path / "nw.csv"), weight_column="wt").w is None
    with pytest.raises(DataError, match=r"weight column 'wt' \(data.weight_column\) not found"):
        load_dataset(str(tmp_path / "nw.csv"), weight_column="wt", require_weights=True)
    with pytest.raises(DataError, match="is the label column"):
        load_dataset(str(tmp_path / "d.csv"), weight_column="label")
    with pytest.raises(DataError, match="is not a column index: the file has 4 columns"):
        load_dataset(str(tmp_path / "d.csv"), weight_column=4)
    np.save(tmp_path / "f.npy", X)
    np.save(tmp_path / "f_y.npy", y)
    with pytest.raises(DataError, match="only .csv .a column. and .npz .an array. data carry them"):
        load_dataset(str(tmp_path / "f.npy"), weight_column="w", require_weights=True)


@pytest.mark.parametrize("bad,message", [
    (lambda w: np.where(np.arange(6) == 4, -1.0, w), r"array 'w' at row 4 \(0-based\) is -1.0, negative"),
    (lambda w: np.where(np.arange(6) == 2, np.nan, w), r"array 'w' at row 2 \(0-based\) is nan, not a finite"),
    (lambda w: np.where(np.arange(6) == 0, np.inf, w), r"array 'w' at row 0 \(0-based\) is inf, not a finite"),
    (lambda w: w[:5], r"X has 6 rows but the sample weights \(array 'w'\) have shape \(5,\)"),
    (lambda w: w.reshape(3, 2), r"have shape \(3, 2\)"),
    (lambda w: np.zeros(6), r"sample weights \(array 'w'\) are all zero"),
    (lambda w: np.array(list("abcdef")), r"have dtype <U1, expected numbers"),
])
def test_bad_weights_are_errors_naming_file_and_row(tmp_path, bad, message):
    np.savez(tmp_path / "d.npz", X=np.ones((6, 2)), y=np.arange(6) % 2, w=bad(np.ones(6)))
    with pytest.raises(DataError, match=message) as e:
        load_dataset(str(tmp_path / "d.npz"))
    assert str(tmp_path / "d.npz") in str(e.value)


def test_bad_csv_weight_names_line_and_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,w,label\n1,1,0\n2,-3,1\n3,1,0\n")
    with pytest.raises(DataError, match=r"d.csv: column 'w' at line 3 is -3.0, negative"):
        load_dataset(str(tmp_path / "d.csv"), weight_column="w", require_weights=True)
    (tmp_path / "n.csv").write_text("a,w,label\n1,1,0\n2,1,1\n3,nan,0\n")
    with pytest.raises(DataError, match=r"n.csv: the data contains 1 non-finite .* line 4, column 'w'"):
        load_dataset(str(tmp_path / "n.csv"), weight_column="w", require_weights=True)


# ---- metrics ---------------------------------------------------------------------------------

def test_weighted_metrics_are_sklearns_with_sample_weight(registry):
    from deltaprop.compute import layout
    from deltaprop.training.model import Model
    rng = np.random.default_rng(6)
    X, w = rng.normal(size=(50, 4)), rng.uniform(0, 3, 50)
    theta = layout.flatten([(rng.normal(size=(3, 4)), rng.normal(size=3))], np.float64)
    clf = Model([4, 3], ["identity"], "cross_entropy", "float64", theta, np.zeros(4), np.ones(4))
    y = rng.integers(0, 3, 50)
    proba = clf.predict_proba(X)
    r = clf.evaluate(X, y, weights=w)
    assert r["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(1), sample_weight=w), rel=1e-12)
    assert r["loss"] == pytest.approx(log_loss(y, proba, sample_weight=w, labels=[0, 1, 2]), rel=1e-9)
    assert r["weight_sum"] == pytest.approx(w.sum()) and r["n"] == 50
    assert np.sum(r["confusion"]) == 50  # rows, not weights
    assert "weight_sum" not in clf.evaluate(X, y)

    reg = Model([4, 3], ["identity"], "mse", "float64", theta, np.zeros(4), np.ones(4))
    t = rng.normal(size=(50, 3))
    out = reg.predict_proba(X)
    r = reg.evaluate(X, t, weights=w)
    assert r["mse"] == pytest.approx(mean_squared_error(t, out, sample_weight=w), rel=1e-12)
    assert r["r2"] == pytest.approx(r2_score(t, out, sample_weight=w), rel=1e-12)
    assert r["loss"] == pytest.approx(0.5 * 3 * r["mse"], rel=1e-12)
    assert r["r2"] != pytest.approx(reg.evaluate(X, t)["r2"], rel=1e-6)  # the weights matter


# ---- the CLI ---------------------------------------------------------------------------------

def _write(tmp_path, name, X, y, w=None):
    arrays = {"X": X, "y": y} | ({} if w is None else {"w": w})
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


CONFIG = """[model]
hidden = [8]
activation = "tanh"
[data]
train = "{train}"
test = "{test}"
validation_fraction = {val}
scale = "none"
[training]
epochs = {epochs}
batch_size = {batch}
shuffle = {shuffle}
dtype = "float64"
[optimizer]
name = "sgd"
lr = 0.2
momentum = 0.5
"""


def _train(tmp_path, name, train, test="", val=0.0, epochs=4, batch=32, shuffle="true", extra=()):
    (tmp_path / f"{name}.toml").write_text(CONFIG.format(train=train, test=test, val=val, epochs=epochs,
                                                         batch=batch, shuffle=shuffle))
    r = cli("train", tmp_path / f"{name}.toml", "--run-dir", tmp_path / name, *extra)
    assert_exit(r, 0)
    return r


def test_cli_trains_with_npz_weights_records_them_and_evaluates_weighted(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
    w = rng.integers(0, 4, 300).astype(float)
    train = _write(tmp_path, "train.npz", X[:200], y[:200], w[:200])
    test = _write(tmp_path, "test.npz", X[200:], y[200:], w[200:])
    r = _train(tmp_path, "run", train, test, val=0.2)
    assert "sample weights: array 'w' (160 training rows" in r.stdout
    _, meta = read_safetensors(tmp_path / "run" / "model.safetensors")
    assert meta["sample_weights"]["from"] == "array 'w'" and meta["sample_weights"]["rows"] == 160
    assert 0 < meta["sample_weights"]["total"] < w[:200].sum()  # the training rows' share
    assert meta["config"]["data"]["weight_column"] == ""

    r = cli("evaluate", tmp_path / "run", "--data", test, "--json")
    assert_exit(r, 0)
    got = json.loads(r.stdout)
    from deltaprop.training.model import load_model
    pred = load_model(tmp_path / "run").predict(X[200:])
    assert got["weight_sum"] == w[200:].sum()
    assert got["accuracy"] == pytest.approx(accuracy_score(y[200:], pred, sample_weight=w[200:]), abs=1e-12)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["test_accuracy"] == pytest.approx(got["accuracy"], abs=1e-12)
    plain = cli("evaluate", tmp_path / "run", "--data", _write(tmp_path, "plain.npz", X[200:], y[200:]), "--json")
    assert "weight_sum" not in json.loads(plain.stdout)


def test_cli_csv_weight_column_trains_and_predicts_without_it_as_a_feature(tmp_path):
    rng = np.random.default_rng(8)
    X, w = rng.normal(size=(120, 3)), rng.uniform(0, 2, 120)
    y = (X[:, 0] > 0).astype(int)
    lines = [f"{a},{b},{wi},{c},{yi}" for (a, b, c), wi, yi in zip(X, w, y)]
    (tmp_path / "d.csv").write_text("a,b,importance,c,label\n" + "\n".join(lines) + "\n")
    (tmp_path / "c.toml").write_text(f'[model]\nhidden = [4]\n[data]\ntrain = "{tmp_path / "d.csv"}"\n'
                                     'weight_column = "importance"\n[training]\nepochs = 2\n')
    assert_exit(cli("train", tmp_path / "c.toml", "--run-dir", tmp_path / "run"), 0)
    _, meta = read_safetensors(tmp_path / "run" / "model.safetensors")
    assert meta["sizes"][0] == 3 and meta["sample_weights"]["from"] == "column 'importance'"
    assert meta["sample_weights"]["total"] == pytest.approx(w.sum())
    r = cli("predict", tmp_path / "run", "--data", tmp_path / "d.csv", "--output", tmp_path / "p.npy")
    assert_exit(r, 0)
    assert np.load(tmp_path / "p.npy").shape == (120, 2)


def test_cli_integer_weights_train_the_weights_of_repeated_rows(tmp_path):
    """One full batch in file order: a weighted file and the file with each row repeated w times
    end with the same weights (float64; summation order aside)."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(40, 4))
    y = (X[:, 1] - X[:, 2] > 0).astype(int)
    w = rng.integers(0, 4, 40)
    weighted = _write(tmp_path, "w.npz", X, y, w.astype(float))
    repeated = _write(tmp_path, "r.npz", np.repeat(X, w, axis=0), np.repeat(y, w))
    _train(tmp_path, "weighted", weighted, epochs=6, batch=1000, shuffle="false")
    _train(tmp_path, "repeated", repeated, epochs=6, batch=1000, shuffle="false")
    _train(tmp_path, "unweighted", _write(tmp_path, "u.npz", X, y), epochs=6, batch=1000, shuffle="false")
    a, _ = read_safetensors(tmp_path / "weighted" / "model.safetensors")
    b, _ = read_safetensors(tmp_path / "repeated" / "model.safetensors")
    c, _ = read_safetensors(tmp_path / "unweighted" / "model.safetensors")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-10, atol=1e-12)
        assert not np.allclose(a[name], c[name], rtol=1e-3)
    la = [json.loads(line)["loss"] for line in (tmp_path / "weighted" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (tmp_path / "repeated" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(la, lb, rtol=1e-12)


def test_unweighted_model_files_have_no_sample_weights_entry(tmp_path):
    rng = np.random.default_rng(10)
    _train(tmp_path, "run", _write(tmp_path, "d.npz", rng.normal(size=(50, 4)), rng.integers(0, 2, 50)), epochs=1)
    _, meta = read_safetensors(tmp_path / "run" / "model.safetensors")
    assert "sample_weights" not in meta


def test_a_split_whose_weights_are_all_zero_is_an_error(tmp_path):
    """Through the validation split: no training rows that count, or no validation rows that do."""
    from deltaprop.api import read_config
    from deltaprop.plugins.manager import get_registry
    from deltaprop.training.prepare import prepare
    rng = np.random.default_rng(11)
    X, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    order = np.random.default_rng([0, 0x5A11]).permutation(20)  # prepare's split for seed 0
    for part, message in ((order[:10], "of all 10 training rows are 0"), (order[10:], "of all 10 validation rows")):
        w = np.zeros(20)
        w[part] = 1.0
        np.savez(tmp_path / "d.npz", X=X, y=y, w=w)
        cfg = read_config({"model": {"hidden": [4]}, "data": {"train": str(tmp_path / "d.npz"), "test": "",
                                                              "validation_fraction": 0.5}})
        with pytest.raises(DataError, match=message):
            prepare(cfg, get_registry())
