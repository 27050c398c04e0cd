"""The worker (jobs/worker.py) through real `deltaprop` processes and real signals.

Every job here is a small synthetic classification run (3000 x 32 float32, 4 classes, batch 16,
dropout, gradient clipping, a cosine schedule, a checkpoint every 20 steps), so a job takes a few
seconds. Its final weights are compared, byte for byte, with the same config trained directly by
`deltaprop train`:

- SHORT jobs (2 epochs, hidden [160, 64]: layers of several GEMM tiles) against a direct train on
  all the machine's cores (`--threads CORES`: with the default, automatic thread count a busy
  machine can tune a run down to 1 thread), while the worker (concurrency 2) gives each job half
  the cores: the kernels are meant to be thread-count independent.
- LONG jobs (16 epochs, hidden [64], long enough to be caught mid-training) are killed, cancelled
  and drained; they are compared with a direct train at the worker's per-job thread count, so
  these tests check resume exactness only.
"""

import fcntl
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

import pytest
from fixtures.cli import NUMBA_CACHE_DIR, assert_exit, cli

from deltaprop.api import read_config
from deltaprop.io.checkpoints import list_checkpoints
from deltaprop.io.safetensors import read_safetensors
from deltaprop.jobs.queue import Queue

DELTAPROP = str(Path(sys.executable).with_name("deltaprop"))
CORES = len(os.sched_getaffinity(0))
JOB_THREADS = max(1, CORES // 2)  # what `worker --concurrency 2` gives each job
SHORT, LONG, STALL = 2, 16, 200  # epochs
HIDDEN = {SHORT: "[160, 64]", LONG: "[64]", STALL: "[64]"}

CONFIG = """
[model]
hidden = {hidden}
activation = "tanh"
dropout = 0.1
[data]
train = "{data}"
test = ""
validation_fraction = 0.1
[training]
epochs = {epochs}
batch_size = 16
seed = {seed}
clip_grad_norm = 1.0
[optimizer]
name = "adamw"
lr = 0.002
[schedule]
name = "cosine"
warmup_epochs = 0.5
[checkpoint]
every_epochs = 1
every_steps = 20
keep = 2
"""


# ---- helpers ---------------------------------------------------------------------------------------
def _env(home: Path | None = None, threads: int | None = None, **extra) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=NUMBA_CACHE_DIR, PYTHONUNBUFFERED="1")
    for key in ("NUMBA_NUM_THREADS", "DELTAPROP_LOAD_PLUGINS"):
        env.pop(key, None)
    if home is not None:
        env["DELTAPROP_HOME"] = str(home)
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env


def _run(*args, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([DELTAPROP, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


class Worker:
    """A `deltaprop worker` process whose output goes to a file (so a SIGKILL loses none of it)."""

    started: list = []  # every worker of the current test, killed at its end if still running

    def __init__(self, home: Path, log: Path, *args, **extra_env):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([DELTAPROP, "worker", *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                                         env=_env(home, **extra_env))
        Worker.started.append(self)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout=900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker still running after {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.02, proc: Worker | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.proc.returncode}) while waiting for {what}:\n{proc.output()}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _checkpoints(run_dir) -> list[Path]:
    return list_checkpoints(Path(run_dir) / "checkpoints")


def _weights(path: Path) -> dict:
    return {k: v.tobytes() for k, v in read_safetensors(path)[0].items()}


def _metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def _assert_same_run(run_dir, reference: Path, epochs: int) -> None:
    """Final weights byte-identical to the direct train, and each epoch's metrics exactly once."""
    run_dir = Path(run_dir)
    got, want = _weights(run_dir / "model.safetensors"), _weights(reference / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], f"{run_dir}: tensor {name} differs from the direct train {reference}"
    metrics = _metrics(run_dir)
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1)), f"{run_dir}: duplicated or missing epochs"
    assert metrics == _metrics(reference)


def _unlocked(run_dirs) -> bool:
    """No process holds any of these run directories' locks (no orphaned job process)."""
    for run_dir in run_dirs:
        lock = Path(run_dir) / "config.toml"  # the trainer flocks the run's config.toml
        if not lock.exists():
            continue
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # also releases the lock
    return True


def _job_pid(worker: Worker, run_dir) -> int | None:
    """The pid of the worker's child process running `resume RUN_DIR`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == worker.proc.pid and str(run_dir).encode() in cmdline:
            return int(stat.parent.name)
    return None


def _sigterm_pending(pid: int) -> bool:
    """SIGTERM was sent to the (stopped) process and waits for it to continue."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return True
    return False


def _pause_jobs(worker: Worker, run_dirs, timeout: float = 600) -> list[int]:
    """SIGSTOP each job's process the moment its own first checkpoint appears; returns their pids.
    A paused job cannot reach its end before a cancel or drain request gets to it, however fast or
    slow the machine. One poll loop for all the jobs (pausing them one after the other let the
    second train on meanwhile), and each process is found while it starts up, so that the pause
    follows the checkpoint by a poll and a signal; a job that ended before it fails here, not later."""
    run_dirs = [str(d) for d in run_dirs]
    pids: dict[str, int] = {}
    paused: dict[str, int] = {}
    deadline, scanned = time.monotonic() + timeout, 0.0
    while len(paused) < len(run_dirs):
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}) before its jobs were paused:\n"
                                 f"{worker.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for checkpoints in {run_dirs}")
        if time.monotonic() - scanned > 0.1:  # a /proc scan now and then, a checkpoint look every poll
            scanned = time.monotonic()
            for d in run_dirs:
                if d not in pids and (pid := _job_pid(worker, d)):
                    pids[d] = pid
        for d in run_dirs:
            if d not in paused and _checkpoints(d):
                pid = pids.get(d) or _job_pid(worker, d)
                if pid:
                    os.kill(pid, signal.SIGSTOP)
                    paused[d] = pid
        time.sleep(0.002)
    for d in run_dirs:
        assert not Path(d, "model.safetensors").exists(), f"{d}: the job reached its end before it was paused"
    return [paused[d] for d in run_dirs]


def _submit(home: Path, config: Path, name: str) -> int:
    result = _run("submit", config, "--name", name, env=_env(home), timeout=600)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


# ---- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_stray_workers():
    """A failing test leaves no worker behind (its job processes die with it: PR_SET_PDEATHSIG)."""
    yield
    while Worker.started:
        w = Worker.started.pop()
        if w.proc.poll() is None:
            w.kill()


@pytest.fixture(scope="module")
def configs(data, tmp_path_factory):
    """configs(seed, epochs) -> the path of that config file."""
    d = tmp_path_factory.mktemp("configs")

    def make(seed: int, epochs: int) -> Path:
        path = d / f"s{seed}-e{epochs}.toml"
        if not path.exists():
            path.write_text(CONFIG.format(data=data, seed=seed, epochs=epochs, hidden=HIDDEN[epochs]))
        return path

    return make


@pytest.fixture(scope="module")
def refs(configs, tmp_path_factory):
    """refs(seed, epochs, threads=None) -> run dir of `deltaprop train` of that config (trained once
    per module; threads None: the machine's default). `refs.prepare(keys)` trains several at once,
    at most CORES threads busy at a time (so LONG ones at JOB_THREADS train two at a time, as a
    `worker --concurrency 2` runs its jobs). `refs.window(key)`: the seconds that reference trained
    after its first checkpoint (until its model.safetensors appeared), measured on this machine."""
    root = tmp_path_factory.mktemp("refs")
    done: dict = {}
    windows: dict = {}

    def _dir(seed, epochs, threads):
        return root / f"s{seed}-e{epochs}-t{threads or 'default'}"

    def prepare(keys):
        pending = [k for k in dict.fromkeys(keys) if k not in done]
        running: dict = {}  # key -> [process, log path, first checkpoint seen at, model seen at]
        while pending or running:
            while pending and (not running or sum(k[2] or CORES for k in running) + (pending[0][2] or CORES) <= CORES):
                key = pending.pop(0)
                seed, epochs, threads = key
                log = root / f"{_dir(*key).name}.log"
                with open(log, "wb") as out:  # a file: a pipe nobody reads while polling could fill up
                    proc = subprocess.Popen([DELTAPROP, "train", str(configs(seed, epochs)), "--run-dir",
                                             str(_dir(*key)), *(["--threads", str(threads)] if threads else [])],
                                            env=_env(root / "home", threads), stdout=out, stderr=subprocess.STDOUT)
                running[key] = [proc, log, None, None]
            for key, r in list(running.items()):
                proc, log, first, model = r
                code = proc.poll()
                now = time.monotonic()
                if first is None and _checkpoints(_dir(*key)):
                    r[2] = first = now
                if model is None and (_dir(*key) / "model.safetensors").exists():
                    r[3] = model = now
                if code is not None:
                    assert code == 0, f"direct train {key} failed:\n{log.read_text(errors='replace')}"
                    assert first is not None and model is not None, f"direct train {key}: no checkpoint or model"
                    done[key], windows[key] = _dir(*key), model - first
                    del running[key]
            time.sleep(0.002)

    def get(seed, epochs, threads=None):
        prepare([(seed, epochs, threads)])
        return done[(seed, epochs, threads)]

    get.prepare = prepare
    get.window = lambda key: windows[key]
    return get


# ---- end to end --------------------------------------------------------------------------------------------
@pytest.mark.fault
def test_worker_runs_every_job_like_a_direct_train(tmp_path, configs, refs):
    """`deltaprop worker --concurrency 2 --until-empty`: all jobs succeed, each with the weights of
    `deltaprop train` of the same config, although the job ran with half the threads."""
    home = tmp_path / "home"
    seeds = (11, 12, 13)
    ids = [_submit(home, configs(s, SHORT), f"e2e-{s}") for s in seeds]
    assert ids == [1, 2, 3]
    worker = Worker(home, tmp_path / "worker.log", "--concurrency", "2", "--until-empty")
    assert worker.wait() == 0, worker.output()
    refs.prepare([(s, SHORT, CORES) for s in seeds])  # after: 2-thread runs are slow on a busy machine
    out = worker.output()
    assert f"concurrency 2, {JOB_THREADS} thread(s) per job" in out and "Traceback" not in out
    q = Queue(home, create=False)
    for job_id, seed in zip(ids, seeds):
        job = q.get(job_id)
        assert (job.status, job.attempts, job.error) == ("succeeded", 1, None), job
        assert len(re.findall(rf"^job {job_id}: succeeded", out, re.M)) == 1
        reference = refs(seed, SHORT, CORES)
        job_threads = read_safetensors(_checkpoints(job.run_dir)[-1])[1]["threads"]
        ref_threads = read_safetensors(_checkpoints(reference)[-1])[1]["threads"]
        assert (job_threads, ref_threads) == (JOB_THREADS, CORES)
        _assert_same_run(job.run_dir, reference, SHORT)
        logs = _run("jobs", "logs", job_id, env=_env(home), timeout=600)
        assert logs.returncode == 0 and "--- attempt 1 on" in logs.stdout and "done:" in logs.stdout
    q.close()


# ---- THE fault test ---------------------------------------------------------------------------------------
@pytest.mark.fault
def test_sigkilled_workers_lose_and_duplicate_nothing(tmp_path, configs, refs):
    """Four jobs; `worker --concurrency 2 --lease-seconds 3` SIGKILLed at random moments, four times,
    each time a new worker after it; then one with --until-empty. Every job succeeds exactly once,
    with the weights of an uninterrupted direct train.

    Each kill comes after a new checkpoint, with a random delay within an eighth of the time a job
    trains after its first checkpoint on this machine (its direct train, two at a time as the
    worker runs them): a worker's life adds at most that to a job, so however fast the machine,
    four lives cannot finish one, and every kill lands mid-run. (A fixed 0-1 s delay let a fast
    machine finish the ~1 s jobs after fewer than three kills.)"""
    home = tmp_path / "home"
    seeds = (1, 2, 3, 4)
    q = Queue(home)
    # Each kill spends an attempt of the jobs it interrupts (their leases expire): allow enough.
    # (`deltaprop submit` has no --max-attempts; this is what it does, with a larger limit.)
    jobs = [q.submit(f"fault-{s}", read_config(configs(s, LONG)).to_toml(), max_attempts=20) for s in seeds]
    run_dirs = [j.run_dir for j in jobs]
    refs.prepare([(s, LONG, JOB_THREADS) for s in seeds])
    window = min(refs.window((s, LONG, JOB_THREADS)) for s in seeds)

    def snapshot() -> set:
        return {p for d in run_dirs for p in _checkpoints(d)}

    def all_done() -> bool:
        return all(j.status == "succeeded" for j in q.list())

    rng = random.Random(20240611)
    workers, kills, target = [], 0, 4
    while kills < target and not all_done():
        seen = snapshot()
        w = Worker(home, tmp_path / f"worker{len(workers)}.log", "--concurrency", "2", "--lease-seconds", "3")
        workers.append(w)
        # wait for this worker's progress: a checkpoint written during its life (the first time: any)
        _wait_for(lambda: (snapshot() - seen) or all_done(), 600, "a new checkpoint", poll=0.002, proc=w)
        time.sleep(rng.uniform(0.0, window / 8))
        if w.proc.poll() is not None:
            raise AssertionError(f"worker died on its own:\n{w.output()}")
        w.kill()
        kills += 1
        # the worker's job processes die with it (PR_SET_PDEATHSIG) and release their run dirs
        _wait_for(lambda: _unlocked(run_dirs), 300, "the killed worker's job processes to exit")
    assert kills >= 3, f"only {kills} kills before all jobs were done (window {window:.3f} s)"

    final = Worker(home, tmp_path / f"worker{len(workers)}.log", "--concurrency", "2", "--lease-seconds", "3",
                   "--until-empty")
    workers.append(final)
    assert final.wait(timeout=900) == 0, final.output()
    outputs = "".join(w.output() for w in workers)
    assert "Traceback" not in outputs

    lost = dup = 0
    resumed_from_checkpoint = 0
    for job, seed in zip(jobs, seeds):
        job = q.get(job.id)
        completions = len(re.findall(rf"^job {job.id}: succeeded", outputs, re.M))
        lost += job.status != "succeeded" or completions == 0
        dup += max(0, completions - 1)
        assert (job.status, job.error, job.worker) == ("succeeded", None, None), job
        assert completions == 1, f"job {job.id} recorded as succeeded {completions} times"
        _assert_same_run(job.run_dir, refs(seed, LONG, JOB_THREADS), LONG)
        log = Path(job.run_dir, "log.txt").read_text()
        assert 1 <= log.count("--- attempt ") <= job.attempts
        resumed_from_checkpoint += "resuming from step-" in log
    summary = f"jobs lost {lost}, duplicated completions {dup}"
    print(f"\n{summary} ({kills} SIGKILLs, {len(jobs)} jobs, {resumed_from_checkpoint} resumed from a checkpoint)")
    assert summary == "jobs lost 0, duplicated completions 0"
    assert resumed_from_checkpoint >= 1
    assert sum(q.get(j.id).attempts for j in jobs) > len(jobs)  # kills did interrupt attempts
    q.close()


# ---- a job that crashes its process -----------------------------------------------------------------------
CRASH_HOOK = """
import os, signal, sys
# In the job process `python -m deltaprop.cli.main resume RUN_DIR --threads N` only (argv is
# ['-m', 'resume', RUN_DIR, '--threads', N] while site runs): die the way a broken native extension would.
if sys.argv[1:3] == ["resume", os.environ.get("CRASH_RUN_DIR")]:
    os.kill(os.getpid(), signal.SIGSEGV)
"""


@pytest.mark.fault
def test_crashing_jobs_fail_after_max_attempts_and_the_worker_lives_on(tmp_path, configs, refs):
    home = tmp_path / "home"
    bad_config = _submit(home, configs(11, SHORT), "bad-config")
    segfault = _submit(home, configs(11, SHORT), "segfault")
    good = _submit(home, configs(11, SHORT), "good")
    q = Queue(home, create=False)
    Path(q.get(bad_config).run_dir, "config.toml").write_text("[training\nepochs = \n")  # broken after submit
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CRASH_HOOK)
    pythonpath = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    worker = Worker(home, tmp_path / "worker.log", "--concurrency", "2", "--until-empty",
                    PYTHONPATH=pythonpath, CRASH_RUN_DIR=q.get(segfault).run_dir)
    assert worker.wait() == 0, worker.output()
    out = worker.output()
    assert "Traceback" not in out

    job = q.get(bad_config)
    assert (job.status, job.attempts, job.max_attempts) == ("failed", 3, 3)
    assert job.error.startswith("exit code 2: ") and "config.toml is not valid TOML" in job.error
    assert job.finished_at is not None and job.worker is None
    job = q.get(segfault)
    assert (job.status, job.attempts) == ("failed", 3)
    assert job.error.startswith(f"exit code -{int(signal.SIGSEGV)}")
    assert Path(job.run_dir, "log.txt").read_text().count("--- attempt ") == 3
    job = q.get(good)
    assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)
    _assert_same_run(job.run_dir, refs(11, SHORT, CORES), SHORT)
    result = _run("jobs", "show", bad_config, env=_env(home), timeout=600)
    assert result.returncode == 0 and '"status": "failed"' in result.stdout and "not valid TOML" in result.stdout
    q.close()


# ---- sweep --wait: the leaderboard ------------------------------------------------------------------------
@pytest.mark.fault
def test_sweep_wait_prints_every_run_on_the_leaderboard(tmp_path, data):
    """`deltaprop sweep --wait` (a real process) waits while a worker runs the grid, then prints a
    leaderboard with every job, its name (grid values in brackets, not eaten as rich markup) and its
    final test accuracy, best first."""
    home = tmp_path / "home"
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\nhidden = [16]\n[data]\ntrain = "{data}"\ntest = "{data}"\n'
                      "[training]\nepochs = 1\nbatch_size = 64\n[checkpoint]\nevery_epochs = 0\n")
    out_path = tmp_path / "sweep.out"
    with open(out_path, "wb") as out:
        sweep = subprocess.Popen([DELTAPROP, "sweep", str(config), "--grid", "optimizer.lr=0.02,0.001",
                                  "--grid", "training.seed=1,2", "--wait"], stdout=out, stderr=subprocess.STDOUT,
                                 env=_env(home, COLUMNS="250"))
    try:
        _wait_for(lambda: "submitted 4 jobs" in out_path.read_text(), 600, "the sweep to submit its jobs")
        worker = Worker(home, tmp_path / "worker.log", "--concurrency", "2", "--until-empty")
        assert worker.wait() == 0, worker.output()
        assert sweep.wait(timeout=600) == 0, out_path.read_text()
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    out = out_path.read_text()
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert "leaderboard" in out and len(rows) == 4, out
    q = Queue(home, create=False)
    accuracy = {}
    for job in q.list():
        assert job.status == "succeeded", job
        accuracy[job.id] = _metrics(job.run_dir)[-1]["test_accuracy"]
        row = next(r for r in rows if r.split("│")[2].strip() == str(job.id))
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert cells[2:5] == [job.name, "succeeded", f"{accuracy[job.id]:.4f}"], (cells, out)
        assert "[" in job.name and "training.seed=" in cells[2]
    ranked = [int(r.split("│")[2]) for r in rows]
    assert [int(r.split("│")[1]) for r in rows] == [1, 2, 3, 4]
    assert [accuracy[i] for i in ranked] == sorted(accuracy.values(), reverse=True)
    q.close()


# ---- a job that cannot start ----------------------------------------------------------------------------
@pytest.mark.fault
def test_jobs_that_cannot_start_fail_and_the_worker_lives_on(tmp_path, configs):
    """A job whose run directory vanished after submit is failed at once (no retry: its config and
    checkpoints are gone), naming the path, and the directory is not recreated; a job whose log
    cannot be opened fails its attempts; the worker goes on and runs the good job."""
    home = tmp_path / "home"
    missing = _submit(home, configs(11, SHORT), "missing-dir")
    no_log = _submit(home, configs(11, SHORT), "log-is-a-directory")
    good = _submit(home, configs(11, SHORT), "good")
    q = Queue(home, create=False)
    missing_dir = Path(q.get(missing).run_dir)
    shutil.rmtree(missing_dir)
    Path(q.get(no_log).run_dir, "log.txt").mkdir()
    worker = Worker(home, tmp_path / "worker.log", "--concurrency", "2", "--until-empty")
    assert worker.wait() == 0, worker.output()
    out = worker.output()
    assert "Traceback" not in out

    job = q.get(missing)
    assert (job.status, job.attempts, job.worker, job.lease_until) == ("failed", 1, None, None), out
    assert f"run directory {missing_dir} is missing" in job.error and f"jobs retry {missing}" in job.error
    assert f"job {missing}: failed (run directory {missing_dir} is missing" in out
    assert not missing_dir.exists()
    job = q.get(no_log)
    assert (job.status, job.attempts) == ("failed", 3), out
    assert job.error.startswith("could not start the job: [Errno 21] Is a directory") and "log.txt" in job.error
    job = q.get(good)
    assert (job.status, job.attempts, job.error) == ("succeeded", 1, None), out
    assert Path(job.run_dir, "model.safetensors").exists()
    q.close()


# ---- cancel, then retry ---------------------------------------------------------------------------------------
@pytest.mark.fault
def test_cancel_a_running_job_then_retry_is_bit_exact(tmp_path, configs, refs, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DELTAPROP_HOME", str(home))
    job_id = _submit(home, configs(1, LONG), "cancel-me")
    q = Queue(home, create=False)
    run_dir = q.get(job_id).run_dir
    worker = Worker(home, tmp_path / "worker1.log", "--concurrency", "2", "--lease-seconds", "3", "--until-empty")
    [pid] = _pause_jobs(worker, [run_dir])
    result = cli("jobs", "cancel", job_id)
    assert_exit(result, 0)
    assert f"job {job_id}: cancel requested" in result.output
    # the worker's heartbeat sees the request and sends the job SIGTERM; then let the job go on
    _wait_for(lambda: _sigterm_pending(pid), 600, "the worker to pass the cancel on", proc=worker)
    os.kill(pid, signal.SIGCONT)
    assert worker.wait() == 0, worker.output()  # --until-empty: a cancelled job is not pending
    job = q.get(job_id)
    assert (job.status, job.error, job.attempts) == ("cancelled", "cancelled by user", 1), worker.output()
    assert f"job {job_id}: cancelled" in worker.output()
    assert _checkpoints(run_dir), "a cancelled job keeps a checkpoint"
    assert not Path(run_dir, "model.safetensors").exists(), "the job was not stopped before its end"
    log = Path(run_dir, "log.txt").read_text()
    assert "stopped by SIGTERM" in log and "checkpoint written" in log
    assert len(_metrics(run_dir)) < LONG

    result = cli("jobs", "retry", job_id)
    assert_exit(result, 0)
    assert q.get(job_id).status == "queued"
    refs.prepare([(1, LONG, JOB_THREADS)])
    worker = Worker(home, tmp_path / "worker2.log", "--concurrency", "2", "--lease-seconds", "3", "--until-empty")
    assert worker.wait() == 0, worker.output()
    job = q.get(job_id)
    assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)
    assert "resuming from step-" in Path(run_dir, "log.txt").read_text()
    _assert_same_run(run_dir, refs(1, LONG, JOB_THREADS), LONG)
    q.close()


# ---- SIGTERM drains ---------------------------------------------------------------------------------------------
@pytest.mark.fault
def test_sigterm_drains_running_jobs_back_to_the_queue(tmp_path, configs, refs):
    home = tmp_path / "home"
    seeds = (2, 3)
    ids = [_submit(home, configs(s, LONG), f"drain-{s}") for s in seeds]
    q = Queue(home, create=False)
    run_dirs = [q.get(i).run_dir for i in ids]
    worker = Worker(home, tmp_path / "worker1.log", "--concurrency", "2")  # the default 30 s lease
    pids = _pause_jobs(worker, run_dirs)
    worker.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: all(_sigterm_pending(p) for p in pids), 600, "the worker to pass SIGTERM on", proc=worker)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    assert worker.wait(timeout=600) == 0, worker.output()
    out = worker.output()
    assert "SIGTERM: draining 2 running job(s)" in out and "Traceback" not in out
    for job_id, run_dir in zip(ids, run_dirs):
        job = q.get(job_id)
        assert (job.status, job.attempts, job.worker, job.lease_until) == ("queued", 0, None, None), out
        assert f"job {job_id}: checkpointed and returned to the queue" in out
        assert _checkpoints(run_dir)
        assert not Path(run_dir, "model.safetensors").exists()
        assert "stopped by SIGTERM" in Path(run_dir, "log.txt").read_text()
    assert _unlocked(run_dirs)

    refs.prepare([(s, LONG, JOB_THREADS) for s in seeds])
    worker = Worker(home, tmp_path / "worker2.log", "--concurrency", "2", "--until-empty")
    assert worker.wait() == 0, worker.output()
    for job_id, run_dir, seed in zip(ids, run_dirs, seeds):
        job = q.get(job_id)
        # attempt 1 again: the drained attempt was given back (a lost lease would make this 2)
        assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)
        assert "resuming from step-" in Path(run_dir, "log.txt").read_text()
        _assert_same_run(run_dir, refs(seed, LONG, JOB_THREADS), LONG)
    q.close()


@pytest.mark.fault
def test_a_stalled_worker_does_not_fail_its_job(tmp_path, configs, refs):
    """SIGSTOP a worker for longer than its lease while its 200-epoch job lives on: the next
    worker's attempt waits for the run directory instead of failing ("is in use", which spent
    every attempt and ended the job failed, once with a complete model); the job succeeds with the
    weights of a direct train, and the stalled worker, woken, finds its lease gone.
    The stalled worker's job is paused too until the next attempt is seen waiting for it, then
    trains on to its end: on a fast machine it had ended before that attempt started."""
    home = tmp_path / "home"
    job = _submit(home, configs(21, STALL), "stalled")
    q = Queue(home, create=False)
    a = Worker(home, tmp_path / "a.log", "--lease-seconds", "2", "--until-empty")
    run_dir = _wait_for(lambda: (j := q.get(job)).status == "running" and j.run_dir, 600, "the claim", proc=a)
    [child] = _pause_jobs(a, [run_dir])
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        b = Worker(home, tmp_path / "b.log", "--lease-seconds", "2", "--until-empty")
        _wait_for(lambda: "waiting for it to end" in Path(run_dir, "log.txt").read_text(), 600,
                  "the next attempt to wait for the run directory", proc=b)
        os.kill(child, signal.SIGCONT)  # the stalled worker's job trains on while its worker is stopped
        assert b.wait(timeout=600) == 0, b.output()
    finally:
        try:
            os.kill(child, signal.SIGCONT)
        except ProcessLookupError:
            pass
        os.kill(a.proc.pid, signal.SIGCONT)
    assert a.wait(timeout=120) == 0, a.output()
    final = q.get(job)
    assert (final.status, final.attempts) == ("succeeded", 2), (final, a.output(), b.output())
    log = Path(run_dir, "log.txt").read_text()
    assert "is in use by another process" in log and "waiting for it to end" in log, log
    assert "lease lost" in a.output(), a.output()
    _assert_same_run(run_dir, refs(21, STALL), STALL)
    q.close()


@pytest.mark.fault
def test_sighup_drains_like_sigterm(tmp_path, configs):
    """The terminal a worker runs in closes (SIGHUP): its job checkpoints and goes back to the
    queue without spending an attempt, instead of dying with the worker."""
    home = tmp_path / "home"
    job_id = _submit(home, configs(4, LONG), "hangup")
    q = Queue(home, create=False)
    run_dir = q.get(job_id).run_dir
    worker = Worker(home, tmp_path / "worker.log")
    [pid] = _pause_jobs(worker, [run_dir])
    worker.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: _sigterm_pending(pid), 600, "the worker to pass SIGTERM on", proc=worker)
    os.kill(pid, signal.SIGCONT)
    assert worker.wait(timeout=600) == 0, worker.output()
    assert "SIGHUP: draining 1 running job(s)" in worker.output()
    job = q.get(job_id)
    assert (job.status, job.attempts) == ("queued", 0)
    assert _checkpoints(run_dir) and "stopped by SIGTERM" in Path(run_dir, "log.txt").read_text()
    q.close()
