"""The first ten minutes of a new user (the README alone, their own data): defaults that fit
their files, runs that can be extended, messages that say what happened, one compile cache."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from fixtures.cli import assert_exit, cli

import deltaprop
from deltaprop.io.rundir import RunDir
from deltaprop.training.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mine(tmp_path):
    """The user's own data: 12 features, 3 classes, in an .npz."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 12)).astype(np.float32)
    np.savez(tmp_path / "mine.npz", X=X, y=(X @ rng.normal(size=(12, 3))).argmax(1))
    return tmp_path / "mine.npz"


def _config(tmp_path, data, *extra):
    p = tmp_path / "c.toml"
    p.write_text(f'[model]\nhidden = [8]\n[data]\ntrain = "{data}"\n[training]\nepochs = 2\nbatch_size = 32\n'
                 + "".join(extra))
    return p


def test_own_training_file_has_no_test_set_unless_named(tmp_path, mine):
    """`train = "mine.npz"` with nothing else in [data] once failed: the test split defaulted to
    fashion-mnist:test (784 features against the user's 12)."""
    assert config_from_dict({"data": {"train": "mine.npz"}}).data.test == ""
    assert config_from_dict({}).data.test == "fashion-mnist:test"
    assert config_from_dict({"data": {"train": "fashion-mnist:train"}}).data.test == "fashion-mnist:test"
    assert config_from_dict({"data": {"train": "mine.npz", "test": "t.npz"}}).data.test == "t.npz"
    r = cli("train", _config(tmp_path, mine), "--run-dir", tmp_path / "run")
    assert_exit(r, 0)
    assert "test_accuracy" not in RunDir(tmp_path / "run").read_metrics()[-1]


def test_resume_epochs_trains_a_finished_run_further(tmp_path, mine):
    """`resume --epochs N` extends a finished run (it was "No such option", and editing config.toml
    silently stopped at the old count); the result is the N-epoch run's, fewer epochs than trained
    are refused, and a finished run without --epochs says there is nothing to do."""
    cfg = _config(tmp_path, mine)
    assert_exit(cli("train", cfg, "--run-dir", tmp_path / "run"), 0)
    r = cli("resume", tmp_path / "run")
    assert_exit(r, 0)
    assert "nothing to do: the run has finished" in r.output and "--epochs N" in r.output
    r = cli("resume", tmp_path / "run", "--epochs", "4")
    assert_exit(r, 0)
    rd = RunDir(tmp_path / "run")
    assert [m["epoch"] for m in rd.read_metrics()] == [1, 2, 3, 4]
    assert tomllib.loads(rd.config_path.read_text())["training"]["epochs"] == 4
    whole = deltaprop.train(cfg, run_dir=tmp_path / "whole", training__epochs=4)
    assert np.array_equal(deltaprop.load_model(rd.path).theta, whole.model.theta)
    r = cli("resume", tmp_path / "run", "--epochs", "3")
    assert_exit(r, 2)
    assert "--epochs 3: the run in" in r.output and "has already trained 4 epochs" in r.output


def test_predict_writes_csv_when_asked_and_refuses_other_names(tmp_path, mine):
    assert_exit(cli("train", _config(tmp_path, mine), "--run-dir", tmp_path / "run"), 0)
    assert_exit(cli("predict", tmp_path / "run", "--data", mine, "--output", tmp_path / "p.csv", "--classes"), 0)
    labels = np.loadtxt(tmp_path / "p.csv", delimiter=",", dtype=np.int64)
    assert labels.shape == (240,) and set(labels) <= {0, 1, 2}
    assert_exit(cli("predict", tmp_path / "run", "--data", mine, "--output", tmp_path / "q.csv"), 0)
    assert np.loadtxt(tmp_path / "q.csv", delimiter=",").shape == (240, 3)
    r = cli("predict", tmp_path / "run", "--data", mine, "--output", tmp_path / "p.txt")
    assert_exit(r, 2)
    assert "use a .npy or a .csv file name" in r.output and not (tmp_path / "p.txt").exists()


def test_messages_name_what_actually_happened(tmp_path, mine):
    cfg = _config(tmp_path, mine)
    r = cli("train", cfg, "--set", "optimiser.lr=0.1", "--run-dir", tmp_path / "x")
    assert_exit(r, 2)
    assert "--set 'optimiser.lr=0.1': unknown section [optimiser] (did you mean 'optimizer'?)" in r.output
    assert str(cfg) not in r.output  # the file is not to blame
    # a run directory whose training failed before a checkpoint
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace('train = "', 'train = "missing-'))
    assert_exit(cli("train", bad, "--run-dir", tmp_path / "failed"), 2)
    r = cli("evaluate", tmp_path / "failed", "--data", mine)
    assert_exit(r, 2)
    assert "holds a run's config.toml but no model or checkpoint yet" in r.output
    # the resolved config holds the optimizer's real weight decay, not a sentinel
    assert_exit(cli("train", cfg, "--run-dir", tmp_path / "run"), 0)
    assert tomllib.loads((tmp_path / "run" / "config.toml").read_text())["optimizer"]["weight_decay"] == 0.0
    assert "after 2 epochs" in cli("resume", tmp_path / "run").output


def test_version_short_help_and_a_short_model_repr(tmp_path, mine):
    r = cli("--version")
    assert_exit(r, 0)
    assert r.output.strip() == f"deltaprop {deltaprop.__version__}"
    for args in (["-h"], ["train", "-h"], ["jobs", "-h"], ["plugins", "list", "-h"]):
        r = cli(*args)
        assert_exit(r, 0)
        assert "Usage:" in r.output
    assert_exit(cli("train", _config(tmp_path, mine), "--run-dir", tmp_path / "run"), 0)
    text = repr(deltaprop.load_model(tmp_path / "run"))  # the summary, not arrays
    assert text.startswith("Model(cross_entropy, float32)\nlayer") and "8 x 12" in text and "3 x 8" in text
    assert "parameters: 131 " in text and len(text) < 600


def test_jobs_messages(tmp_path, mine, monkeypatch):
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))
    from deltaprop.jobs.queue import Queue
    q = Queue(tmp_path / "home")
    r = cli("jobs", "list", "--status", "running")
    assert_exit(r, 0)
    assert r.output.strip() == "no running jobs"
    job = q.submit("j", "[training]\nepochs = 1\n")
    q.finish(q.claim("w", 60), "succeeded")
    r = cli("jobs", "cancel", str(job.id))
    assert_exit(r, 2)
    assert f"job {job.id} has already succeeded: nothing to cancel" in r.output
    rd = RunDir(job.run_dir)
    assert rd.attempt_header(1, 3, "here") == "--- attempt 1 on here ---\n"
    rd.log_path.write_text("--- attempt 1 on here ---\nboom\n--- attempt 2 on here ---\n")
    assert rd.attempt_header(1, 3, "there") == "--- attempt 3 on there, try 1/3 since the last retry ---\n"
    q.close()


def test_one_compile_cache_for_make_run_make_test_and_the_cli(tmp_path):
    """`make run` compiled into the checkout's .cache/numba, the CLI into the user's cache, so the
    first direct `deltaprop train` compiled everything again: now deltaprop itself picks the one
    place (unless NUMBA_CACHE_DIR says otherwise), and the Makefile does not override it."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "import deltaprop, os; from deltaprop._system import kernel_cache_dir; "
                          "print(os.environ['NUMBA_CACHE_DIR']); print(kernel_cache_dir())"],
                         env=env, capture_output=True, text=True, timeout=120).stdout.split()
    assert out == [str(tmp_path / "deltaprop" / "numba"), str(tmp_path / "deltaprop" / "numba" / "deltaprop")]
    assert "NUMBA_CACHE_DIR" not in "\n".join(line for line in (ROOT / "Makefile").read_text().splitlines()
                                              if not line.lstrip().startswith("#"))


def test_classes_are_the_sorted_distinct_labels(tmp_path):
    """Labels numbered from 1 silently built an extra output, a single label 1000 built 1001: the
    classes are now the sorted distinct labels (as scikit-learn), stored in the model, and
    predict/evaluate speak in them."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.where(X[:, 0] > 0, 3, 1) + (X[:, 1] > 0.5) * 999  # labels 1, 3, 1000, 1002
    np.savez(tmp_path / "d.npz", X=X, y=y)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\nhidden = [8]\n[data]\ntrain = "{tmp_path / "d.npz"}"\ntest = "{tmp_path / "d.npz"}"\n'
                   '[training]\nepochs = 3\nbatch_size = 32\n[optimizer]\nlr = 0.01\n')
    assert_exit(cli("train", cfg, "--run-dir", tmp_path / "run"), 0)
    model = deltaprop.load_model(tmp_path / "run")
    assert model.sizes[-1] == 4 and model.classes == [1, 3, 1000, 1002]
    assert set(model.predict(X)) <= {1, 3, 1000, 1002}
    r = cli("evaluate", tmp_path / "run", "--data", tmp_path / "d.npz", "--json")
    assert_exit(r, 0)
    result = json.loads(r.stdout)
    assert result["classes"] == [1, 3, 1000, 1002] and result["accuracy"] > 0.5
    assert RunDir(tmp_path / "run").read_metrics()[-1]["test_accuracy"] == pytest.approx(result["accuracy"])
    np.savez(tmp_path / "other.npz", X=X[:5], y=np.array([1, 3, 7, 1, 3]))
    r = cli("evaluate", tmp_path / "run", "--data", tmp_path / "other.npz")
    assert_exit(r, 2)
    assert "label at row 2 is 7, which is not one of the model's classes (1, 3, 1000, 1002)" in r.output


def test_string_labels_in_a_csv(tmp_path):
    """The CLI rejected a CSV label column of words ('cat' is not a number) that the estimator
    takes; now the names are the classes, and predict --classes writes them back."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    names = np.array(["cat", "dog", "emu"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 1)]
    lines = ["a,b,c,label"] + [f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},{n}" for r, n in zip(X, names)]
    (tmp_path / "pets.csv").write_text("\n".join(lines) + "\n")
    cfg = _config(tmp_path, tmp_path / "pets.csv")
    assert_exit(cli("train", cfg, "--run-dir", tmp_path / "run"), 0)
    assert deltaprop.load_model(tmp_path / "run").classes == ["cat", "dog", "emu"]
    r = cli("evaluate", tmp_path / "run", "--data", tmp_path / "pets.csv")
    assert_exit(r, 0)
    assert "cat" in r.output and "emu" in r.output
    assert_exit(cli("predict", tmp_path / "run", "--data", tmp_path / "pets.csv", "--output", tmp_path / "p.npy",
                    "--classes"), 0)
    assert set(np.load(tmp_path / "p.npy").tolist()) <= {"cat", "dog", "emu"}
    assert_exit(cli("predict", tmp_path / "run", "--data", tmp_path / "pets.csv", "--output", tmp_path / "p.csv",
                    "--classes"), 0)
    assert set((tmp_path / "p.csv").read_text().split()) <= {"cat", "dog", "emu"}


def test_csv_columns_are_checked_by_name_against_the_training_file(tmp_path):
    """CSV columns are read by position: evaluating a file whose columns are in another order once
    scored it silently with the features swapped. The model keeps its training file's column names;
    evaluate and predict on a CSV with other names, or the same in another order, are an error
    naming them; the label column may sit anywhere, and non-CSV data is not affected."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(150, 3))
    y = (X[:, 0] > 0).astype(int)

    def write(name, header, cols, label_at):
        rows = [",".join(f"{v:.6f}" for v in r[cols][:label_at]) + ("," if label_at else "") + str(t)
                + "".join(f",{v:.6f}" for v in r[cols][label_at:]) for r, t in zip(X, y)]
        (tmp_path / name).write_text(header + "\n" + "\n".join(rows) + "\n")
        return tmp_path / name

    train = write("train.csv", "a,b,c,label", [0, 1, 2], 3)
    assert_exit(cli("train", _config(tmp_path, train), "--run-dir", tmp_path / "run"), 0)
    assert deltaprop.load_model(tmp_path / "run").columns == ["a", "b", "c"]
    same = write("same.csv", "label,a,b,c", [0, 1, 2], 0)  # the label column elsewhere: the same features
    assert_exit(cli("evaluate", tmp_path / "run", "--data", same), 0)
    swapped = write("swapped.csv", "b,a,c,label", [1, 0, 2], 3)
    r = cli("evaluate", tmp_path / "run", "--data", swapped)
    assert_exit(r, 2)
    assert "its feature columns are not the model's (another order): the model was trained on a, b, c" in r.output
    renamed = write("renamed.csv", "a,b,d,label", [0, 1, 2], 3)
    r = cli("predict", tmp_path / "run", "--data", renamed, "--output", tmp_path / "p.npy")
    assert_exit(r, 2)
    assert "(it lacks ['c']; it has ['d'] instead)" in r.output and not (tmp_path / "p.npy").exists()
    np.savez(tmp_path / "same.npz", X=X, y=y)  # no names to compare
    assert_exit(cli("evaluate", tmp_path / "run", "--data", tmp_path / "same.npz"), 0)


def test_an_estimator_saved_model_with_string_classes_predicts_names_in_the_cli(tmp_path):
    from deltaprop.sklearn import MLPClassifier
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 4)).astype(np.float32)
    y = np.array(["no", "yes"])[(X[:, 0] > 0).astype(int)]
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y).save(tmp_path / "c.safetensors")
    np.savez(tmp_path / "x.npz", X=X)
    assert_exit(cli("predict", tmp_path / "c.safetensors", "--data", tmp_path / "x.npz", "--output",
                    tmp_path / "p.npy", "--classes"), 0)
    assert set(np.load(tmp_path / "p.npy").tolist()) <= {"no", "yes"}


def test_the_python_api_overwrites_shows_progress_and_lists_itself(tmp_path, mine, capsys):
    cfg = _config(tmp_path, mine)
    first = deltaprop.train(cfg, run_dir=tmp_path / "run")
    with pytest.raises(deltaprop.errors.ConfigError, match="pass overwrite=True to replace it") as e:
        deltaprop.train(cfg, run_dir=tmp_path / "run")
    assert "--run-dir" not in str(e.value)  # no CLI flag names in a Python error
    again = deltaprop.train(cfg, run_dir=tmp_path / "run", overwrite=True, progress=True)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert np.array_equal(first.model.theta, again.model.theta)
    assert len(RunDir(tmp_path / "run").read_metrics()) == 2
    longer = deltaprop.resume(tmp_path / "run", epochs=3)
    assert [m["epoch"] for m in longer.metrics] == [1, 2, 3]
    for name in ("train", "resume", "load_model", "load_dataset"):
        assert name in dir(deltaprop)
    ds = deltaprop.load_dataset(mine)
    assert ds.X.shape == (240, 12) and deltaprop.load_model(tmp_path / "run").evaluate(ds.X, ds.y)["n"] == 240


def test_input_that_is_already_scaled_is_warned_about(tmp_path):
    """A model trained on raw uint8 pixels (scale auto = unit: it divides by 255) given X/255 once
    predicted silently from nearly black images."""
    rng = np.random.default_rng(4)
    X = rng.integers(0, 256, size=(200, 16), dtype=np.uint8)
    np.savez(tmp_path / "px.npz", X=X, y=(X[:, 0] > 127).astype(int))
    model = deltaprop.train(_config(tmp_path, tmp_path / "px.npz"), run_dir=tmp_path / "run").model
    with pytest.warns(UserWarning, match=r"as if already scaled to \[0, 1\], but this model divides by 255"):
        model.predict_proba(X / 255.0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict_proba(X)  # raw values: no warning
    np.savez(tmp_path / "scaled.npz", X=X / 255.0)
    r = cli("predict", tmp_path / "run", "--data", tmp_path / "scaled.npz", "--output", tmp_path / "p.npy")
    assert_exit(r, 0)
    assert "warning:" in r.output and "divides by 255" in r.output
    assert "UserWarning" not in r.output and r.output.count("divides by 255") == 1


def test_a_second_worker_on_the_machine_is_warned(tmp_path):
    """Two workers on one machine each divided all cores among their own jobs (4 threads on 2
    cores, silently)."""
    from fixtures.cli import DELTAPROP
    # The registry of a machine's workers is in the temp dir: a private one, so that workers other
    # tests (or other users of this machine) run at the same time are not counted
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, DELTAPROP_HOME=str(tmp_path / "a"), TMPDIR=str(tmp_path / "tmp"))
    first = subprocess.Popen([str(DELTAPROP), "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        assert "worker " in first.stdout.readline()  # it is up (and registered)
        second = subprocess.run([str(DELTAPROP), "worker", "--until-empty"], capture_output=True, text=True,
                                timeout=600, env=dict(env, DELTAPROP_HOME=str(tmp_path / "b")))
    finally:
        first.terminate()
        first.wait(timeout=600)
    assert second.returncode == 0, second.stderr
    assert f"other deltaprop worker(s) run on this machine (pid {first.pid}" in second.stdout, second.stdout


def test_a_sweeps_leaderboard_can_be_printed_again(tmp_path, mine, monkeypatch):
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))
    r = cli("sweep", _config(tmp_path, mine), "--grid", "optimizer.lr=0.01,0.001")
    assert_exit(r, 0)
    assert "deltaprop jobs leaderboard 1 2" in r.output
    r = cli("jobs", "leaderboard", "1", "2")
    assert_exit(r, 0)
    assert "leaderboard" in r.output and "queued" in r.output
