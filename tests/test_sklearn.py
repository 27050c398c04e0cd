"""deltaprop.sklearn: scikit-learn's own estimator checks, a GridSearchCV on digits against
scikit-learn's MLPClassifier, save/load with the CLI, warm starts, partial fits and early stopping.

The checked instances are small (hidden 16, <= 40 epochs) so the ~45 checks per estimator run in
seconds once the relu/float32 kernels are in the Numba cache. Checks expected to fail are each
estimator's `EXPECTED_FAILED_CHECKS` (check name -> reason), run as strict xfails: one that starts
passing fails the suite, so the list stays honest.
"""

import json
import pickle
import time
import warnings

import numpy as np
import pytest
from fixtures.cli import assert_exit, cli
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import (
    _check_name,
    estimator_checks_generator,
    parametrize_with_checks,
)

from deltaprop.sklearn import MLPClassifier, MLPRegressor, expected_failed_checks, load
from deltaprop.sklearn._estimators import FLOAT32_CHECKS

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

CHECKED = [
    MLPClassifier(hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.01),
    MLPRegressor(hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.01),
]


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", CHECKED, ids=lambda e: type(e).__name__)
def test_expected_failed_checks_reach_sklearn(estimator, monkeypatch):
    """Every listed check is one scikit-learn runs for this estimator (a misspelt name would never
    match), and a listed check becomes a strict xfail with its reason through the same
    `expected_failed_checks` hook the test above passes to parametrize_with_checks."""
    names = {_check_name(check) for _, check in estimator_checks_generator(estimator)}
    assert len(names) > 40
    assert set(expected_failed_checks(estimator)) <= names
    listed = {"check_fit2d_1sample": "an example reason"}
    monkeypatch.setattr(type(estimator), "EXPECTED_FAILED_CHECKS", listed)
    decorator = parametrize_with_checks([estimator], expected_failed_checks=expected_failed_checks,
                                        xfail_strict=True)
    marked = {_check_name(getattr(p, "values", p)[1]): [m for m in getattr(p, "marks", ()) if m.name == "xfail"]
              for p in decorator.args[1]}  # pytest.param(...) when marked, else (estimator, check)
    assert {name for name, marks in marked.items() if marks} == set(listed) | set(FLOAT32_CHECKS)
    assert set(expected_failed_checks(estimator)) == set(listed) | set(FLOAT32_CHECKS)  # float32 instances
    (mark,) = marked["check_fit2d_1sample"]
    assert mark.kwargs["reason"] == "an example reason" and mark.kwargs["strict"] is True


# ---- the data the remaining tests share ------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    scaler = StandardScaler().fit(X[:1400])
    return scaler.transform(X[:1400]), y[:1400], scaler.transform(X[1400:]), y[1400:]


def test_grid_search_on_digits_matches_sklearn(record_property, capsys):
    """Pipeline(StandardScaler, MLP) in GridSearchCV over two parameters: deltaprop's best score is
    within one point of scikit-learn's own MLPClassifier on the same grid. Both times are printed
    in pytest's output (capture or not) and recorded as properties (in --junitxml reports)."""
    X, y = load_digits(return_X_y=True)
    grid = {"mlp__hidden_layer_sizes": [(50,), (100,)], "mlp__alpha": [1e-4, 1e-2]}

    def search(mlp):
        gs = GridSearchCV(Pipeline([("scale", StandardScaler()), ("mlp", mlp)]), grid, cv=5)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gs.fit(X, y)
        return gs, time.perf_counter() - t0

    # fit and predict kernels compiled (or loaded from Numba's cache) before the clock starts
    MLPClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X[:50], y[:50]).predict(X[:5])
    ours, t_ours = search(MLPClassifier(max_iter=200, random_state=0))
    theirs, t_sk = search(SkMLPClassifier(max_iter=200, random_state=0))
    record_property("gridsearch_seconds_deltaprop", round(t_ours, 2))
    record_property("gridsearch_seconds_sklearn", round(t_sk, 2))
    with capsys.disabled():
        print(f"\nGridSearchCV digits, 4 candidates x {ours.n_splits_} folds + refit:\n"
              f"  deltaprop  best {ours.best_score_:.4f} {ours.best_params_}  {t_ours:.2f} s\n"
              f"  sklearn    best {theirs.best_score_:.4f} {theirs.best_params_}  {t_sk:.2f} s")
    assert ours.best_score_ >= theirs.best_score_ - 0.01  # better is fine too


def test_plugin_activation_swish_fits_and_predicts(digits, tmp_path):
    """activation="swish" comes from the example plugin (examples/deltaprop-swish, installed in
    .venv): the estimators train with it, predict what a NumPy forward pass with swish gives from
    their coefs_/intercepts_, and the saved model records the plugin and predicts the same."""
    from deltaprop.plugins.manager import get_registry
    assert get_registry().activations["swish"].source == "deltaprop-swish"
    Xtr, ytr, Xte, yte = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), activation="swish", max_iter=20, random_state=0).fit(Xtr, ytr)
    assert clf.model_.activations == ["swish", "identity"] and clf.n_iter_ == 20
    assert clf.score(Xte, yte) > 0.9

    def swish(z):
        return z / (1.0 + np.exp(-z))

    logits = swish(Xte @ clf.coefs_[0] + clf.intercepts_[0]) @ clf.coefs_[1] + clf.intercepts_[1]
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    assert np.abs(clf.predict_proba(Xte) - proba).max() < 1e-5  # float32 weights and arithmetic

    clf.save(tmp_path / "swish.safetensors")
    back = load(tmp_path / "swish.safetensors")
    assert back.activation == "swish" and "deltaprop-swish" in json.dumps(back.model_.plugins)
    assert np.array_equal(back.predict_proba(Xte), clf.predict_proba(Xte))

    target = np.tanh(Xtr[:, 10]) - 0.5 * Xtr[:, 20]
    reg = MLPRegressor(hidden_layer_sizes=(16,), activation="swish", max_iter=60, learning_rate_init=0.01,
                       random_state=0).fit(Xtr, target)
    assert reg.model_.activations == ["swish", "identity"]
    out = swish(Xte @ reg.coefs_[0] + reg.intercepts_[0]) @ reg.coefs_[1] + reg.intercepts_[1]
    assert np.abs(reg.predict(Xte) - out.ravel()).max() < 1e-4
    assert reg.score(Xte, np.tanh(Xte[:, 10]) - 0.5 * Xte[:, 20]) > 0.8


def test_threads_auto_is_tuned_across_fits_and_changes_no_result(digits, monkeypatch):
    """threads=0 fits take their thread count from one process-wide tuner fed by every fit (short
    fits never reach the trainer's own probing); an explicit count bypasses it. The weights are
    the same whatever the count."""
    from deltaprop.sklearn import _base as dsk
    from deltaprop.training.threads import SharedThreadTuner, ThreadTuner
    Xtr, ytr, _, _ = digits
    tuner = ThreadTuner(2)
    tuner.next_probe = float("inf")  # no probing: the test sets the count each fit gets
    monkeypatch.setattr(dsk, "_FIT_THREADS", SharedThreadTuner())
    dsk._FIT_THREADS.tuner = tuner
    kw = dict(hidden_layer_sizes=(32,), max_iter=3, random_state=0)
    auto = []
    for threads in (2, 1):
        tuner.current = threads
        auto.append(MLPClassifier(**kw).fit(Xtr, ytr))
        assert auto[-1].model_.config["training"]["threads"] == threads
        assert threads in tuner.seconds_per_sample  # the fit was recorded under its count
    fixed = [MLPClassifier(threads=t, **kw).fit(Xtr, ytr) for t in (1, 2)]
    assert [c.model_.config["training"]["threads"] for c in fixed] == [1, 2]
    for clf in auto + fixed[1:]:
        assert np.array_equal(clf.model_.theta, fixed[0].model_.theta)
    before = dict(tuner.seconds_per_sample)
    MLPClassifier(threads=1, **kw).fit(Xtr, ytr)
    assert tuner.seconds_per_sample == before  # not a tuned fit


# ---- files: the estimator and the CLI read each other's models -------------------------------

def test_saved_model_evaluates_the_same_with_the_cli(tmp_path, digits):
    Xtr, ytr, Xte, yte = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=20, random_state=0).fit(Xtr, ytr)
    clf.save(tmp_path / "m.safetensors")
    np.savez(tmp_path / "test.npz", X=Xte, y=yte)
    r = cli("evaluate", tmp_path / "m.safetensors", "--data", tmp_path / "test.npz", "--json")
    assert_exit(r, 0)
    res = json.loads(r.stdout)
    assert res["n"] == len(yte)
    assert res["accuracy"] == pytest.approx(clf.score(Xte, yte), abs=1e-12)

    back = load(tmp_path / "m.safetensors")
    assert type(back) is MLPClassifier and back.get_params() == clf.get_params()
    assert np.array_equal(back.predict_proba(Xte), clf.predict_proba(Xte))
    assert back.loss_curve_ == pytest.approx(clf.loss_curve_) and back.n_features_in_ == 64


def test_cli_trained_model_loads_into_an_estimator(tmp_path, digits):
    Xtr, ytr, Xte, yte = digits
    np.savez(tmp_path / "train.npz", X=Xtr, y=ytr)
    np.savez(tmp_path / "test.npz", X=Xte, y=yte)
    (tmp_path / "c.toml").write_text(
        f'[model]\nhidden = [32]\n[data]\ntrain = "{tmp_path / "train.npz"}"\ntest = ""\n'
        "[training]\nepochs = 5\nbatch_size = 64\n")
    assert_exit(cli("train", tmp_path / "c.toml", "--run-dir", tmp_path / "run"), 0)
    r = cli("evaluate", tmp_path / "run", "--data", tmp_path / "test.npz", "--json")
    assert_exit(r, 0)
    clf = MLPClassifier.load(tmp_path / "run")
    assert clf.hidden_layer_sizes == (32,) and clf.max_iter == 5 and list(clf.classes_) == list(range(10))
    assert clf.score(Xte, yte) == pytest.approx(json.loads(r.stdout)["accuracy"], abs=1e-12)
    with pytest.raises(ValueError, match="MLPClassifier"):
        MLPRegressor.load(tmp_path / "run")


def test_string_labels_and_regression_files_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 4))
    y = np.array(["cat", "dog", "emu"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 1)]
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, learning_rate_init=0.01, random_state=1).fit(X, y)
    clf.save(tmp_path / "c.safetensors")
    back = MLPClassifier.load(tmp_path / "c.safetensors")
    assert list(back.classes_) == ["cat", "dog", "emu"]
    assert (back.predict(X) == clf.predict(X)).all() and set(clf.predict(X)) <= {"cat", "dog", "emu"}

    Y = np.stack([X[:, 0] + X[:, 1], X[:, 2] * 2], axis=1)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, Y)
    reg.save(tmp_path / "r.safetensors")
    back = load(tmp_path / "r.safetensors")
    assert type(back) is MLPRegressor and back.predict(X).shape == (120, 2)
    assert np.array_equal(back.predict(X), reg.predict(X))


def test_pickle_drops_the_compiled_engine(digits):
    Xtr, ytr, Xte, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(Xtr, ytr)
    blob = pickle.dumps(clf)
    assert b"deltaprop_net_" not in blob  # no reference to the generated kernel module
    assert np.array_equal(pickle.loads(blob).predict_proba(Xte), clf.predict_proba(Xte))


# ---- training semantics ----------------------------------------------------------------------

def test_tol_and_n_iter_no_change_stop_as_sklearn_does(digits):
    """A tol no epoch can beat: both stop after n_iter_no_change + 2 epochs."""
    Xtr, ytr, _, _ = digits
    kw = dict(hidden_layer_sizes=(16,), max_iter=50, tol=10.0, n_iter_no_change=3, random_state=0)
    ours, theirs = MLPClassifier(**kw).fit(Xtr, ytr), SkMLPClassifier(**kw).fit(Xtr, ytr)
    assert ours.n_iter_ == theirs.n_iter_ == 5
    assert len(ours.loss_curve_) == 5 and ours.best_loss_ == min(ours.loss_curve_)


def _sklearn_stop_epoch(losses, tol, n_iter_no_change):
    """scikit-learn's MLP rule (_update_no_improvement_count on the training loss), as written there."""
    best, count = np.inf, 0
    for epoch, loss in enumerate(losses, 1):
        count = count + 1 if loss > best - tol else 0
        best = min(best, loss)
        if count > n_iter_no_change:
            return epoch
    return None


@pytest.mark.parametrize("losses", [
    [1.0, 0.5, 0.4, 0.39995, 0.3999, 0.39985, 0.3998, 0.39975, 0.3997, 0.39965, 0.3996],  # creeping
    [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],  # a plateau
    [1.0, 0.8, 0.85, 0.9, 0.7999, 0.95, 0.96, 0.97, 0.98],  # noisy, one small new best
    [1.0, 0.9999, 0.9998, 0.9997, 0.9996, 0.9995],  # steps of exactly tol
])
def test_trainer_running_best_rule_is_sklearns(losses):
    """early_stopping.best = "running" with patience n + 1 stops on the epoch scikit-learn stops on."""
    from deltaprop.training.config import config_from_dict
    from deltaprop.training.early_stopping import EarlyStopping
    from deltaprop.training.state import State
    tol, n = 1e-4, 3
    cfg = config_from_dict({"early_stopping": {"patience": n + 1, "monitor": "train_loss", "min_delta": tol,
                                               "best": "running", "restore_best": False}})
    stopper, state = EarlyStopping(cfg.early_stopping), State()
    ours = None
    for epoch, loss in enumerate(losses, 1):
        state.epoch = epoch - 1
        if stopper.update({"loss": loss}, state, np.zeros(1)):
            ours = epoch
            break
    assert ours == _sklearn_stop_epoch(losses, tol, n)


def test_early_stopping_on_validation_accuracy_restores_the_best(digits):
    Xtr, ytr, _, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, early_stopping=True, n_iter_no_change=3,
                        learning_rate_init=0.01, random_state=0).fit(Xtr, ytr)
    assert clf.n_iter_ < 200 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_) > 0.9
    assert clf.best_loss_ is None
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=100, early_stopping=True, random_state=0)
    reg.fit(Xtr, Xtr[:, 10] - Xtr[:, 20])
    assert max(reg.validation_scores_) == reg.best_validation_score_ > 0.8  # R^2 on the validation rows


def test_warm_start_and_partial_fit_continue_training(digits):
    Xtr, ytr, Xte, yte = digits
    kw = dict(hidden_layer_sizes=(32,), random_state=0, learning_rate_init=0.01)
    clf = MLPClassifier(max_iter=2, warm_start=True, **kw).fit(Xtr, ytr)
    first = list(clf.loss_curve_)
    clf.fit(Xtr, ytr)  # continues from the weights: its first epoch beats the cold start's
    assert len(clf.loss_curve_) == 4 and clf.n_iter_ == 2 and clf.loss_curve_[2] < first[0]

    inc = MLPClassifier(**kw)
    with pytest.raises(ValueError, match="classes must be passed"):
        inc.partial_fit(Xtr[:100], ytr[:100])
    for i in range(0, 1400, 350):  # four chunks; the first lacks no class, but classes= is the law
        inc.partial_fit(Xtr[i:i + 350], ytr[i:i + 350], classes=np.arange(10))
    assert inc.n_iter_ == 1 and len(inc.loss_curve_) == 4 and inc.t_ == 1400
    assert inc._step == 4 * 2  # Adam's step count carries over: 2 batches of <= 200 rows per chunk
    for _ in range(5):
        inc.partial_fit(Xtr, ytr)
    assert inc.score(Xte, yte) > 0.9
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        inc.partial_fit(Xtr[:10], ytr[:10] + 100)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(Xtr, ytr, classes=np.arange(10))


def test_same_weights_as_the_trainer_for_the_same_config(digits, tmp_path):
    """No second implementation: the estimator's weights are the CLI's for the equivalent config."""
    Xtr, ytr, _, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, batch_size=100, alpha=0.0, tol=0.0,
                        random_state=7).fit(Xtr, ytr)
    np.savez(tmp_path / "train.npz", X=Xtr.astype(np.float32), y=ytr)
    (tmp_path / "c.toml").write_text(
        f'[model]\nhidden = [16]\ninit = "glorot_sklearn"\n[data]\ntrain = "{tmp_path / "train.npz"}"\ntest = ""\nscale = "none"\n'
        "[training]\nepochs = 3\nbatch_size = 100\nseed = 7\n")
    assert_exit(cli("train", tmp_path / "c.toml", "--run-dir", tmp_path / "run"), 0)
    cli_model = MLPClassifier.load(tmp_path / "run").model_
    assert np.array_equal(cli_model.theta, clf.model_.theta)


def test_activations_dtype_and_bad_input(digits):
    Xtr, ytr, Xte, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(8, 8), activation=("tanh", "logistic"), dtype="float64",
                        max_iter=2, random_state=0).fit(Xtr, ytr)
    assert clf.model_.activations == ["tanh", "sigmoid", "identity"] and clf.model_.theta.dtype == np.float64
    assert [c.shape for c in clf.coefs_] == [(64, 8), (8, 8), (8, 10)]
    with pytest.raises(ValueError, match="unknown activation 'relux'; registered:"):
        MLPClassifier(activation="relux", max_iter=1).fit(Xtr, ytr)
    bad = Xtr.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value\(s\) \(NaN or Inf\); the first is at row 7, column 2"):
        MLPClassifier(max_iter=1).fit(bad, ytr)
    with pytest.raises(ValueError, match="NaN or Inf"):
        clf.predict(bad)
    with pytest.raises(ValueError, match="MLPClassifier: solver = .lbfgs. is not one of sgd, adam, adamw"):
        MLPClassifier(solver="lbfgs").fit(Xtr, ytr)
