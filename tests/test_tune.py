"""`deltaprop tune` (jobs/tune.py, jobs/space.py, cli/tune.py) through real processes: a controller,
workers, kills.

- bad search spaces are one-line errors (exit 2) that queue nothing;
- ASHA prunes the clearly bad trials of a grid (lr 1e-7 against 0.02), each pruned job stopped
  with a checkpoint in state `pruned`; `tune continue` resumes one to a model byte-identical to
  the same config trained uninterrupted, recorded as a new trial that `continues` it;
- the controller SIGKILLed at random moments (and a worker too) and `tune resume`d: every trial
  ends, each search trial is exactly one job, no job twice, each value the one its run measured;
- a study through a real Ray cluster.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.cli import NUMBA_CACHE_DIR, assert_exit, cli

from deltaprop.jobs.queue import Queue

DELTAPROP = str(Path(sys.executable).with_name("deltaprop"))
CORES = len(os.sched_getaffinity(0))
CONFIG = """
[model]
hidden = {hidden}
[data]
train = "{data}"
test = ""
validation_fraction = 0.2
[training]
epochs = {epochs}
batch_size = 16
[optimizer]
name = "adam"
lr = 0.01
[checkpoint]
every_epochs = 1
keep = 2
"""
GOOD_BAD = """
["optimizer.lr"]
choices = [0.02, 1e-7]
["training.seed"]
choices = [0, 1, 2]
"""


def _env(home: Path, **extra) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=NUMBA_CACHE_DIR, PYTHONUNBUFFERED="1", DELTAPROP_HOME=str(home))
    for key in ("NUMBA_NUM_THREADS", "DELTAPROP_LOAD_PLUGINS"):
        env.pop(key, None)
    env.update(extra)
    return env


def _run(*args, home, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([DELTAPROP, *map(str, args)], env=_env(home), capture_output=True, text=True,
                          timeout=timeout)


class Proc:
    """A deltaprop process whose output goes to a file (a SIGKILL loses none of it)."""

    started: list = []

    def __init__(self, home: Path, log: Path, *args, **extra_env):
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([DELTAPROP, *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                                         env=_env(home, **extra_env))
        Proc.started.append(self)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout=900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.output()[-3000:]}") from None

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait()


@pytest.fixture(autouse=True)
def _no_strays():
    yield
    for p in Proc.started:
        p.kill()
    Proc.started.clear()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """100k x 64 rows, 4 classes: epochs long enough (~0.2 s) that a prune reaches a job mid-run."""
    import numpy as np
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 64)).astype(np.float32)
    np.savez(d / "d.npz", X=X, y=(X @ rng.normal(size=(64, 4))).argmax(1))
    return d / "d.npz"


@pytest.fixture
def setup(data, tmp_path):
    def make(epochs: int, space: str = GOOD_BAD, hidden: str = "[32]", data_path=None):
        (tmp_path / "c.toml").write_text(CONFIG.format(data=data_path or data, epochs=epochs, hidden=hidden))
        (tmp_path / "space.toml").write_text(space)
        return tmp_path / "c.toml", tmp_path / "space.toml"
    return make


def _study_id(log: Path, timeout=300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if lines and lines[0].strip().isdigit():
            return lines[0].strip()
        time.sleep(0.1)
    raise AssertionError(f"no study id in {log}: {log.read_text() if log.exists() else ''}")


def _show(home, study_id) -> dict:
    r = _run("tune", "show", study_id, "--json", home=home)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _optuna_trials(home, study_id):
    import optuna
    storage = optuna.storages.RDBStorage(f"sqlite:///{home}/tune/{study_id}/optuna.db")
    return optuna.load_study(study_name=f"deltaprop-{study_id}", storage=storage).get_trials()


def _weights(path) -> bytes:
    return Path(path).read_bytes()


def _events(log: Path) -> int:
    """How many trial events ("trial N: asked", "...: job J queued", "...: complete", ...) the
    controllers writing to `log` have logged."""
    return len(re.findall(r"^trial \d+", log.read_text(errors="replace"), re.M))


# ---- bad input ---------------------------------------------------------------------------------------
BAD_SPACES = [
    ('["optimizer.lrr"]\nlow = 0.001\nhigh = 0.1\n', "unknown key optimizer.lrr (did you mean 'lr'?)"),
    ('["optimiser.lr"]\nlow = 0.001\nhigh = 0.1\n', "unknown section [optimiser] (did you mean 'optimizer'?)"),
    ('["optimizer.lr"]\nlo = 0.001\nhigh = 0.1\n', "unknown field 'lo' (did you mean 'low'?)"),
    ('["optimizer.lr"]\nlow = 0.1\nhigh = 0.001\n', "low = 0.1 is greater than high = 0.001"),
    ('["optimizer.lr"]\nlow = 0.0\nhigh = 0.1\nlog = true\n', "log = true needs low > 0, got low = 0.0"),
    ('["model.hidden"]\nchoices = []\n', "choices is empty"),
    ('["optimizer.lr"]\nlow = "small"\nhigh = 0.1\n', 'low must be a number, got "small"'),
    ('["optimizer.lr"]\nlow = 0.001\nhigh = 0.1\nlog = "yes"\n', 'log must be true or false, got "yes"'),
    ('["optimizer.lr"]\nchoices = 0.1\n', "choices must be a list, got 0.1"),
    ('["optimizer.lr"]\nlow = -1.0\nhigh = 0.1\n', "optimizer.lr = -1.0 is out of range: must be > 0.0"),
    ('["training.epochs"]\nchoices = [2, "ten"]\n', "training.epochs must be an integer, got 'ten'"),
    ('[optimizer]\nlr = 0.1\n', 'name each table by its quoted, dotted key, e.g. ["optimizer.lr"]'),
    ('[optimizer.lr]\nlow = 0.1\nhigh = 0.2\n', 'e.g. ["optimizer.lr"] (without quotes TOML reads'),
    ('"optimizer.lr" = 0.1\n', '["optimizer.lr"] must be a table with low/high or choices, got 0.1'),
    ('["optimizer.lr"]\nhigh = 0.1\n', "missing low"),
    ("", "the search space is empty"),
    ('["optimizer.lr"\n', "is not valid TOML"),
]


@pytest.mark.parametrize("space, message", BAD_SPACES, ids=[m[:30] for _, m in BAD_SPACES])
def test_a_bad_space_is_one_line_and_queues_nothing(setup, tmp_path, monkeypatch, space, message):
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))
    config, path = setup(2, space)
    r = cli("tune", config, "--space", path, "--trials", "2")
    assert_exit(r, 2)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(path) in r.stderr or "is empty" in message or "TOML" in message
    assert not (tmp_path / "home" / "tune").exists() and not (tmp_path / "home" / "queue.db").exists()


@pytest.mark.parametrize("args, message", [
    (["--sampler", "grid"], 'range without a step: --sampler grid needs choices or a range with step'),
    (["--metric", "test_accuracy"], "--metric test_accuracy needs a test set"),
    (["--metric", "val_r2"], "--metric 'val_r2' is not a metric of this config; use one of loss, accuracy, "
                             "val_loss, val_accuracy"),
    (["--sampler", "bayes"], "--sampler 'bayes': use one of tpe, random, grid"),
    (["--pruner", "sha"], "--pruner 'sha': use one of asha, hyperband, median, none"),
    (["--set", "data.validation_fraction=0"], "--metric val_accuracy needs a validation split"),
])
def test_bad_options_are_one_line_and_queue_nothing(setup, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))
    config, path = setup(2, '["optimizer.lr"]\nlow = 0.001\nhigh = 0.1\n')
    r = cli("tune", config, "--space", path, *args)
    assert_exit(r, 2)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "home" / "tune").exists() and not (tmp_path / "home" / "queue.db").exists()


def test_unknown_study_and_trial_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))
    for args in (["show", "7"], ["resume", "7"], ["continue", "7", "0"]):
        r = cli("tune", *args)
        assert_exit(r, 2)
        assert "no study 7" in r.stderr


# ---- pruning, continuing -----------------------------------------------------------------------------
EPOCHS = 12
@pytest.mark.fault
def test_asha_prunes_bad_trials_and_a_continued_trial_is_byte_identical(setup, big, tmp_path):
    home = tmp_path / "home"
    config, space = setup(epochs=EPOCHS, hidden="[256]", data_path=big)
    worker = Proc(home, tmp_path / "worker.log", "worker", "--lease-seconds", "5")
    tune = Proc(home, tmp_path / "tune.log", "tune", config, "--space", space, "--sampler", "grid", "--parallel", "1",
                "--pruner", "asha", "--seed", "1", "--wait")  # seed 1: the grid starts with a good lr
    assert tune.wait() == 0, tune.output()
    sid = _study_id(tmp_path / "tune.log")
    board = _show(home, sid)
    trials = board["trials"]
    assert len(trials) == 6 and {t["state"] for t in trials} <= {"complete", "pruned"}, trials
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert any(t["params"]["optimizer.lr"] == 1e-7 for t in pruned), trials
    best = board["best"]
    assert best["params"]["optimizer.lr"] == 0.02 and board["best_value"] == best["value"] > 0.5
    assert board["best_config"].endswith(f"trial-{best['trial']}/config.toml")
    q = Queue(home, create=False)
    for t in trials:
        job = q.find(f"tune-{sid}-trial-{t['trial']}")
        assert job.id == t["job"] and job.run_dir == t["run_dir"]
        metrics = [json.loads(line) for line in Path(job.run_dir, "metrics.jsonl").read_text().splitlines()]
        assert t["value"] == metrics[-1]["val_accuracy"]
        if t["state"] == "pruned":  # stopped at a step boundary, checkpointed, not at its end
            assert job.status == "pruned" and job.error == "pruned by the tuner"
            assert not Path(job.run_dir, "model.safetensors").exists() and len(metrics) < EPOCHS
            assert list(Path(job.run_dir, "checkpoints").iterdir())
            assert t["epochs"] in (1, 3, 9)  # exactly at an ASHA rung: the trial waited there for the verdict
        else:
            assert job.status == "succeeded" and len(metrics) == EPOCHS and t["epochs"] == EPOCHS
    assert board["epochs_total"] == pytest.approx(sum(t["epochs"] for t in trials))

    # continue a pruned trial: it resumes from its checkpoint to the model of an uninterrupted run
    target = pruned[0]
    r = _run("tune", "continue", sid, target["trial"], "--wait", home=home)
    assert r.returncode == 0, r.stderr
    board = _show(home, sid)
    rows = {t["trial"]: t for t in board["trials"]}
    new = [t for t in board["trials"] if t["continues"] == target["trial"]]
    assert len(new) == 1 and new[0]["state"] == "complete" and new[0]["params"] == target["params"]
    assert rows[target["trial"]]["continued_as"] == new[0]["trial"] and new[0]["job"] == target["job"]
    assert new[0]["epochs"] == pytest.approx(EPOCHS - target["epochs"], abs=1e-3)
    assert "resuming from step-" in Path(target["run_dir"], "log.txt").read_text()
    direct = tmp_path / "direct"
    r = _run("train", Path(target["run_dir"]) / "config.toml", "--run-dir", direct, "--threads", CORES, home=home)
    assert r.returncode == 0, r.stderr
    assert _weights(Path(target["run_dir"]) / "model.safetensors") == _weights(direct / "model.safetensors")
    # a trial is continued once; a complete one not at all
    r = _run("tune", "continue", sid, target["trial"], home=home)
    assert r.returncode == 2 and "already continued, as trial" in r.stderr
    r = _run("tune", "continue", sid, best["trial"], home=home)
    assert r.returncode == 2 and "only pruned trials can be continued" in r.stderr
    worker.kill(signal.SIGTERM)
    # the table form
    r = _run("tune", "show", sid, home=home)
    assert r.returncode == 0 and f"continues {target['trial']}" in r.stdout and "best: trial" in r.stdout


# ---- crash safety ------------------------------------------------------------------------------------
@pytest.mark.fault
def test_a_controller_killed_at_random_moments_loses_and_repeats_no_trial(setup, big, tmp_path):
    home = tmp_path / "home"
    space = '["optimizer.lr"]\nlow = 1e-6\nhigh = 0.05\nlog = true\n["model.hidden"]\nchoices = [[16], [32]]\n'
    config, space_path = setup(epochs=5, space=space, data_path=big)
    rng = random.Random(13)
    worker = Proc(home, tmp_path / "worker.log", "worker", "--concurrency", "2", "--lease-seconds", "3")
    log = tmp_path / "tune.log"
    ctl = Proc(home, log, "tune", config, "--space", space_path, "--trials", "7", "--parallel", "3",
               "--sampler", "random", "--pruner", "median", "--wait")
    sid = _study_id(log)
    kills, start = 0, 0
    for _ in range(4):  # kill the controller at random moments, restart it each time
        # Each after 1-3 trial events of this controller and a short random delay (a kill may land
        # between a trial's ask and its job's submission), not after a fixed sleep (a fast machine
        # ended the study first). The first two land, however fast the machine: by then at most 6
        # of the 7 trials have been asked, so the study goes on for at least a trial's training.
        target, deadline = start + rng.randint(1, 3), time.monotonic() + 600
        while ctl.proc.poll() is None and _events(log) < target:
            assert time.monotonic() < deadline, f"no trial event in 600 s:\n{ctl.output()[-3000:]}"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        if ctl.proc.poll() is not None:
            break
        ctl.kill()
        kills += 1
        if kills == 2:  # and a worker, with its jobs, once
            worker.kill()
            worker = Proc(home, tmp_path / "worker2.log", "worker", "--concurrency", "2", "--lease-seconds", "3")
        start = _events(log)  # the killed controller's events are all in the log
        ctl = Proc(home, log, "tune", "resume", sid)
    assert ctl.wait() == 0, ctl.output()[-3000:]
    assert kills >= 2, "the study ended before the controller could be killed twice"
    worker.kill(signal.SIGTERM)

    trials = _optuna_trials(home, sid)
    jobs = [j for j in Queue(home, create=False).list() if j.name.startswith(f"tune-{sid}-")]
    names = [j.name for j in jobs]
    assert len(trials) == 7 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), \
        [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert len(names) == len(set(names)) == 7, names  # no job submitted twice
    assert set(names) == {f"tune-{sid}-trial-{t.number}" for t in trials}  # one-to-one
    by_name = {j.name: j for j in jobs}
    for t in trials:
        job = by_name[f"tune-{sid}-trial-{t.number}"]
        metrics = [json.loads(line) for line in Path(job.run_dir, "metrics.jsonl").read_text().splitlines()]
        assert t.value == metrics[-1]["val_accuracy"]  # each evaluated once, by its own run
        assert job.status == ("succeeded" if t.state.name == "COMPLETE" else "pruned")
        cfg = Path(job.run_dir, "config.toml").read_text()
        assert f"lr = {t.params['optimizer.lr']!r}" in cfg
    board = _show(home, sid)
    assert board["done"] and len(board["trials"]) == 7 and board["controller"] == "stopped"
    # resuming an ended study asks nothing more; a second controller of a study is refused
    again = Proc(home, tmp_path / "again.log", "tune", "resume", sid)
    assert again.wait() == 0 and len(_optuna_trials(home, sid)) == 7
    from deltaprop.jobs.study import StudyDir
    with StudyDir(sid, home).lock():
        r = _run("tune", "resume", sid, home=home)
    assert r.returncode == 2 and f"study {sid} is being run by another controller" in r.stderr


# ---- Ray ------------------------------------------------------------------------------------------------
@pytest.mark.fault
def test_a_study_through_a_real_ray_cluster(setup, tmp_path, ray_head):
    from test_ray import RAY_AUTH, _base_env
    home = tmp_path / "home"
    config, space = setup(epochs=3, space='["optimizer.lr"]\nchoices = [0.02, 0.005]\n')
    env = _base_env() | RAY_AUTH | {"DELTAPROP_HOME": str(home), "NUMBA_CACHE_DIR": NUMBA_CACHE_DIR}
    tune = subprocess.Popen([DELTAPROP, "tune", str(config), "--space", str(space), "--sampler", "grid",
                             "--pruner", "none", "--wait"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    worker = subprocess.Popen([DELTAPROP, "worker", "--executor", "ray", "--address", ray_head, "--concurrency", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = tune.communicate(timeout=900)
    finally:
        worker.send_signal(signal.SIGTERM)
        wout, _ = worker.communicate(timeout=300)
    assert tune.returncode == 0, out
    sid = out.splitlines()[0].strip()
    board = _show(home, sid)
    assert [t["state"] for t in board["trials"]] == ["complete", "complete"], (board, wout)
    assert {t["params"]["optimizer.lr"] for t in board["trials"]} == {0.02, 0.005}
    for t in board["trials"]:
        assert "ray node" in Path(t["run_dir"], "log.txt").read_text()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    from test_ray import RAY_AUTH, _base_env, _start_head, _stop_head
    tmp = tmp_path_factory.mktemp("ray")
    env = _base_env() | RAY_AUTH
    yield _start_head(tmp, env)
    _stop_head(tmp, env)


# ---- the benchmark's harness (not the benchmark: that is `make bench`) ----------------------------
def test_bench_tune_arguments_and_table():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_tune", Path(__file__).parents[1] / "bench" / "tune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args([])
    assert args.datasets == ["digits", "fashion"] and args.epochs == 9
    assert bench.parse_args(["--datasets", "digits", "--epochs", "3"]).datasets == ["digits"]
    for bad in (["--datasets", "mnist"], ["--epochs", "0"]):
        with pytest.raises(SystemExit) as info:
            bench.parse_args(bad)
        assert info.value.code == 2
    row = {"best_val_accuracy": 0.9, "epochs": 243, "wall_s": 100.0, "trials": 27, "pruned": 0}
    text = bench.table({"digits": {"grid": row, "tune": dict(row, best_val_accuracy=0.895, epochs=81,
                                                               wall_s=50.0, pruned=18)}})
    assert "| digits | tune TPE + ASHA | 27 (18) | 89.50 % | 81 | 50 s |" in text
    assert "| digits | tune / grid | | -0.50 points | 0.33x | 0.50x |" in text
    # the spaces it writes are valid spaces of the same grid
    import tomllib

    from deltaprop.jobs.space import parse_space
    grid = parse_space(tomllib.loads(bench.GRID_SPACE), "grid")
    assert [len(p.grid()) for p in grid] == [3, 3, 3]
    tpe = {p.key: p for p in parse_space(tomllib.loads(bench.TPE_SPACE), "tpe")}
    assert tpe["optimizer.lr"].log and tpe["model.hidden"].choices == tuple(bench.HIDDEN)
