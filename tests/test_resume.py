"""Crash-safety and bit-exact resume, through real `deltaprop` processes and real signals.

An uninterrupted run and a run SIGKILLed at random moments (at epoch boundaries and mid-epoch)
then resumed, as many times as it takes, must end with byte-identical weights.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deltaprop.api import read_config
from deltaprop.io.checkpoints import list_checkpoints
from deltaprop.io.safetensors import read_safetensors
from deltaprop.training.model import load_model
from deltaprop.training.runs import train_run

DELTAPROP = str(Path(sys.executable).with_name("deltaprop"))

CONFIG = """
[model]
hidden = [128, 64]
activation = "tanh"
dropout = [0.1, 0.0]
[data]
train = "{data}"
test = ""
validation_fraction = 0.1
[training]
epochs = 4
batch_size = 16
seed = {seed}
[optimizer]
name = "adamw"
lr = 0.002
[schedule]
name = "cosine"
warmup_epochs = 0.5
[early_stopping]
patience = 10
[checkpoint]
every_epochs = 1
every_steps = 23
keep = 2
"""


def _config(tmp_path, data, seed) -> Path:
    path = tmp_path / f"c{seed}.toml"
    path.write_text(CONFIG.format(data=data, seed=seed))
    return path


def _weights(run_dir: Path) -> dict:
    tensors, _ = read_safetensors(run_dir / "model.safetensors")
    return tensors


def _metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def _newest_step(run_dir: Path) -> int:
    found = list_checkpoints(run_dir / "checkpoints")
    return int(found[-1].stem.split("-")[1]) if found else -1


def _reference_run(cfg: Path, run_dir: Path) -> float:
    """Train cfg uninterrupted into run_dir with the CLI; returns the seconds it trained after its
    first checkpoint appeared, until its model.safetensors did: the window in which a kill lands
    mid-training on this machine. (Not until the process exited: with loggers most of that is their
    shutdown after training, ~1.5 s for MLflow, and most kills landed after training had ended. A
    kill there still lands, so the first kill, within half the window, always does.)"""
    proc = subprocess.Popen([DELTAPROP, "train", str(cfg), "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = trained = None
    while proc.poll() is None:
        if first is None and _newest_step(run_dir) >= 0:
            first = time.monotonic()
        if trained is None and (run_dir / "model.safetensors").exists():
            trained = time.monotonic()
        time.sleep(0.001)
    assert proc.returncode == 0, proc.stderr.read()
    assert first is not None, "the reference run wrote no checkpoint before it ended"
    return (trained or time.monotonic()) - first


def _kill_after_progress(cmd, run_dir: Path, rng: random.Random, within: float = 0.0,
                         timeout=600.0) -> int | None:
    """Start cmd; once a new checkpoint appears, SIGKILL it after a random extra delay drawn from
    [0, within) seconds. `within` is a fraction of the run's own training time (not a fixed
    delay), so however fast the machine the kill lands before the run ends.
    Returns the exit code if it finished on its own, else None (killed)."""
    start_step = _newest_step(run_dir)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _newest_step(run_dir) > start_step:
            time.sleep(rng.uniform(0.0, within))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                return None
        time.sleep(0.001)
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, proc.stderr.read()
    return proc.returncode


def _signal_mid_training(proc: subprocess.Popen, run_dir: Path, sig: int, steps: int) -> int:
    """Send `sig` to the training process `proc` certainly mid-training: SIGSTOP it as soon as its
    first checkpoint appears, check that this checkpoint is in the first half of its `steps` (the
    run trains at most to its next checkpoint before it sees the signal), signal it and let it go
    on. Returns the step of the newest checkpoint when it was stopped. (Signalled after its first
    checkpoint without the pause, a quick run could have ended training: with loggers, the signal
    then came during their ~1.5 s shutdown, and the run was recorded as finished.)"""
    while _newest_step(run_dir) < 0 and proc.poll() is None:
        time.sleep(0.001)
    assert proc.poll() is None, "the run ended before its first checkpoint was seen"
    os.kill(proc.pid, signal.SIGSTOP)
    step = _newest_step(run_dir)
    if not step < steps // 2 or (run_dir / "model.safetensors").exists():
        proc.kill()
        proc.wait()
        raise AssertionError(f"first checkpoint seen at step {step} of {steps}: not mid-training")
    proc.send_signal(sig)  # pending until the process goes on
    os.kill(proc.pid, signal.SIGCONT)
    return step


def _kill_and_resume_until_done(cfg: Path, run_dir: Path, window: float, seed: int) -> int:
    """Train cfg into run_dir, SIGKILLed after random delays and resumed until it finishes;
    returns the number of kills. The delays are drawn within half of `window`, the time an
    uninterrupted run goes on after its first checkpoint (_reference_run): the first kill always
    lands, however fast the machine, and each later one at a random point of what is left."""
    rng = random.Random(seed)
    kills = 0
    code = _kill_after_progress([DELTAPROP, "train", str(cfg), "--run-dir", str(run_dir)],
                                run_dir, rng, window / 2)
    while code is None:
        kills += 1
        code = _kill_after_progress([DELTAPROP, "resume", str(run_dir)], run_dir, rng, window / 2)
        assert kills < 60
    return kills


@pytest.mark.fault
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_and_resume_is_bit_exact(tmp_path, data, seed):
    cfg = _config(tmp_path, data, seed)
    reference = tmp_path / "reference"
    window = _reference_run(cfg, reference)
    run_dir = tmp_path / "killed"
    assert _kill_and_resume_until_done(cfg, run_dir, window, seed) >= 1
    resumed = _weights(run_dir)
    for name, value in _weights(reference).items():
        assert resumed[name].tobytes() == value.tobytes(), name
    assert _metrics(run_dir) == _metrics(reference)


@pytest.mark.fault
def test_sigkill_and_resume_with_sample_weights_is_bit_exact(tmp_path, data):
    """Sample weights are data (the .npz's array w, validation split included): a killed and
    resumed weighted run ends with the weights and metrics of an uninterrupted one."""
    with np.load(data) as z:
        X, y = z["X"], z["y"]
    w = np.random.default_rng(8).integers(0, 4, len(X)).astype(np.float32)
    np.savez(tmp_path / "weighted.npz", X=X, y=y, w=w)
    cfg = _config(tmp_path, tmp_path / "weighted.npz", 8)
    reference = tmp_path / "reference"
    window = _reference_run(cfg, reference)
    assert load_model(reference).sample_weights["from"] == "array 'w'"
    run_dir = tmp_path / "killed"
    assert _kill_and_resume_until_done(cfg, run_dir, window, 8) >= 1
    resumed = _weights(run_dir)
    for name, value in _weights(reference).items():
        assert resumed[name].tobytes() == value.tobytes(), name
    assert _metrics(run_dir) == _metrics(reference)


@pytest.mark.fault
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path, data):
    """A resume that starts inside an epoch, every time: without epoch checkpoints every checkpoint
    but the final one is mid-epoch (every_steps = 23 never meets the 169-step epoch boundary in
    4 epochs), so a kill after the first checkpoint and before the end always leaves one."""
    cfg = _config(tmp_path, data, 4)
    sets = ["checkpoint.every_epochs=0"]
    reference = train_run(read_config(cfg, sets), tmp_path / "reference")
    run_dir = tmp_path / "killed"
    argv = [DELTAPROP, "train", str(cfg), "--run-dir", str(run_dir), "--set", sets[0]]
    code = _kill_after_progress(argv, run_dir, random.Random(4))  # within=0: at once
    assert code is None, "the run finished before it could be killed"
    _, meta = read_safetensors(list_checkpoints(run_dir / "checkpoints")[-1])
    assert 0 < meta["state"]["pos"] < 2700 and not meta["state"]["finished"]
    assert meta["state"]["step"] % 169 != 0
    subprocess.run([DELTAPROP, "resume", str(run_dir)], check=True, capture_output=True)
    resumed = _weights(run_dir)
    for name, value in _weights(reference.run_dir).items():
        assert resumed[name].tobytes() == value.tobytes(), name
    assert _metrics(run_dir) == _metrics(reference.run_dir)


@pytest.mark.fault
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_checkpoint_then_resume_matches(tmp_path, data, sig):
    cfg = _config(tmp_path, data, 7)
    reference = train_run(read_config(cfg), tmp_path / "reference")
    run_dir = tmp_path / "signalled"
    proc = subprocess.Popen([DELTAPROP, "train", str(cfg), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = _signal_mid_training(proc, run_dir, sig, steps=4 * 169)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, (out, err)
    assert "checkpoint written" in err and "Traceback" not in err
    assert _newest_step(run_dir) >= before
    subprocess.run([DELTAPROP, "resume", str(run_dir)], check=True, capture_output=True)
    for name, value in _weights(reference.run_dir).items():
        assert _weights(run_dir)[name].tobytes() == value.tobytes(), name


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished run (seed 5) and its final weights; tests work on copies."""
    tmp = tmp_path_factory.mktemp("finished")
    run = train_run(read_config(_config(tmp, data, 5)), tmp / "run")
    return run.run_dir, {k: v.tobytes() for k, v in _weights(run.run_dir).items()}


def _copy_without_model(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    (dest / "model.safetensors").unlink()
    return dest


def _cli(*args):
    from typer.testing import CliRunner

    from deltaprop.cli.main import app
    return CliRunner().invoke(app, [str(a) for a in args])


def _resume_cli(run_dir: Path):
    return _cli("resume", run_dir)


def test_resume_skips_corrupted_newest_checkpoint(tmp_path, finished):
    """Corrupt the final checkpoint of a finished run and drop its model: resume falls back to
    the previous checkpoint, says so, and still ends with the uninterrupted weights."""
    run_dir, expected = finished
    run_dir = _copy_without_model(run_dir, tmp_path / "run")
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    raw = bytearray(newest.read_bytes())
    raw[-5] ^= 0xFF
    newest.write_bytes(bytes(raw))
    result = _resume_cli(run_dir)
    assert result.exit_code == 0, result.output
    assert "skipping unusable checkpoint" in result.output and newest.name in result.output
    assert "checksum mismatch" in result.output
    assert {k: v.tobytes() for k, v in _weights(run_dir).items()} == expected


def _set(d: dict, key: str, value):
    d[key] = value


# name -> (change to (tensors, metadata) of the newest checkpoint, fragment of the message)
BAD_CHECKPOINTS = {
    "state_not_an_object": (lambda t, m: _set(m, "state", "oops"), "expected a JSON object, got str"),
    "state_missing_key": (lambda t, m: m["state"].pop("pos"), "missing pos"),
    "state_unknown_key": (lambda t, m: _set(m["state"], "extra", 1), "unknown extra"),
    "state_wrong_type": (lambda t, m: _set(m["state"], "epoch", "3"), "epoch must be an integer >= 0, got '3'"),
    "state_negative": (lambda t, m: _set(m["state"], "step", -4), "step must be an integer >= 0"),
    "state_nan_loss": (lambda t, m: _set(m["state"], "loss_sum", float("nan")), "loss_sum must be a finite"),
    "state_bad_rng": (lambda t, m: _set(m["state"], "epoch_rng", {"bit_generator": "MT19937", "state": 5}),
                      "epoch_rng is not a PCG64 state"),
    "state_history_not_a_list": (lambda t, m: _set(m["state"], "history", {}), "history must be a list"),
    "state_pos_past_the_data": (lambda t, m: m["state"].update(pos=10**6, seen=10**6),
                                "does not fit 2700 training rows"),
    "state_step_inconsistent": (lambda t, m: _set(m["state"], "step", m["state"]["step"] + 1),
                                "does not match epoch"),
    "activations_short": (lambda t, m: _set(m, "activations", m["activations"][:1]),
                          "lists 1 activations for 3 dense layers"),
    "loss_unknown": (lambda t, m: _set(m, "loss", "hinge"), "unknown loss 'hinge'"),
    "mean_short": (lambda t, m: m["preprocess"].update(mean=[0.0] * 3), "preprocess.mean has 3 values"),
    "optimizer_tensor_short": (lambda t, m: _set(t, "optimizer.exp_avg", t["optimizer.exp_avg"][:10]),
                               "optimizer tensor optimizer.exp_avg must be"),
    "optimizer_tensor_missing": (lambda t, m: t.pop("optimizer.exp_avg_sq"),
                                 "missing optimizer tensor optimizer.exp_avg_sq"),
    "inf_weight": (lambda t, m: t["layers.1.bias"].__setitem__(0, np.inf), "weight(s) are NaN or Inf"),
    "best_theta_short": (lambda t, m: _set(t, "early_stopping.best_theta", np.zeros(3, np.float32)),
                         "early_stopping.best_theta must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_resume_falls_back_past_a_checkpoint_with_bad_contents(tmp_path, finished, case):
    """A hand-crafted newest checkpoint (valid checksum, unusable contents) is skipped like a
    corrupted one: resume says why, continues from the previous one and ends bit-exact."""
    from deltaprop.io.safetensors import write_safetensors
    change, fragment = BAD_CHECKPOINTS[case]
    run_dir, expected = finished
    run_dir = _copy_without_model(run_dir, tmp_path / "run")
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    tensors, meta = read_safetensors(newest)
    change(tensors, meta)
    write_safetensors(newest, tensors, meta)
    result = _resume_cli(run_dir)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and result.exception is None
    message = " ".join(result.output.split())
    assert f"skipping unusable checkpoint {newest.name}" in message and fragment in message, message
    assert {k: v.tobytes() for k, v in _weights(run_dir).items()} == expected


def test_divergence_stops_with_exit_1_and_keeps_checkpoint(tmp_path, data):
    cfg = _config(tmp_path, data, 1)
    from typer.testing import CliRunner

    from deltaprop.cli.main import app
    run_dir = tmp_path / "diverge"
    result = CliRunner().invoke(app, ["train", str(cfg), "--run-dir", str(run_dir),
                                      "--set", "optimizer.name=\"sgd\"", "--set", "optimizer.lr=1e30",
                                      "--set", "model.activation=\"relu\"",
                                      "--set", "schedule.warmup_epochs=0.0"])
    assert result.exit_code == 1, result.output
    assert "diverged" in result.output and "Traceback" not in result.output
    assert not (run_dir / "model.safetensors").exists()


LATE_DIVERGENCE = """
[model]
hidden = [32]
[data]
train = "{data}"
test = ""
[training]
epochs = 6
batch_size = 64
[optimizer]
name = "sgd"
lr = 0.05
[schedule]
name = "exponential"
gamma = 1e6
[checkpoint]
every_steps = 20
keep = 10
"""


def test_divergence_after_good_epochs_keeps_the_last_good_checkpoint(tmp_path, data):
    """Epoch 1 trains (lr 0.05); the schedule multiplies lr by 1e6 per epoch, so epoch 2 blows up,
    deterministically. Exit 1 with a clear message; every checkpoint written before loads and is
    finite; a resume diverges again at the same step instead of continuing from NaN."""
    from deltaprop.training.model import load_model
    cfg = tmp_path / "late.toml"
    cfg.write_text(LATE_DIVERGENCE.format(data=data))
    run_dir = tmp_path / "late"
    result = _cli("train", cfg, "--run-dir", run_dir)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.split())
    match = re.search(r"error: training diverged at epoch 2, step (\d+): the loss or gradient became "
                      r"NaN/Inf \(learning rate 5e\+04\)\. The last good checkpoint in \S+ is kept", message)
    assert match and "Traceback" not in result.output, message
    assert 47 < int(match.group(1)) <= 94  # in epoch 2 (47 steps per epoch)
    assert [m["epoch"] for m in _metrics(run_dir)] == [1]
    assert not (run_dir / "model.safetensors").exists()
    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert [int(p.stem.split("-")[1]) for p in ckpts][:3] == [20, 40, 47]
    for path in ckpts:
        model = load_model(path)  # validates the metadata and refuses non-finite weights
        assert np.isfinite(model.theta).all() and model.theta.any()
        assert read_safetensors(path)[1]["state"]["step"] < int(match.group(1))

    again = _cli("resume", run_dir)
    assert again.exit_code == 1, again.output
    assert f"diverged at epoch 2, step {match.group(1)}:" in " ".join(again.output.split())
    assert list_checkpoints(run_dir / "checkpoints") == ckpts


def _poison_after(monkeypatch, poison_step: int):
    """Make the compiled steps overflow the weights to Inf once global step `poison_step` is done,
    without the loss or gradient showing it (as an update of huge lr * finite gradient can)."""
    from deltaprop.compute.engine import Engine
    real = Engine.run_steps

    def run_steps(self, X, mean, inv_std, y, perm, pos, n_steps, batch_size, theta, *args, **kwargs):
        done, loss, correct = real(self, X, mean, inv_std, y, perm, pos, n_steps, batch_size, theta,
                                   *args, **kwargs)
        step0 = args[4]  # grad, opt, opt_state, lrs, step0
        if step0 < poison_step <= step0 + done:
            theta[3] = np.inf
        return done, loss, correct

    monkeypatch.setattr(Engine, "run_steps", run_steps)


def test_weights_that_overflowed_are_never_saved(tmp_path, data, monkeypatch):
    """The update of step 47 (the last of epoch 1) makes a weight Inf: the epoch's checkpoint is
    not written, the run fails with exit 1, and the step-40 checkpoint is the newest."""
    cfg = tmp_path / "late.toml"
    cfg.write_text(LATE_DIVERGENCE.format(data=data))
    run_dir = tmp_path / "overflow"
    _poison_after(monkeypatch, 47)
    result = _cli("train", cfg, "--run-dir", run_dir, "--set", "schedule.name=\"constant\"")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.split())
    assert "diverged at epoch" in message and "step 47: an update made the weights" in message, message
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [
        "step-0000000020.safetensors", "step-0000000040.safetensors"]
    assert np.isfinite(read_safetensors(list_checkpoints(run_dir / "checkpoints")[-1])[0]["layers.0.weight"]).all()
    assert not (run_dir / "model.safetensors").exists()


def test_overflowed_weights_are_not_returned_without_a_run_dir(data, monkeypatch):
    """In memory (the scikit-learn estimators): the final weights are checked too."""
    from deltaprop.errors import TrainingFailed
    from deltaprop.training.trainer import Trainer
    cfg = read_config({"model": {"hidden": [32]}, "data": {"train": "", "test": ""},
                       "training": {"epochs": 1, "batch_size": 64},
                       "checkpoint": {"every_epochs": 0, "every_steps": 0}})
    with np.load(data) as f:
        arrays = (f["X"], f["y"])
    _poison_after(monkeypatch, 47)
    with pytest.raises(TrainingFailed, match="step 47: an update made the weights or optimizer state NaN/Inf"):
        Trainer(cfg, None, arrays=arrays).run()
