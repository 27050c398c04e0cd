"""Crash-safety and bit-exact resume, through real `deltaprop` processes and real signals.

An uninterrupted run and a run SIGKILLed at random moments (at epoch boundaries and mid-epoch)
then resumed, as many times as it takes, must end with byte-identical weights.
"""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deltaprop.service.api import read_config
from deltaprop.service.checkpoint import list_checkpoints, read_safetensors
from deltaprop.service.trainer import train_run

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


def _kill_after_progress(cmd, run_dir: Path, rng: random.Random, timeout=120.0) -> int | None:
    """Start cmd; once a new checkpoint appears, SIGKILL it after a random extra delay.
    Returns the exit code if it finished on its own, else None (killed)."""
    start_step = _newest_step(run_dir)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _newest_step(run_dir) > start_step:
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                return None
        time.sleep(0.01)
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, proc.stderr.read()
    return proc.returncode


@pytest.mark.fault
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_and_resume_is_bit_exact(tmp_path, data, seed):
    cfg = _config(tmp_path, data, seed)
    reference = train_run(read_config(cfg), tmp_path / "reference")

    run_dir = tmp_path / "killed"
    rng = random.Random(seed)
    kills, mid_epoch = 0, 0
    code = _kill_after_progress([DELTAPROP, "train", str(cfg), "--run-dir", str(run_dir)], run_dir, rng)
    while code is None:
        kills += 1
        newest = list_checkpoints(run_dir / "checkpoints")[-1]
        mid_epoch += read_safetensors(newest)[1]["state"]["pos"] > 0
        code = _kill_after_progress([DELTAPROP, "resume", str(run_dir)], run_dir, rng)
        assert kills < 60
    assert kills >= 1
    resumed = _weights(run_dir)
    for name, value in _weights(reference.run_dir).items():
        assert resumed[name].tobytes() == value.tobytes(), name
    assert _metrics(run_dir) == _metrics(reference.run_dir)
    test_sigkill_and_resume_is_bit_exact.mid_epoch = getattr(test_sigkill_and_resume_is_bit_exact,
                                                             "mid_epoch", 0) + mid_epoch


@pytest.mark.fault
def test_some_kill_was_mid_epoch():
    """Across the seeds above, at least one resume started inside an epoch."""
    assert getattr(test_sigkill_and_resume_is_bit_exact, "mid_epoch", 0) >= 1


@pytest.mark.fault
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_checkpoint_then_resume_matches(tmp_path, data, sig):
    cfg = _config(tmp_path, data, 7)
    reference = train_run(read_config(cfg), tmp_path / "reference")
    run_dir = tmp_path / "signalled"
    proc = subprocess.Popen([DELTAPROP, "train", str(cfg), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while _newest_step(run_dir) < 0 and proc.poll() is None:
        time.sleep(0.01)
    before = _newest_step(run_dir)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "checkpoint written" in err and "Traceback" not in err
    assert _newest_step(run_dir) >= before
    subprocess.run([DELTAPROP, "resume", str(run_dir)], check=True, capture_output=True)
    for name, value in _weights(reference.run_dir).items():
        assert _weights(run_dir)[name].tobytes() == value.tobytes(), name


def test_resume_skips_corrupted_newest_checkpoint(tmp_path, data):
    """Corrupt the final checkpoint of a finished run and drop its model: resume falls back to
    the previous checkpoint, says so, and still ends with the uninterrupted weights."""
    from typer.testing import CliRunner

    from deltaprop.cli.main import app
    cfg = _config(tmp_path, data, 5)
    run = train_run(read_config(cfg), tmp_path / "run")
    expected = {k: v.tobytes() for k, v in _weights(run.run_dir).items()}
    (run.run_dir / "model.safetensors").unlink()
    newest = list_checkpoints(run.run_dir / "checkpoints")[-1]
    raw = bytearray(newest.read_bytes())
    raw[-5] ^= 0xFF
    newest.write_bytes(bytes(raw))
    result = CliRunner().invoke(app, ["resume", str(run.run_dir)])
    assert result.exit_code == 0, result.output
    assert "skipping unreadable checkpoint" in result.output and newest.name in result.output
    assert {k: v.tobytes() for k, v in _weights(run.run_dir).items()} == expected


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
