"""Loggers: the `register_loggers` hook (builtins, a third-party entry point, a broken logger),
the jsonl step record, and TensorBoard and MLflow logs that stay correct across SIGKILL + resume.

TensorBoard's event files are read back with tensorboard's own EventAccumulator and MLflow's
store with MlflowClient, a real SQLite store in tmp_path.
"""

import json
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from fixtures.fakedist import make_fake_dist
from test_resume import (
    _kill_and_resume_until_done,
    _reference_run,
    _signal_mid_training,
)

import deltaprop
from deltaprop.api import read_config
from deltaprop.errors import ConfigError
from deltaprop.io.safetensors import read_safetensors
from deltaprop.plugins import builtin, hookspecs
from deltaprop.plugins.manager import load_registry
from deltaprop.training import trainer as trainer_module
from deltaprop.training.run import Reporter
from deltaprop.training.runs import resume_run, train_run

DELTAPROP = str(Path(sys.executable).with_name("deltaprop"))

CONFIG = """
[model]
hidden = [32]
activation = "tanh"
dropout = 0.1
[data]
train = "{data}"
validation_fraction = 0.1
[training]
epochs = {epochs}
batch_size = 16
[optimizer]
name = "adam"
lr = 0.003
[checkpoint]
every_epochs = 1
every_steps = 23
keep = 2
[logging]
loggers = {loggers}
every_steps = 7
mlflow_tracking_uri = "{uri}"
"""


def _config(tmp_path: Path, data: Path, loggers=(), epochs=3, name="c.toml") -> Path:
    path = tmp_path / name
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path.write_text(CONFIG.format(data=data, epochs=epochs, loggers=json.dumps(list(loggers)), uri=uri))
    return path


class Recorder(deltaprop.Logger):
    """Records every call, for the hook tests."""

    calls: list = []

    def start(self, run):
        Recorder.calls.append(("start", run))

    def log_step(self, step, scalars):
        Recorder.calls.append(("step", step, dict(scalars)))

    def log_epoch(self, step, metrics):
        Recorder.calls.append(("epoch", step, dict(metrics)))

    def flush(self):
        Recorder.calls.append(("flush",))

    def end(self, status, model_path):
        Recorder.calls.append(("end", status, model_path))


def _plugin(name: str, factory) -> types.ModuleType:
    module = types.ModuleType(f"plugin_{name}")

    @deltaprop.hookimpl
    def register_loggers(register):
        register(name, factory)

    module.register_loggers = register_loggers
    return module


class Notes(Reporter):
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


def _weights(run_dir: Path) -> dict:
    return {k: v.tobytes() for k, v in read_safetensors(run_dir / "model.safetensors")[0].items()}


def _timeless(rows):
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def _steps_jsonl(run_dir: Path) -> list[dict]:
    return _timeless(json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines())


# ---- the hook --------------------------------------------------------------------------------

def test_builtin_loggers_register_through_the_same_hook():
    assert hasattr(builtin.register_loggers, f"{hookspecs.hookimpl.project_name}_impl")
    reg = load_registry(entry_points=False)
    info = next(p for p in reg.plugins if p.name == "builtin")
    assert info.status == "ok" and info.loggers == ["tensorboard", "mlflow"]
    for name in ("tensorboard", "mlflow"):
        assert (reg.loggers[name].source, reg.loggers[name].version) == ("deltaprop", deltaprop.__version__)


def test_a_logger_gets_every_step_multiple_whatever_the_chunking(tmp_path, data, monkeypatch):
    """Steps 7, 14, ... (logging.every_steps = 7) with the same values whether Python runs one
    step per chunk or many; epochs as metrics.jsonl has them; start and end as documented."""
    reg = load_registry(extra=(("rec", _plugin("recorder", Recorder)),))
    cfg = read_config(_config(tmp_path, data, ["recorder"], epochs=2))
    runs = {}
    for label, seconds in (("one-step chunks", 1e-9), ("default chunks", trainer_module.CHUNK_SECONDS)):
        monkeypatch.setattr(trainer_module, "CHUNK_SECONDS", seconds)
        Recorder.calls = []
        result = train_run(cfg, tmp_path / label, registry=reg)
        runs[label] = (Recorder.calls, result)
    calls, result = runs["default chunks"]
    steps_per_epoch = -(-2700 // 16)
    (_, info), *rest = calls
    assert (info.step, info.epoch, info.resumed, info.steps_per_epoch) == (0, 0, False, steps_per_epoch)
    assert info.summary["parameters"] == 32 * 32 + 32 + 4 * 32 + 4 and "softmax" in info.summary["text"]
    assert info.config["logging"]["every_steps"] == 7 and info.run_dir == tmp_path / "default chunks"
    steps = [c for c in calls if c[0] == "step"]
    assert [c[1] for c in steps] == list(range(7, 2 * steps_per_epoch + 1, 7))
    assert set(steps[0][2]) == {"loss", "lr", "samples_per_s", "accuracy"}
    assert calls[-1] == ("end", "finished", tmp_path / "default chunks" / "model.safetensors")
    epochs = [c for c in calls if c[0] == "epoch"]
    assert [(s, m) for _, s, m in epochs] == [(m["step"], m) for m in result.metrics]
    assert ("flush",) in calls  # before the checkpoints
    other = runs["one-step chunks"][0]
    assert _timeless(c[2] for c in steps) == _timeless(c[2] for c in other if c[0] == "step")
    assert _steps_jsonl(tmp_path / "default chunks") == _timeless(c[2] | {"step": c[1]} for c in steps)


def test_a_broken_logger_is_reported_by_name_and_training_goes_on(tmp_path, data):
    class Broken(Recorder):
        def log_step(self, step, scalars):
            super().log_step(step, scalars)
            if step == 21:
                raise RuntimeError("the dashboard is down")

    reg = load_registry(extra=(("brk", _plugin("dashboard", Broken)),))
    cfg = read_config(_config(tmp_path, data, ["dashboard"], epochs=1))
    Recorder.calls, notes = [], Notes()
    train_run(cfg, tmp_path / "with", registry=reg, reporter=notes)
    assert [c[1] for c in Recorder.calls if c[0] == "step"] == [7, 14, 21]  # nothing after it raised
    assert not any(c[0] == "end" for c in Recorder.calls)
    said = [n for n in notes.notes if "dashboard" in n]
    assert len(said) == 1 and "raised in log_step: RuntimeError: the dashboard is down" in said[0]
    assert "disabled for the rest of this run" in said[0]
    train_run(read_config(_config(tmp_path, data, [], epochs=1, name="plain.toml")), tmp_path / "without")
    assert _weights(tmp_path / "with") == _weights(tmp_path / "without")


def test_an_unknown_or_uninstalled_logger_is_a_config_error_before_training(tmp_path, data, monkeypatch):
    cfg = read_config(_config(tmp_path, data, ["tensorbord"], epochs=1))
    with pytest.raises(ConfigError, match=r"logging.loggers\[0\] = 'tensorbord': unknown logger .*"
                                          r"\(did you mean 'tensorboard'\?\)"):
        train_run(cfg, tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoints").exists()
    from fixtures.cli import assert_exit, cli
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))
    r = cli("submit", _config(tmp_path, data, ["tensorbord"], epochs=1))  # refused before queuing
    assert_exit(r, 2)
    assert "did you mean 'tensorboard'" in r.output and not (tmp_path / "home" / "queue.db").exists()
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard... raises ImportError
    cfg = read_config(_config(tmp_path, data, ["tensorboard"], epochs=1))
    with pytest.raises(ConfigError, match=r"pip install 'deltaprop\[tensorboard\]'"):
        train_run(cfg, tmp_path / "b")
    with pytest.raises(ConfigError, match=r"logging.loggers\[1\] = 'mlflow' is listed twice"):
        read_config(_config(tmp_path, data, ["mlflow", "mlflow"], epochs=1))


def test_a_third_party_logger_through_a_real_entry_point(tmp_path, data):
    """An installed distribution with two logger entry points: a working one writes its file, a
    broken one is reported by name, and the run finishes; `plugins list` shows both."""
    site = make_fake_dist(tmp_path / "site", names=("csv_logger", "broken_logger"))
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([DELTAPROP, "plugins", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=300)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["csv_logger"]["loggers"] == ["csv_logger"] and rows["csv_logger"]["status"] == "ok"
    cfg = _config(tmp_path, data, ["csv_logger", "broken_logger"], epochs=1)
    r = subprocess.run([DELTAPROP, "train", str(cfg), "--run-dir", str(tmp_path / "run")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "logger 'broken_logger' (from fakeplug 0.1) raised in log_step: ValueError: the dashboard is down" \
        in r.stdout + r.stderr and "Traceback" not in r.stderr
    lines = (tmp_path / "run" / "csv_logger.csv").read_text().splitlines()
    assert lines[0] == f"start,0,False,{32 * 32 + 32 + 4 * 32 + 4}"
    assert [int(x.split(",")[1]) for x in lines if x.startswith("step,")] == list(range(7, 169, 7))
    assert lines[-1] == "end,finished,model.safetensors"


# ---- TensorBoard and MLflow across SIGKILL and resume ----------------------------------------

def _scalars(tb_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(uri: str, run_dir: Path):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(json.loads((run_dir / "mlflow.json").read_text())["run_id"])
    history = {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, k),
                                                     key=lambda m: (m.step, m.timestamp))]
               for k in run.data.metrics}
    return client, run, history


def _same_curves(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert steps == sorted(set(steps)), f"{tag}: steps not strictly increasing: {steps}"
        assert steps == [s for s, _ in points], tag
        if not tag.endswith("samples_per_s"):
            assert [v for _, v in got[tag]] == [v for _, v in points], tag


@pytest.mark.fault
def test_tensorboard_and_mlflow_curves_survive_sigkill_and_resume(tmp_path, data):
    cfg = _config(tmp_path, data, ["tensorboard", "mlflow"], epochs=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    window = _reference_run(cfg, tmp_path / "reference")
    run_dir = tmp_path / "killed"
    assert _kill_and_resume_until_done(cfg, run_dir, window, 5) >= 1
    assert _weights(run_dir) == _weights(tmp_path / "reference")

    want = _scalars(tmp_path / "reference" / "tb")
    assert "step/loss" in want and "epoch/val_accuracy" in want
    assert [s for s, _ in want["step/loss"]] == list(range(7, 3 * 169 + 1, 7))
    _same_curves(_scalars(run_dir / "tb"), want)
    assert _steps_jsonl(run_dir) == _steps_jsonl(tmp_path / "reference")

    client, ref_run, ref_history = _mlflow(uri, tmp_path / "reference")
    _, run, history = _mlflow(uri, run_dir)
    assert run.info.run_id != ref_run.info.run_id and run.info.run_name == "killed"
    assert run.info.status == ref_run.info.status == "FINISHED"
    _same_curves(history, ref_history)
    assert history.keys() == {t for t in want}  # the same names as TensorBoard's
    assert run.data.params == ref_run.data.params and run.data.params["training.epochs"] == "3"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.safetensors"]
    runs = client.search_runs([run.info.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["killed", "reference"]  # one MLflow run each


@pytest.mark.fault
def test_an_interrupted_run_is_killed_in_mlflow_until_resumed_and_a_failed_one_failed(tmp_path, data):
    cfg = _config(tmp_path, data, ["mlflow", "tensorboard"], epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([DELTAPROP, "train", str(cfg), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _signal_mid_training(proc, run_dir, signal.SIGINT, steps=2 * 169)  # not during the loggers' shutdown
    out, err = proc.communicate(timeout=600)
    assert proc.returncode in (1, 130), (out, err)
    assert _mlflow(uri, run_dir)[1].info.status == "KILLED"
    result = resume_run(run_dir)
    _, run, history = _mlflow(uri, run_dir)
    assert run.info.status == "FINISHED" and len(history["epoch/loss"]) == 2 == len(result.metrics)

    # extended with --epochs: the changed param is a tag, the run goes on in the same MLflow run
    resume_run(run_dir, epochs=3)
    _, run, history = _mlflow(uri, run_dir)
    assert run.info.status == "FINISHED" and [s for s, _ in history["epoch/loss"]] == [169, 338, 507]
    assert run.data.params["training.epochs"] == "2" and run.data.tags["resumed.training.epochs"] == "3"

    shutil.rmtree(run_dir)
    diverge = read_config(cfg, ["optimizer.lr=1e30", "optimizer.name=\"sgd\"", "model.activation=\"relu\""])
    with pytest.raises(deltaprop.errors.TrainingFailed, match="diverged"):
        train_run(diverge, run_dir)
    assert _mlflow(uri, run_dir)[1].info.status == "FAILED"
    assert np.isfinite([v for _, v in _mlflow(uri, run_dir)[2].get("step/loss", [])]).all()


@pytest.mark.fault
def test_a_sweep_through_the_job_runner_is_one_logged_run_per_job(tmp_path, data):
    """The jobs' configs carry their [logging]: two workers' jobs, at once, each an MLflow run of
    its own in one store (no "database is locked"), each with its own TensorBoard directory."""
    home, uri = tmp_path / "home", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**__import__("os").environ, "DELTAPROP_HOME": str(home)}
    cfg = _config(tmp_path, data, ["mlflow", "tensorboard"], epochs=2)
    r = subprocess.run([DELTAPROP, "sweep", str(cfg), "--grid", "optimizer.lr=0.001,0.003,0.01"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    w = subprocess.run([DELTAPROP, "worker", "--concurrency", "2", "--until-empty"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert w.returncode == 0, w.stderr
    from mlflow.tracking import MlflowClient

    from deltaprop.jobs.queue import Queue
    jobs = Queue(home, create=False).list()
    assert [j.status for j in jobs] == ["succeeded"] * 3
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("deltaprop")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == sorted(Path(j.run_dir).name for j in jobs)
    for job in jobs:
        run = runs[Path(job.run_dir).name]
        assert run.info.status == "FINISHED", job
        metrics = json.loads(Path(job.run_dir, "metrics.jsonl").read_text().splitlines()[-1])
        assert run.data.metrics["epoch/loss"] == metrics["loss"] and run.data.params["optimizer.lr"] in job.name
        assert "logger" not in Path(job.run_dir, "log.txt").read_text()  # no logger was disabled
        assert [s for s, _ in _scalars(Path(job.run_dir) / "tb")["epoch/loss"]] == [169, 338]
