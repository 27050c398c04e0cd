"""Promises at the edges: a long run's checkpoints stay readable, write errors are one line,
crafted inputs and files get a clear error, paths print literally. (Each test here failed once.)"""

import json
import re
import struct

import numpy as np
import pytest

import deltaprop
from deltaprop.errors import CheckpointError
from deltaprop.io.rundir import RunDir
from deltaprop.io.safetensors import MAX_HEADER, read_safetensors, write_safetensors


def _header_len(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "tiny.npz", X=X, y=(X[:, 0] > 0).astype(int))
    return tmp_path / "tiny.npz"


def _raw(data, **training):
    return {"model": {"hidden": [4]}, "data": {"train": str(data), "test": ""},
            "training": {"epochs": 2, "batch_size": 40, **training}, "checkpoint": {"keep": 2}}


def test_a_long_runs_checkpoint_header_does_not_grow(tmp_path, tiny):
    """The history lives in metrics.jsonl, not in every checkpoint (it grew ~143 B per epoch, so
    after ~117k epochs a run wrote checkpoints its own reader refused); a resume rebuilds it."""
    short = deltaprop.train(_raw(tiny), run_dir=tmp_path / "short")
    long = deltaprop.train(_raw(tiny, epochs=300), run_dir=tmp_path / "long")
    h_short = _header_len(RunDir(short.run_dir).checkpoints()[-1])
    h_long = _header_len(RunDir(long.run_dir).checkpoints()[-1])
    assert abs(h_long - h_short) < 64, (h_short, h_long)
    _, meta = read_safetensors(RunDir(long.run_dir).checkpoints()[-1])
    assert "history" not in meta["state"]
    # resuming from the epoch-299 checkpoint gives the same 300 epochs of metrics
    rd = RunDir(long.run_dir)
    rd.checkpoints()[-1].unlink()
    rd.model_path.unlink()
    with open(rd.metrics_path, "a") as f:
        f.write('{"epoch": 300, "trunc')  # a line cut short by a kill
    from deltaprop.training.runs import resume_run
    resumed = resume_run(rd.path)
    assert [m["loss"] for m in resumed.metrics] == [m["loss"] for m in long.metrics]
    assert np.array_equal(resumed.model.theta, long.model.theta)
    assert len(rd.read_metrics()) == 300


def test_the_writer_refuses_a_header_its_reader_would_refuse(tmp_path):
    p = tmp_path / "big.safetensors"
    with pytest.raises(CheckpointError, match=r"header would be \d+ bytes, over the 16 MiB"):
        write_safetensors(p, {"a": np.zeros(2)}, {"blob": "x" * (MAX_HEADER + 1)})
    assert not p.exists() and list(tmp_path.iterdir()) == []
    write_safetensors(p, {"a": np.zeros(2)}, {"blob": "x" * (MAX_HEADER // 2)})
    assert json.dumps(read_safetensors(p)[1]).count("x") == MAX_HEADER // 2


# ---- write errors: one line naming the path and the errno, nothing damaged -----------------------

def _cli(*args):
    from typer.testing import CliRunner

    from deltaprop.cli.main import app
    return CliRunner().invoke(app, [str(a) for a in args])


def _config_file(tmp_path, data, epochs=3):
    p = tmp_path / "c.toml"
    p.write_text(f'[model]\nhidden = [4]\n[data]\ntrain = "{data}"\ntest = ""\n'
                 f'[training]\nepochs = {epochs}\nbatch_size = 8\n')
    return p


def _no_space(*a, **k):
    raise OSError(28, "No space left on device")


def test_train_on_a_full_disk_is_one_line_and_exit_2(tmp_path, tiny, monkeypatch):
    import deltaprop._system as system
    monkeypatch.setattr(system.os, "fsync", _no_space)
    r = _cli("train", _config_file(tmp_path, tiny), "--run-dir", tmp_path / "run")
    monkeypatch.undo()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1, r.output
    assert f"cannot write {tmp_path / 'run' / 'config.toml'}: No space left on device (ENOSPC)" in r.output
    assert list((tmp_path / "run").iterdir()) == []  # no temp file left behind


def test_a_disk_that_fills_mid_run_fails_the_run_keeps_the_checkpoint_and_resumes(tmp_path, tiny, monkeypatch):
    """The metrics append of epoch 2 hits ENOSPC: exit 1 with the path and errno, epoch 1's
    checkpoint intact; once there is space, resume ends with the uninterrupted run's weights."""
    import builtins
    real_open, calls = builtins.open, []

    def open_(file, mode="r", *a, **k):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            calls.append(file)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        return real_open(file, mode, *a, **k)

    cfg = _config_file(tmp_path, tiny)
    monkeypatch.setattr(builtins, "open", open_)
    r = _cli("train", cfg, "--run-dir", tmp_path / "run")
    monkeypatch.undo()
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert f"cannot write {tmp_path / 'run' / 'metrics.jsonl'}: No space left on device (ENOSPC)" in r.output
    assert "last good checkpoint is kept" in r.output and f"deltaprop resume {tmp_path / 'run'}" in r.output
    rd = RunDir(tmp_path / "run")
    assert len(rd.checkpoints()) == 1 and read_safetensors(rd.checkpoints()[0])[1]["state"]["epoch"] == 1
    assert _cli("resume", rd.path).exit_code == 0
    whole = _cli("train", cfg, "--run-dir", tmp_path / "whole")
    assert whole.exit_code == 0
    assert rd.model_path.read_bytes() == RunDir(tmp_path / "whole").model_path.read_bytes()


def test_predict_onto_a_read_only_mount_is_one_line_and_exit_2(tmp_path, tiny, monkeypatch):
    import deltaprop._system as system
    assert _cli("train", _config_file(tmp_path, tiny, epochs=1), "--run-dir", tmp_path / "run").exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    real_open = system.os.open

    def read_only(path, flags, *a):
        if str(path).startswith(str(out)) and flags & system.os.O_CREAT:
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, *a)

    monkeypatch.setattr(system.os, "open", read_only)
    r = _cli("predict", tmp_path / "run", "--data", tiny, "--output", out / "p.npy")
    monkeypatch.undo()
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"cannot write {out / 'p.npy'}: Read-only file system (EROFS)" in r.output
    assert list(out.iterdir()) == []


def test_resume_removes_the_temp_files_of_killed_writes(tmp_path, tiny):
    assert _cli("train", _config_file(tmp_path, tiny, epochs=1), "--run-dir", tmp_path / "run").exit_code == 0
    rd = RunDir(tmp_path / "run")
    stale = [rd.checkpoint_dir / ".step-0000000009.safetensors.0123456789ab.tmp",
             rd.path / ".metrics.jsonl.abcdef012345.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    mine = rd.path / ".notes.tmp"
    mine.write_text("not deltaprop's")
    rd.model_path.unlink()
    assert _cli("resume", rd.path).exit_code == 0
    assert not any(p.exists() for p in stale) and mine.exists()


@pytest.mark.parametrize("name", ["a[/]b", "[bold red]x", "c[optimizer.lr=0.1]"])
def test_paths_with_rich_markup_print_literally(tmp_path, tiny, name):
    """Run directories and output files named like markup: the work succeeds, and the printed
    paths are the real ones (they once raised MarkupError after training, or lost characters)."""
    run = tmp_path / name
    r = _cli("train", _config_file(tmp_path, tiny, epochs=1), "--run-dir", run)
    assert r.exit_code == 0, r.output
    assert f"done: {run} after 1 epoch;" in r.output and f"model: {run / 'model.safetensors'}" in r.output
    out = tmp_path / f"{name}.npy"
    r = _cli("predict", run, "--data", tiny, "--output", out)
    assert r.exit_code == 0 and f"wrote {out}" in r.output, r.output
    r = _cli("evaluate", run, "--data", tiny)
    assert r.exit_code == 0 and str(tiny) in r.output, r.output


# ---- inputs: each a clear error or correct handling, never a traceback ----------------------------

def test_big_endian_and_float16_features_train_as_numpy_would_convert_them(tmp_path, tiny):
    """X stored big-endian, or as float16, is converted (to native order, to float32); the run is
    the one on the converted array."""
    with np.load(tiny) as z:
        X, y = z["X"], z["y"]
    runs = {}
    for name, arr in [("native", X.astype(np.float64)), ("big", X.astype(">f8")),
                      ("half", X.astype(np.float16)), ("half-as-f32", X.astype(np.float16).astype(np.float32))]:
        np.savez(tmp_path / f"{name}.npz", X=arr, y=y)
        runs[name] = deltaprop.train(_raw(tmp_path / f"{name}.npz"), run_dir=tmp_path / name).model.theta
    assert np.array_equal(runs["big"], runs["native"])
    assert np.array_equal(runs["half"], runs["half-as-f32"])


def _idx(path, dims, payload=b"", dtype=0x08, ndim=None):
    path.write_bytes(b"\0\0" + bytes([dtype, len(dims) if ndim is None else ndim])
                     + b"".join(struct.pack(">I", d) for d in dims) + payload)
    return path


def _bad_inputs(d):
    """name -> (data file to train on, or a config text, and the message expected)."""
    np.savez(d / "ids.npz", X=np.zeros((100_001, 1), np.float32), y=np.arange(100_001))
    (d / "long.csv").write_text("a,b,label\n1," + "9" * 140_000 + ",0\n1,2,1\n")
    _idx(d / "nopay-images-idx3-ubyte", [10, 28, 28]), _idx(d / "nopay-labels-idx1-ubyte", [10], bytes(10))
    _idx(d / "huge-images-idx3-ubyte", [2**32 - 1] * 3), _idx(d / "huge-labels-idx1-ubyte", [1], bytes(1))
    _idx(d / "many-images-idx3-ubyte", [1] * 255), _idx(d / "many-labels-idx1-ubyte", [1], bytes(1))
    return {
        "100,001 distinct labels": (d / "ids.npz", "the labels take 100,001 distinct values"),
        "CSV field over 131072 chars": (d / "long.csv", "long.csv: line 2 cannot be read as CSV (field larger than field limit"),
        "IDX dims with no payload": (d / "nopay-images-idx3-ubyte", "IDX size mismatch: header declares shape (10, 28, 28)"),
        "IDX 2^32-1 dims": (d / "huge-images-idx3-ubyte", "IDX size mismatch"),
        "IDX 255 dims": (d / "many-images-idx3-ubyte", "IDX size mismatch"),
        "50,000-deep array": ("[model]\nhidden = " + "[" * 50_000 + "]" * 50_000 + "\n",
                              "arrays or tables nest too deeply to be a config"),
        "5,000-deep inline table": ("[model]\nx = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n",
                                    "arrays or tables nest too deeply to be a config"),
        "hidden = [10^12]": ("[model]\nhidden = [1000000000000]\n", "is 6,000,000,000,002 parameters: about"),
        "integer beyond int64": ("[training]\nepochs = 99999999999999999999999\n",
                                 "training.epochs = 99999999999999999999999 does not fit in 64 bits"),
        "validation_fraction = nan": ("[data]\nvalidation_fraction = nan\n",
                                      "data.validation_fraction must be a finite number, got nan"),
        "lr = nan": ("[optimizer]\nlr = nan\n", "optimizer.lr must be a finite number, got nan"),
        "eps = nan": ("[optimizer]\neps = nan\n", "optimizer.eps must be a finite number, got nan"),
        "clip_grad_norm = nan": ("[training]\nclip_grad_norm = nan\n", "training.clip_grad_norm must be a finite number"),
        "min_delta = nan": ("[early_stopping]\nmin_delta = nan\n", "early_stopping.min_delta must be a finite number"),
        "warmup_epochs = inf": ("[schedule]\nwarmup_epochs = inf\n", "schedule.warmup_epochs must be a finite number, got inf"),
        "dropout = [nan]": ("[model]\nhidden = [4]\ndropout = [nan]\n", "model.dropout"),
    }


@pytest.mark.parametrize("case", sorted([
    "100,001 distinct labels", "CSV field over 131072 chars", "IDX dims with no payload", "IDX 2^32-1 dims", "IDX 255 dims",
    "50,000-deep array", "5,000-deep inline table", "hidden = [10^12]", "integer beyond int64",
    "validation_fraction = nan", "lr = nan", "eps = nan", "clip_grad_norm = nan", "min_delta = nan",
    "warmup_epochs = inf", "dropout = [nan]"]))
def test_bad_inputs_are_one_clear_error(tmp_path, tiny, case):
    source, message = _bad_inputs(tmp_path)[case]
    if isinstance(source, str):  # a config text, on the tiny data
        text = source
        cfg = tmp_path / "c.toml"
        base = f'[data]\ntrain = "{tiny}"\ntest = ""\n' if "[data]" not in text else ""
        cfg.write_text(base + text.replace("[data]\n", f'[data]\ntrain = "{tiny}"\ntest = ""\n'))
    else:
        cfg = _config_file(tmp_path, source, epochs=1)
    r = _cli("train", cfg, "--run-dir", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and message in r.output, r.output
    assert not RunDir(tmp_path / "run").holds_run()


def _crafted_model(tmp_path, tiny, change_meta=None, change_tensors=None):
    run = tmp_path / "run"
    if not run.exists():
        assert _cli("train", _config_file(tmp_path, tiny, epochs=1), "--run-dir", run).exit_code == 0
    tensors, meta = read_safetensors(run / "model.safetensors")
    meta = json.loads(json.dumps(meta))
    if change_meta:
        change_meta(meta)
    if change_tensors:
        change_tensors(tensors)
    p = tmp_path / "crafted.safetensors"
    write_safetensors(p, tensors, meta)  # a valid checksum
    return p


def test_crafted_model_files_with_a_valid_checksum_are_refused(tmp_path, tiny):
    def big_mean(m):
        m["preprocess"]["mean"][0] = 10**400
    p = _crafted_model(tmp_path, tiny, big_mean)
    r = _cli("evaluate", p, "--data", tiny)
    assert r.exit_code == 2 and "preprocess.mean holds a number too large for float32" in r.output, r.output

    def overflow(t):
        t["layers.0.weight"][:] = 3e38  # finite, but every output overflows
    p = _crafted_model(tmp_path, tiny, change_tensors=overflow)
    for args in (["evaluate", p, "--data", tiny, "--json"], ["predict", p, "--data", tiny, "--output", tmp_path / "o.npy"]):
        r = _cli(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert "gives NaN or Inf outputs" in r.output and "no prediction to give" in r.output, r.output
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("change,message", [
    (lambda s: s["epoch_rng"]["state"].__setitem__("state", float(s["epoch_rng"]["state"]["state"])),
     "epoch_rng is not a PCG64 state exactly as numpy writes it"),
    (lambda s: s.update(history=[{"epoch": 1, "loss": "x"}], epoch=1, step=3, pos=0, seen=0, correct=0),
     "history must be a list of per-epoch metrics"),
], ids=["rng state holding a float", "history loss 'x'"])
def test_crafted_checkpoint_states_are_refused_and_nothing_changes(tmp_path, tiny, change, message):
    """An RNG state with a float where numpy has an int was accepted (and the resumed run
    differed); an old-format history with a string loss crashed the summary."""
    assert _cli("train", _config_file(tmp_path, tiny, epochs=1), "--run-dir", tmp_path / "run").exit_code == 0
    rd = RunDir(tmp_path / "run")
    ck = rd.checkpoints()[-1]
    tensors, meta = read_safetensors(ck)
    meta["state"].update(epoch=0, step=0, pos=0, seen=0, correct=0, finished=False)
    change(meta["state"])
    write_safetensors(ck, tensors, meta)
    rd.model_path.unlink()
    before = ck.read_bytes()
    r = _cli("resume", rd.path)
    assert r.exit_code == 2 and "Traceback" not in r.output and message in r.output, r.output
    assert ck.read_bytes() == before and not rd.model_path.exists()


def test_a_label_of_a_billion_is_just_a_class(tmp_path):
    """Label 10^9 once meant 10^9 + 1 outputs (a 238 GiB allocation); classes are the distinct labels."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=np.where(X[:, 0] > 0, 10**9, 0))
    run = deltaprop.train(_raw(tmp_path / "d.npz"), run_dir=tmp_path / "run")
    assert run.model.sizes[-1] == 2 and run.model.classes == [0, 10**9]


def test_the_thread_count_is_an_argument_not_an_environment_variable(tmp_path, tiny):
    """DELTAPROP_THREADS=abc gave a ValueError traceback; the thread count now travels as
    `--threads` (the worker passes it), and the variable means nothing."""
    r = _cli("train", _config_file(tmp_path, tiny, epochs=1), "--run-dir", tmp_path / "run", "--threads", "1")
    assert r.exit_code == 0, r.output
    import os
    os.environ["DELTAPROP_THREADS"] = "abc"
    try:
        r = _cli("resume", tmp_path / "run", "--epochs", "2")
    finally:
        del os.environ["DELTAPROP_THREADS"]
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert _cli("resume", tmp_path / "run", "--threads", "abc").exit_code == 2


# ---- the Python API checks X as the CLI's loader does -------------------------------------------

@pytest.fixture(scope="module")
def api_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 5)).astype(np.float32)
    np.savez(d / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    deltaprop.train({"model": {"hidden": [6]}, "data": {"train": str(d / "d.npz"), "test": ""},
                     "training": {"epochs": 1}}, d / "run")
    return deltaprop.load_model(d / "run"), X


def test_api_predict_converts_what_the_loader_converts(api_model):
    """float16 and big-endian X are converted (as a data file's are), so they predict what float32
    does; they once reached the compiled code and raised Numba's own errors."""
    m, X = api_model
    want = m.predict_proba(X)
    np.testing.assert_array_equal(m.predict_proba(X.astype(">f4")), want)
    np.testing.assert_allclose(m.predict_proba(X.astype(np.float16)), m.predict_proba(X.astype(np.float16).astype(np.float32)))
    np.testing.assert_array_equal(m.predict_proba(X[0]), want[:1])  # one row, 1-D


@pytest.mark.parametrize("bad, message", [
    (lambda X: X.astype(object), "X has dtype object, expected a numeric array"),
    (lambda X: X.astype(str), "expected a numeric array"),
    (lambda X: X.astype(complex), "X has dtype complex128, expected a numeric array"),
    (lambda X: np.where(np.arange(5) == 2, np.nan, X), "non-finite value(s) (NaN or Inf); the first is at row 0, column 2"),
    (lambda X: X[:24].reshape(4, 6, 5), "X must be 2-D (rows, features), got shape (4, 6, 5)"),
    (lambda X: X[:0], "the data is empty"),
])
def test_api_predict_bad_x_is_a_data_error_naming_the_problem(api_model, bad, message):
    """Not a Numba TypingError, and NaN input is not blamed on the weights ("its weights overflow")."""
    m, X = api_model
    with pytest.raises(deltaprop.errors.DataError, match=re.escape(message)):
        m.predict(bad(X))


def test_api_evaluate_checks_that_x_and_y_have_the_same_rows(api_model):
    m, X = api_model
    with pytest.raises(deltaprop.errors.DataError, match="X has 120 rows but y has 10; they must match"):
        m.evaluate(X, (X[:10, 0] > 0).astype(int))
    assert m.evaluate(X, (X[:, 0] > 0).astype(int))["n"] == 120


def test_predict_classes_of_a_regression_model_is_an_error_and_writes_nothing(tmp_path):
    """--classes on an mse model once wrote its outputs and called them labels."""
    from typer.testing import CliRunner

    from deltaprop.cli.main import app
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    np.savez(tmp_path / "r.npz", X=X, y=X[:, :2].copy())
    deltaprop.train({"model": {"hidden": [4]}, "data": {"train": str(tmp_path / "r.npz"), "test": ""},
                     "training": {"epochs": 1, "loss": "mse"}}, tmp_path / "run")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "r.npz"),
                                 "--output", str(tmp_path / "p.npy"), "--classes"])
    assert r.exit_code != 0 and "is a regression model (loss mse)" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "p.npy").exists()


def test_finite_values_beyond_float32_are_a_data_error_not_a_divergence(tmp_path):
    """1e300 in float64 data is finite, so it passed the NaN/Inf check, became Inf in the float32
    gather and was reported as "training diverged ... lower optimizer.lr" (and a checkpoint said to
    be kept that did not exist). It is the data: say where, and what to do."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 3))
    X[17, 2] = 1e300
    np.savez(tmp_path / "huge.npz", X=X, y=(X[:, 0] > 0).astype(int))
    cfg = {"model": {"hidden": [4]}, "data": {"train": str(tmp_path / "huge.npz"), "test": ""},
           "training": {"epochs": 1}}
    with pytest.raises(deltaprop.errors.DataError, match=re.escape("X has 1e+300 at row 17, column 2 (0-based), "
                                                                  "beyond the range of float32")):
        deltaprop.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    X[17, 2] = 1e30  # fits float64: a float64 model takes it
    np.savez(tmp_path / "big.npz", X=X, y=(X[:, 0] > 0).astype(int))
    cfg["data"]["train"] = str(tmp_path / "big.npz")
    cfg["training"]["dtype"] = "float64"
    assert deltaprop.train(cfg, tmp_path / "run64").model.dtype == "float64"


def test_a_divergence_before_any_checkpoint_does_not_claim_one_is_kept(tiny, tmp_path):
    with pytest.raises(deltaprop.errors.TrainingFailed) as info:
        deltaprop.train(_raw(tiny) | {"optimizer": {"name": "sgd", "lr": 1e30},
                                      "checkpoint": {"every_epochs": 0}}, tmp_path / "run")
    assert "training diverged at epoch 2" in str(info.value)
    assert "checkpoint" not in str(info.value), str(info.value)
