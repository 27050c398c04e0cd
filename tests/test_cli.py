"""The command line (the README's usage and run-directory sections), through typer's
CliRunner and, once end to end, through the installed `deltaprop` in a real process.

One tiny classification run (300 rows x 8 features, 3 classes, hidden [16], 3 epochs, adam) is
trained once per module and shared; tests that modify a run work on a copy.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import typer
from fixtures.cli import ROOT, assert_exit, cli, run_real, use_registry
from fixtures.data import (
    N_CLASSES,
    N_FEATURES,
    write_classification,
    write_config,
    write_regression,
)
from safetensors import safe_open
from safetensors.numpy import load_file

import deltaprop
from deltaprop.cli.main import app
from deltaprop.plugins.manager import load_registry

HIDDEN = 16
N_TEST = 100
TOP_COMMANDS = ("train", "resume", "evaluate", "predict", "plugins")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """A fresh plugin registry as the process-wide one, and runs never land in the cwd."""
    use_registry(monkeypatch, load_registry())
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DELTAPROP_LOAD_PLUGINS", raising=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "dir": d,
        "train": write_classification(d / "train.npz", n=300, seed=0),
        "test": write_classification(d / "test.npz", n=N_TEST, seed=1),
        "five": write_classification(d / "five_features.npz", n=50, seed=2, d=5),
        "reg_train": write_regression(d / "reg_train.npz", n=300, seed=0),
        "reg_test": write_regression(d / "reg_test.npz", n=N_TEST, seed=1),
        "config": write_config(d / "tiny.toml", d / "train.npz", d / "test.npz"),
    }


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """The shared tiny classification run (do not modify: copy it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        use_registry(mp, load_registry())
        mp.setenv("DELTAPROP_HOME", str(run_dir.parent / "home"))
        result = cli("train", data["config"], "--run-dir", run_dir)
    assert_exit(result, 0)
    return run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model_metadata(path: Path) -> dict:
    with safe_open(str(path), "np") as f:
        return json.loads(f.metadata()["deltaprop"])


def one_json_object(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{stdout}"
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


# ---- train: the run directory --------------------------------------------------------------------

def test_train_writes_the_run_directory(run, data):
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.toml", "metrics.jsonl",
                                                     "model.safetensors", "status.json"]
    cfg = tomllib.loads((run / "config.toml").read_text())
    assert cfg["model"]["hidden"] == [HIDDEN]
    assert cfg["training"]["epochs"] == 3 and cfg["training"]["batch_size"] == 32
    assert cfg["optimizer"]["name"] == "adam"
    assert Path(cfg["data"]["train"]).is_absolute() and Path(cfg["data"]["train"]) == data["train"]

    lines = metrics(run)
    assert len(lines) == 3
    steps_per_epoch = -(-300 // 32)
    for i, m in enumerate(lines):
        assert {"epoch", "step", "loss", "samples_per_s"} <= set(m)
        assert m["epoch"] == i + 1 and m["step"] == steps_per_epoch * (i + 1)
        assert np.isfinite(m["loss"]) and m["samples_per_s"] > 0
    assert lines[-1]["loss"] < lines[0]["loss"]

    ckpts = sorted((run / "checkpoints").glob("*.safetensors"))
    assert 1 <= len(ckpts) <= 3
    last = model_metadata(ckpts[-1])
    assert last["state"]["step"] == 3 * steps_per_epoch and last["state"]["epoch"] == 3


def test_model_file_is_plain_safetensors_with_torch_layout(run, data):
    path = run / "model.safetensors"
    tensors = load_file(str(path))
    assert set(tensors) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    assert tensors["layers.0.weight"].shape == (HIDDEN, N_FEATURES)
    assert tensors["layers.0.bias"].shape == (HIDDEN,)
    assert tensors["layers.1.weight"].shape == (N_CLASSES, HIDDEN)
    assert tensors["layers.1.bias"].shape == (N_CLASSES,)

    meta = model_metadata(path)
    assert meta["deltaprop_version"] == deltaprop.__version__
    assert meta["activations"] == ["relu", "identity"]
    assert meta["plugins"]["relu"] == {"source": "deltaprop", "version": deltaprop.__version__}
    assert meta["config"]["model"]["hidden"] == [HIDDEN]
    assert {"scale", "mean", "inv_std"} <= set(meta["preprocess"])

    # (out, in) layout: a plain NumPy forward pass with z = a @ W.T + b matches `predict`
    out = run.parent / "probs_for_layout.npy"
    assert_exit(cli("predict", run, "--data", data["test"], "--output", out), 0)
    with np.load(data["test"]) as f:
        X = f["X"].astype(np.float64)
    pre = meta["preprocess"]
    X = (X - np.asarray(pre["mean"])) * np.asarray(pre["inv_std"])
    h = np.maximum(X @ tensors["layers.0.weight"].T + tensors["layers.0.bias"], 0.0)
    z = h @ tensors["layers.1.weight"].T + tensors["layers.1.bias"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(np.load(out), p, rtol=1e-4, atol=1e-5)


# ---- evaluate and predict ------------------------------------------------------------------------

def test_evaluate_json_on_a_run_dir_and_on_the_model_file(run, data):
    r = cli("evaluate", run, "--data", data["test"], "--json")
    assert_exit(r, 0)
    res = one_json_object(r.stdout)
    assert {"accuracy", "loss", "n"} <= set(res)
    assert res["n"] == N_TEST
    assert 0.5 < res["accuracy"] <= 1.0 and np.isfinite(res["loss"]) and res["loss"] > 0

    r2 = cli("evaluate", run / "model.safetensors", "--data", data["test"], "--json")
    assert_exit(r2, 0)
    assert one_json_object(r2.stdout) == res


def test_evaluate_a_run_dir_without_model_falls_back_past_a_broken_checkpoint(run, data, tmp_path):
    """A run directory with no model.safetensors (a run still training, or killed) evaluates its
    newest usable checkpoint; a truncated newer one is skipped with a note naming it."""
    d = copy_run(run, tmp_path / "run")
    (d / "model.safetensors").unlink()
    ckpts = sorted((d / "checkpoints").glob("step-*.safetensors"))
    assert len(ckpts) >= 2, ckpts
    newest, older = ckpts[-1], ckpts[-2]
    newest.write_bytes(newest.read_bytes()[:100])
    r = cli("evaluate", d, "--data", data["test"], "--json")
    assert_exit(r, 0)
    assert newest.name in r.stderr and "skipping unusable checkpoint" in r.stderr
    direct = cli("evaluate", older, "--data", data["test"], "--json")
    assert_exit(direct, 0)
    assert one_json_object(r.stdout) == one_json_object(direct.stdout)
    with pytest.warns(UserWarning, match=newest.name):
        assert deltaprop.load_model(d).theta.tobytes() == deltaprop.load_model(older).theta.tobytes()


def test_evaluate_human_output(run, data):
    r = cli("evaluate", run, "--data", data["test"])
    assert_exit(r, 0)
    assert "accuracy" in r.stdout and f"n={N_TEST}" in r.stdout


def test_evaluate_confusion_matrix_in_json_and_human_output(run, data, tmp_path):
    """confusion[i][j] = test rows of true class i predicted as j, as computed from `predict`;
    the human output prints the same matrix as a table, one row per true class."""
    labels_path = tmp_path / "labels.npy"
    assert_exit(cli("predict", run, "--data", data["test"], "--output", labels_path, "--classes"), 0)
    pred = np.load(labels_path)
    with np.load(data["test"]) as f:
        y = f["y"]
    expected = [[int(((y == i) & (pred == j)).sum()) for j in range(N_CLASSES)] for i in range(N_CLASSES)]
    assert sum(map(sum, expected)) == N_TEST and len({p for p in pred}) > 1

    res = one_json_object(cli("evaluate", run, "--data", data["test"], "--json").stdout)
    assert res["confusion"] == expected
    assert res["accuracy"] == pytest.approx(sum(expected[i][i] for i in range(N_CLASSES)) / N_TEST)

    r = cli("evaluate", run, "--data", data["test"])
    assert_exit(r, 0)
    assert "confusion matrix (rows: true class, columns: predicted)" in r.stdout
    table = r.stdout.split("columns: predicted)", 1)[1]
    numbers = [found for line in table.splitlines() if (found := re.findall(r"\d+", line))]
    assert numbers[0] == [str(j) for j in range(N_CLASSES)], r.stdout  # the header: predicted classes
    assert numbers[1:] == [[str(i), *map(str, expected[i])] for i in range(N_CLASSES)], r.stdout


def test_predict_probabilities_and_classes(run, data, tmp_path):
    probs_path, labels_path = tmp_path / "out.npy", tmp_path / "sub" / "labels.npy"
    assert_exit(cli("predict", run, "--data", data["test"], "--output", probs_path), 0)
    probs = np.load(probs_path)
    assert probs.shape == (N_TEST, N_CLASSES)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    assert_exit(cli("predict", run, "--data", data["test"], "--output", labels_path, "--classes"), 0)
    labels = np.load(labels_path)
    assert labels.shape == (N_TEST,) and np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))

    # consistent with evaluate
    with np.load(data["test"]) as f:
        y = f["y"]
    res = one_json_object(cli("evaluate", run, "--data", data["test"], "--json").stdout)
    assert res["accuracy"] == pytest.approx(float((labels == y).mean()))


def test_regression_run(data, tmp_path):
    config = write_config(tmp_path / "reg.toml", data["reg_train"], data["reg_test"], loss="mse")
    run_dir = tmp_path / "reg-run"
    assert_exit(cli("train", config, "--run-dir", run_dir), 0)
    lines = metrics(run_dir)
    assert len(lines) == 3 and all("accuracy" not in m for m in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]

    r = cli("evaluate", run_dir, "--data", data["reg_test"], "--json")
    assert_exit(r, 0)
    res = one_json_object(r.stdout)
    assert {"mse", "loss", "n"} <= set(res) and "accuracy" not in res
    assert res["n"] == N_TEST
    assert res["loss"] == pytest.approx(0.5 * res["mse"])  # one output: L = 1/(2n) sum (yhat - y)^2

    out = tmp_path / "reg.npy"
    assert_exit(cli("predict", run_dir, "--data", data["reg_test"], "--output", out), 0)
    pred = np.load(out)
    assert pred.shape in ((N_TEST, 1), (N_TEST,))
    with np.load(data["reg_test"]) as f:
        y = f["y"]
    assert np.mean((pred.reshape(-1) - y) ** 2) == pytest.approx(res["mse"], rel=1e-4)


# ---- config and --set ----------------------------------------------------------------------------

def test_set_overrides_apply(data, tmp_path):
    run_dir = tmp_path / "one-epoch"
    r = cli("train", data["config"], "--set", "training.epochs=1", "--set", "optimizer.lr=0.02",
            "--run-dir", run_dir)
    assert_exit(r, 0)
    assert len(metrics(run_dir)) == 1
    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    assert cfg["training"]["epochs"] == 1 and cfg["optimizer"]["lr"] == 0.02


@pytest.mark.parametrize("override, named, suggested", [
    ("training.epoch=1", "training.epoch", "epochs"),
    ("trainig.epochs=1", "trainig", "training"),
    ("optimizer.name=adma", "adma", "adam"),
])
def test_misspelt_set_is_a_usage_error(data, tmp_path, override, named, suggested):
    run_dir = tmp_path / "never"
    r = cli("train", data["config"], "--set", override, "--run-dir", run_dir)
    assert_exit(r, 2)
    assert named in r.stderr and f"did you mean '{suggested}'" in r.stderr, r.stderr
    assert not run_dir.exists()


def test_malformed_set_is_a_usage_error(data, tmp_path):
    r = cli("train", data["config"], "--set", "epochs", "--run-dir", tmp_path / "never")
    assert_exit(r, 2)
    assert "section.key=value" in r.stderr


def test_unknown_config_file(tmp_path):
    missing = tmp_path / "nope.toml"
    r = cli("train", missing, "--run-dir", tmp_path / "never")
    assert_exit(r, 2)
    assert str(missing) in r.stderr
    assert not (tmp_path / "never").exists()


def test_train_into_an_existing_run_is_refused(run, data, tmp_path):
    target = copy_run(run, tmp_path / "existing")
    before = file_hashes(target)
    r = cli("train", data["config"], "--run-dir", target)
    assert_exit(r, 2)
    assert str(target) in r.stderr and "resume" in r.stderr
    assert file_hashes(target) == before


# ---- resume --------------------------------------------------------------------------------------

def test_resume_a_finished_run_changes_nothing(run, tmp_path):
    target = copy_run(run, tmp_path / "finished")
    weights = load_file(str(target / "model.safetensors"))
    before = metrics(target)
    r = cli("resume", target)
    assert_exit(r, 0)
    after = load_file(str(target / "model.safetensors"))
    assert set(after) == set(weights)
    for k in weights:
        np.testing.assert_array_equal(after[k], weights[k])
    assert metrics(target) == before  # same epochs and values (key order may differ)


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("resume", tmp_path / "empty")
    assert_exit(r, 2)
    assert "config.toml" in r.stderr


# ---- errors --------------------------------------------------------------------------------------

def test_evaluate_with_the_wrong_number_of_features(run, data):
    for cmd in (["evaluate", run, "--data", data["five"], "--json"],
                ["predict", run, "--data", data["five"], "--output", data["dir"] / "never.npy"]):
        r = cli(*cmd)
        assert_exit(r, 2)
        assert str(data["five"]) in r.stderr
        msg = r.stderr.replace(str(data["five"]), "")
        assert re.search(r"\b5\b", msg) and re.search(rf"\b{N_FEATURES}\b", msg), r.stderr
        assert r.stdout.strip() == ""
    assert not (data["dir"] / "never.npy").exists()


def test_evaluate_a_nonexistent_model(data, tmp_path):
    missing = tmp_path / "no-such-model.safetensors"
    r = cli("evaluate", missing, "--data", data["test"], "--json")
    assert_exit(r, 2)
    assert str(missing) in r.stderr
    (tmp_path / "not-a-run").mkdir()
    r = cli("evaluate", tmp_path / "not-a-run", "--data", data["test"])
    assert_exit(r, 2)
    assert "not-a-run" in r.stderr


def test_evaluate_on_missing_data(run, tmp_path):
    missing = tmp_path / "missing.npz"
    r = cli("evaluate", run, "--data", missing, "--json")
    assert_exit(r, 2)
    assert str(missing) in r.stderr


def test_errors_on_a_terminal_keep_their_brackets(data, tmp_path, monkeypatch):
    """On a terminal the error is styled with rich markup; the message itself must not be read as
    markup ("[optimiser]" once vanished from the message)."""
    import io
    import types

    from rich.console import Console

    from deltaprop.cli import common
    out = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=out, force_terminal=True, highlight=False,
                                                       soft_wrap=True, width=300))
    monkeypatch.setattr(common, "sys", types.SimpleNamespace(stderr=types.SimpleNamespace(isatty=lambda: True)))
    config = tmp_path / "bad.toml"
    config.write_text(data["config"].read_text() + "[optimiser]\nlr = 0.1\n")
    assert_exit(cli("train", config, "--run-dir", tmp_path / "never"), 2)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "error: " in text and "unknown section [optimiser] (did you mean 'optimizer'?)" in text, text
    assert "\x1b[" in out.getvalue()  # styled


# ---- Ctrl-C before the training loop ------------------------------------------------------------

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["deltaprop.io.datasets.load_dataset", "deltaprop.compute.factory.network_kernels"])
@pytest.mark.parametrize("command", ["train", "resume", "evaluate", "predict"])
def test_ctrl_c_while_loading_or_compiling_exits_130_with_one_line(run, data, tmp_path, monkeypatch,
                                                                    command, where):
    """KeyboardInterrupt while reading data or compiling the kernels (before the trainer's own
    SIGINT handling starts): exit 130 and one line on stderr, no traceback, the run untouched."""
    target = copy_run(run, tmp_path / "run")
    before = file_hashes(target)
    argv = {"train": ["train", data["config"], "--run-dir", tmp_path / "new"],
            "resume": ["resume", target],
            "evaluate": ["evaluate", target, "--data", data["test"]],
            "predict": ["predict", target, "--data", data["test"], "--output", tmp_path / "p.npy"]}[command]
    if command == "resume":
        (target / "model.safetensors").unlink()
        before = file_hashes(target)
    monkeypatch.setattr(where, _interrupt)
    if where.endswith("load_dataset"):  # prepare.py holds its own reference
        monkeypatch.setattr("deltaprop.training.prepare.load_dataset", _interrupt)
    r = cli(*argv)
    assert_exit(r, 130)
    assert r.stderr == "error: interrupted (Ctrl-C)\n", r.stderr
    assert file_hashes(target) == before
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "new" / "checkpoints").exists()


def test_ctrl_c_while_loading_data_in_a_real_process(data, tmp_path):
    """A real SIGINT to a real `deltaprop train` that is inside load_dataset (a sitecustomize makes
    loading announce itself with a file, then wait), so the signal lands there every time."""
    import signal
    import subprocess
    import time

    from fixtures.cli import DELTAPROP, NUMBA_CACHE_DIR
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, pathlib, time\n"
        "import deltaprop.io.datasets as data\n"
        "def load_dataset(*args, **kwargs):\n"
        "    pathlib.Path(os.environ['LOADING_MARKER']).write_text('loading')\n"
        "    time.sleep(600)\n"
        "data.load_dataset = load_dataset\n")
    marker = tmp_path / "loading"
    env = dict(os.environ, PYTHONPATH=str(hook), LOADING_MARKER=str(marker), NUMBA_CACHE_DIR=NUMBA_CACHE_DIR)
    proc = subprocess.Popen([str(DELTAPROP), "train", str(data["config"]), "--run-dir", str(tmp_path / "run")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert err == "error: interrupted (Ctrl-C)\n", err
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- progress ------------------------------------------------------------------------------------

def test_rich_progress_bar_shows_loss_accuracy_and_throughput(data, tmp_path):
    """The terminal reporter, driven by a real run on a forced-terminal console: each epoch's bar
    reaches all its steps showing loss, accuracy and samples/s, and each epoch ends with a line."""
    import io

    from rich.console import Console

    from deltaprop.api import read_config
    from deltaprop.cli.progress import RichReporter
    from deltaprop.training.runs import train_run
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=150))
    try:
        train_run(read_config(data["config"]), tmp_path / "run", reporter=reporter)
    finally:
        reporter.stop()
    raw = out.getvalue()
    assert "\x1b[" in raw  # drawn as a terminal, not as plain lines
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r", "\n")
    steps = -(-300 // 32)
    for epoch in (1, 2, 3):
        bar = rf"epoch {epoch}/3 \S* +{steps}/{steps} loss (\d+\.\d{{4}}) acc (\d\.\d{{4}}) ([\d,]+) samples/s"
        found = re.findall(bar, text)
        assert found, text
        loss, acc, speed = found[-1]
        assert float(loss) > 0 and 0 <= float(acc) <= 1 and int(speed.replace(",", "")) > 0
        assert re.search(rf"^epoch {epoch}/3 loss=\S+ accuracy=\S+ .*samples_per_s=", text, re.M), text


# ---- two processes, one run directory ------------------------------------------------------------

def test_second_train_into_the_same_fresh_run_dir_fails_while_the_first_runs(data, tmp_path):
    """Two real `deltaprop train` processes into one fresh run directory: the first holds the
    directory's lock before it writes config.toml, so once config.toml exists a second train (or
    a resume) fails at once with "in use" and changes nothing. (The lock was once on config.toml,
    which the second train replaced before locking the new file, so both trained.)"""
    import signal
    import subprocess
    import time

    from fixtures.cli import DELTAPROP, NUMBA_CACHE_DIR
    run_dir = tmp_path / "shared"
    env = dict(os.environ, NUMBA_CACHE_DIR=NUMBA_CACHE_DIR)
    first = subprocess.Popen([str(DELTAPROP), "train", str(data["config"]), "--run-dir", str(run_dir),
                              "--set", "training.epochs=1000000", "--set", "checkpoint.every_epochs=0"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (run_dir / "config.toml").exists():
            assert first.poll() is None, first.communicate()
            time.sleep(0.02)
        written = (run_dir / "config.toml").read_bytes()
        second = run_real("train", data["config"], "--run-dir", run_dir, "--set", "optimizer.lr=0.5",
                          cwd=tmp_path, timeout=600)
        resumed = run_real("resume", run_dir, cwd=tmp_path, timeout=600)
        assert first.poll() is None, first.communicate()  # the first is still training
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    for r in (second, resumed):
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert f"run directory {run_dir} is in use by another deltaprop process" in " ".join(r.stderr.split())
        assert "Traceback" not in r.stderr
    assert (run_dir / "config.toml").read_bytes() == written
    assert tomllib.loads(written.decode())["optimizer"]["lr"] == 0.01
    assert not (run_dir / "checkpoints").exists()


# ---- help and the README -------------------------------------------------------------------------

def command_paths() -> list[str]:
    """Every command and sub-command registered on the typer app, e.g. 'plugins list'."""
    def walk(group, prefix):
        for name, cmd in sorted(group.commands.items()):
            path = f"{prefix} {name}".strip()
            yield path
            if hasattr(cmd, "commands"):
                yield from walk(cmd, path)
    return list(walk(typer.main.get_command(app), ""))


def test_help_lists_the_commands():
    r = cli("--help")
    assert_exit(r, 0)
    for name in TOP_COMMANDS:
        assert name in r.stdout, f"{name} missing from deltaprop --help"
    r = cli("plugins", "--help")
    assert_exit(r, 0)
    assert "list" in r.stdout and "check" in r.stdout
    assert set(TOP_COMMANDS) <= set(command_paths())
    assert {"plugins list", "plugins check"} <= set(command_paths())


def test_every_command_is_in_the_readme():
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing"
    text = readme.read_text()
    missing = [p for p in command_paths() if f"deltaprop {p}" not in text]
    assert not missing, f"README.md does not mention: {', '.join('deltaprop ' + p for p in missing)}"


# ---- a real process ------------------------------------------------------------------------------

def test_real_process_train_then_evaluate(data, tmp_path):
    run_dir = tmp_path / "real-run"
    r = run_real("train", data["config"], "--set", "training.epochs=2", "--run-dir", run_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert len(metrics(run_dir)) == 2 and (run_dir / "model.safetensors").is_file()

    r = run_real("evaluate", run_dir, "--data", data["test"], "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = one_json_object(r.stdout)
    assert res["n"] == N_TEST and 0.0 <= res["accuracy"] <= 1.0 and np.isfinite(res["loss"])

    r = run_real("evaluate", run_dir, "--data", data["five"], "--json", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(data["five"]) in r.stderr and r.stdout == ""


# ---- plugins -------------------------------------------------------------------------------------

def test_resume_without_the_checkpoints_activation_plugin_names_plugin_and_version(data, tmp_path,
                                                                                    monkeypatch):
    """A run trained with the swish plugin, resumed where the plugin does not load: exit 2 naming
    the activation, its plugin package and version, before any data is loaded; nothing changes."""
    config = write_config(tmp_path / "swish.toml", data["train"], activation="swish", epochs=2)
    run_dir = tmp_path / "swish-run"
    assert_exit(cli("train", config, "--run-dir", run_dir), 0)
    (run_dir / "model.safetensors").unlink()  # as if killed after the last checkpoint
    before = file_hashes(run_dir)

    monkeypatch.setenv("DELTAPROP_LOAD_PLUGINS", "")
    use_registry(monkeypatch, load_registry())
    r = cli("resume", run_dir)
    assert_exit(r, 2)
    message = " ".join(r.stderr.split())
    assert "activation 'swish'" in message and "deltaprop-swish 0.1.0" in message, message
    assert "checkpoints/step-" in message and "not installed" in message
    assert file_hashes(run_dir) == before

    monkeypatch.delenv("DELTAPROP_LOAD_PLUGINS")
    use_registry(monkeypatch, load_registry())
    assert_exit(cli("resume", run_dir), 0)  # with the plugin back, the run finishes
    assert (run_dir / "model.safetensors").is_file()


# ---- the first compile: visible, interruptible, not counted as training ------------------------

@pytest.mark.fault
def test_the_first_compile_is_announced_interruptible_and_not_in_samples_per_s(data, tmp_path):
    """With an empty kernel cache: Ctrl-C during the compile exits 130 at once (it once did nothing
    for ~50 s, then exited 1 "stopped by SIGINT"); a full run says it is compiling and how long
    that took, and epoch 1's samples/s is not diluted by the compile; the next run loads the cache."""
    from fixtures.cli import DELTAPROP
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cold-cache"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([str(DELTAPROP), "train", str(data["config"]), "--run-dir", str(tmp_path / "a")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        while line and "compiling kernels for" not in line:
            line = proc.stdout.readline()
        assert "compiling kernels for relu, identity, float32" in line, line
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
        waited = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "error: interrupted (Ctrl-C)\n", (out, err)
    assert waited < 10, f"exited {waited:.1f} s after Ctrl-C: it waited for the compile"

    r = subprocess.run([str(DELTAPROP), "train", str(data["config"]), "--run-dir", str(tmp_path / "b")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    compiled = re.search(r"^compiled kernels for relu, identity, float32 in (\d+\.\d) s$", r.stdout, re.M)
    assert compiled, r.stdout
    metrics = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    # The compile is not in epoch 1's rate: the epoch's time implied by it (at most 300 rows) is far
    # below the compile's. (A ratio to epoch 2's rate would be a timing assertion: a 7 ms epoch of
    # 300 rows varies 20x with whatever else the machine runs.)
    epoch_1_seconds = 300 / metrics[0]["samples_per_s"]
    assert epoch_1_seconds < 0.5 * float(compiled.group(1)), (compiled.group(0), metrics[0])
    r = subprocess.run([str(DELTAPROP), "train", str(data["config"]), "--run-dir", str(tmp_path / "c")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "compiling" not in r.stdout, r.stdout
    assert re.search(r"^kernels for relu, identity, float32 loaded from the cache in \d+\.\d s$", r.stdout, re.M)
