"""The Ray executor on a real local Ray cluster (`ray start --head` on 127.0.0.1); no mocks.

A small sweep runs through the cluster and every result matches a direct `deltaprop train`; a Ray
worker killed mid-job makes the attempt fail, and the retry resumes from the checkpoint to the
same weights.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from deltaprop.io.checkpoints import list_checkpoints
from deltaprop.io.safetensors import read_safetensors

BIN = Path(sys.executable).parent
CONFIG = """
[model]
hidden = [64]
[data]
train = "{data}"
test = ""
[training]
epochs = 3
batch_size = 16
[optimizer]
name = "adam"
lr = 0.002
[checkpoint]
every_epochs = 1
every_steps = 20
"""
# The jobs that are paused, killed, cancelled or drained train this many epochs of the 2000 rows:
# about a second on a quick machine, a long time next to the poll that pauses them
EPOCHS = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The test cluster's own authentication, whatever ~/.ray holds: token mode with a token of its own,
# given to the head and to every driver through the environment (Ray's highest precedence).
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
RAY_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _start_head(tmp: Path, env: dict, cpus: int = 2) -> str:
    port = _free_port()
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=dict(env, RAY_TMPDIR=str(tmp)), timeout=900)
    return f"127.0.0.1:{port}"


def _stop_head(tmp: Path, env: dict) -> None:
    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=dict(env, RAY_TMPDIR=str(tmp)),
                   timeout=300)


def _base_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in RAY_VARS}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    env = _base_env() | RAY_AUTH
    yield _start_head(tmp, env)
    _stop_head(tmp, env)


def _data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X @ rng.normal(size=(16, 3))).argmax(1))
    (tmp_path / "c.toml").write_text(CONFIG.format(data=tmp_path / "d.npz"))


@pytest.fixture
def env(tmp_path):
    _data(tmp_path)
    return _base_env() | RAY_AUTH | {"DELTAPROP_HOME": str(tmp_path / "home")}


def _cli(args, env, **kw):
    return subprocess.run([str(BIN / "deltaprop"), *args], env=env, capture_output=True, text=True, **kw)


def _weights(path: Path) -> dict:
    return {k: v.tobytes() for k, v in read_safetensors(path)[0].items()}


def _direct(tmp_path, env, sets) -> dict:
    run_dir = tmp_path / ("direct-" + "-".join(sets))
    args = ["train", str(tmp_path / "c.toml"), "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    assert _cli(args, env).returncode == 0
    return _weights(run_dir / "model.safetensors")


@pytest.mark.fault
def test_sweep_through_a_real_ray_cluster(tmp_path, env, ray_head):
    r = _cli(["sweep", str(tmp_path / "c.toml"), "--grid", "optimizer.lr=0.01,0.002",
              "--grid", "model.hidden=[32],[64,32]"], env)
    assert r.returncode == 0, r.stderr
    w = _cli(["worker", "--executor", "ray", "--address", ray_head, "--concurrency", "2", "--until-empty"],
             env, timeout=600)
    assert w.returncode == 0, w.stdout + w.stderr
    assert "concurrency 2, 1 thread(s) per job, executor ray" in w.stdout
    jobs = json.loads(_cli(["jobs", "list", "--json"], env).stdout)
    assert len(jobs) == 4 and all(j["status"] == "succeeded" for j in jobs), jobs
    for job in jobs:
        _assert_num_cpus(job["run_dir"], 1)
        cfg = (Path(job["run_dir"]) / "config.toml").read_text()
        lr = tomllib.loads(cfg)["optimizer"]["lr"]
        hidden = str(tomllib.loads(cfg)["model"]["hidden"]).replace(" ", "")
        expected = _direct(tmp_path, env, [f"optimizer.lr={lr}", f"model.hidden={hidden}"])
        assert _weights(Path(job["run_dir"]) / "model.safetensors") == expected, job["name"]


def _job_process(run_dir: str) -> int | None:
    """pid of the `deltaprop ... resume RUN_DIR` child running this job, if any."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"resume" in cmd and run_dir.encode() in cmd:
            return int(pid)
    return None


@pytest.mark.fault
def test_killed_ray_worker_is_retried_and_resumes(tmp_path, env, ray_head):
    """The job is paused (SIGSTOP) the moment its first checkpoint appears, then its Ray worker is
    SIGKILLed: the job process dies with it (PR_SET_PDEATHSIG is SIGKILL, which a stopped process
    gets too), certainly mid-run. (Polling, then killing the 3-epoch job, once found it ended.)"""
    job_id = int(_cli(["submit", str(tmp_path / "c.toml"), "--set", f"training.epochs={EPOCHS}"], env).stdout)
    run_dir = json.loads(_cli(["jobs", "list", "--json"], env).stdout)[0]["run_dir"]
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as out:
        worker = subprocess.Popen([str(BIN / "deltaprop"), "worker", "--executor", "ray", "--address", ray_head,
                                   "--until-empty"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        [child] = _paused_jobs([run_dir], worker)
        ray_worker = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
        os.kill(ray_worker, signal.SIGKILL)
        assert worker.wait(timeout=900) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    out = log_path.read_text()
    job = json.loads(_cli(["jobs", "show", str(job_id)], env).stdout.split("\nlast epoch")[0])
    assert job["status"] == "succeeded" and job["attempts"] == 2, (job, out)
    log = (Path(run_dir) / "log.txt").read_text()
    assert "resuming from step-" in log
    assert _weights(Path(run_dir) / "model.safetensors") == _direct(tmp_path, env, [f"training.epochs={EPOCHS}"])
    _assert_num_cpus(run_dir, 2)  # concurrency 1 on the 2-CPU cluster: both CPUs, both attempts


def _sigterm_pending(pid: int) -> bool:
    """SIGTERM was sent to the (stopped) process and waits for it to continue."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return True
    return False


def _wait_for(predicate, what: str, timeout: float = 900, worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker is not None and worker.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _paused_jobs(run_dirs, worker, timeout: float = 900) -> list[int]:
    """SIGSTOP each job's process the moment its own first checkpoint appears; returns their pids.
    A paused job cannot reach its end before a kill, cancel or drain gets to it, however fast or
    slow the machine. One poll loop for all the jobs (pausing them one after the other let the
    second train on meanwhile), and each process is found while it starts up, so that the pause
    follows the checkpoint by a poll and a signal; a job that ended before it fails here."""
    pids: dict[str, int] = {}
    paused: dict[str, int] = {}
    deadline, scanned = time.monotonic() + timeout, 0.0
    while len(paused) < len(run_dirs):
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.returncode}) before its jobs were paused")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for checkpoints in {run_dirs}")
        if time.monotonic() - scanned > 0.1:  # a /proc scan now and then, a checkpoint look every poll
            scanned = time.monotonic()
            for d in run_dirs:
                if d not in pids and (pid := _job_process(d)):
                    pids[d] = pid
        for d in run_dirs:
            if d not in paused and list_checkpoints(Path(d) / "checkpoints"):
                pid = pids.get(d) or _job_process(d)
                if pid:
                    os.kill(pid, signal.SIGSTOP)
                    paused[d] = pid
        time.sleep(0.002)
    for d in run_dirs:
        assert not (Path(d) / "model.safetensors").exists(), f"{d}: the job reached its end before it was paused"
    return [paused[d] for d in run_dirs]


@pytest.mark.fault
def test_cancel_and_drain_reach_ray_tasks(tmp_path, env, ray_head):
    """`jobs cancel` of a job running as a Ray task: the task is cancelled (ray.cancel), the job
    process gets SIGTERM, checkpoints and the job is cancelled. SIGTERM to the worker drains: the
    other task's job checkpoints and goes back to the queue without spending an attempt, and a
    new worker resumes it to the weights of a direct train."""
    # 400 epochs of 2000 rows: about a second of training (8 epochs, ~20 ms, once finished before it
    # was paused); both are paused in one poll loop, each as soon as its own checkpoint appears
    ids = [int(_cli(["submit", str(tmp_path / "c.toml"), "--set", f"training.epochs={EPOCHS}"], env).stdout)
           for _ in "ab"]
    jobs = {j["id"]: j for j in json.loads(_cli(["jobs", "list", "--json"], env).stdout)}
    cancel_dir, drain_dir = (jobs[i]["run_dir"] for i in ids)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([str(BIN / "deltaprop"), "worker", "--executor", "ray", "--address", ray_head,
                                   "--concurrency", "2", "--lease-seconds", "5"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        cancel_pid, drain_pid = _paused_jobs([cancel_dir, drain_dir], worker)
        r = _cli(["jobs", "cancel", str(ids[0])], env)
        assert r.returncode == 0 and "cancel requested" in r.stdout, r.stderr
        _wait_for(lambda: _sigterm_pending(cancel_pid), "the cancel to reach the job process", worker=worker)
        os.kill(cancel_pid, signal.SIGCONT)
        show = lambda i: json.loads(_cli(["jobs", "show", str(i)], env).stdout.split("\nlast epoch")[0])  # noqa: E731
        _wait_for(lambda: show(ids[0])["status"] == "cancelled", "the job to be cancelled", worker=worker)
        assert show(ids[1])["status"] == "running"  # the other task is untouched

        worker.send_signal(signal.SIGTERM)
        _wait_for(lambda: _sigterm_pending(drain_pid), "the drain to reach the job process", worker=worker)
        os.kill(drain_pid, signal.SIGCONT)
        assert worker.wait(timeout=900) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    out = log.read_text()
    assert "Traceback" not in out and "SIGTERM: draining 1 running job(s)" in out, out
    job = show(ids[0])
    assert (job["status"], job["error"], job["attempts"]) == ("cancelled", "cancelled by user", 1), out
    job = show(ids[1])
    assert (job["status"], job["attempts"], job["worker"]) == ("queued", 0, None), out
    assert f"job {ids[1]}: checkpointed and returned to the queue" in out
    for run_dir in (cancel_dir, drain_dir):
        text = (Path(run_dir) / "log.txt").read_text()
        assert "stopped by SIGTERM" in text and "checkpoint written" in text, text
        assert list_checkpoints(Path(run_dir) / "checkpoints") and not (Path(run_dir) / "model.safetensors").exists()
        _assert_num_cpus(run_dir, 1)

    w = _cli(["worker", "--executor", "ray", "--address", ray_head, "--until-empty"], env, timeout=600)
    assert w.returncode == 0, w.stdout + w.stderr
    job = show(ids[1])
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert "resuming from step-" in (Path(drain_dir) / "log.txt").read_text()
    assert _weights(Path(drain_dir) / "model.safetensors") == _direct(tmp_path, env, [f"training.epochs={EPOCHS}"])
    assert show(ids[0])["status"] == "cancelled"


def _assert_num_cpus(run_dir, threads: int) -> None:
    """Every Ray attempt of the job was granted num_cpus = its threads (Ray's own accounting,
    `get_assigned_resources()` in the task, on the attempt line), and the job ran that many."""
    log = (Path(run_dir) / "log.txt").read_text()
    granted = re.findall(r"^--- attempt \d+ on ray node .*, num_cpus (\S+) ---$", log, re.M)
    assert granted and set(granted) <= {str(threads)}, log
    ran = {read_safetensors(p)[1]["threads"] for p in list_checkpoints(Path(run_dir) / "checkpoints")}
    assert ran == {threads}


@pytest.mark.fault
def test_a_token_left_by_a_local_ray_run_does_not_lock_out_later_clusters(tmp_path):
    """Ray 2.60: a local `ray.init()` (deltaprop worker --executor ray without --address) writes
    ~/.ray/auth_token; a head started on that machine then requires it, and a driver connecting
    by address sent none ("InvalidAuthToken", then "cannot connect"). The worker now sends the
    machine's token; a wrong one is refused with a message that says which token it sent."""
    _data(tmp_path)
    home = tmp_path / "user-home"  # this test's own ~, so the real one is never touched
    env = _base_env() | {"HOME": str(home), "DELTAPROP_HOME": str(tmp_path / "queue")}
    assert _cli(["submit", str(tmp_path / "c.toml"), "--set", "training.epochs=1"], env).returncode == 0
    short = Path(tempfile.mkdtemp(prefix="r"))  # Ray's socket paths must stay under 108 bytes
    local = _cli(["worker", "--executor", "ray", "--until-empty"], dict(env, RAY_TMPDIR=str(short / "r0")),
                 timeout=600)
    assert local.returncode == 0, local.stdout + local.stderr
    assert (home / ".ray" / "auth_token").is_file()  # what Ray 2.59+ leaves behind

    tmp = short / "r1"
    address = _start_head(tmp, env, cpus=1)
    try:
        assert _cli(["submit", str(tmp_path / "c.toml"), "--set", "training.epochs=1"], env).returncode == 0
        w = _cli(["worker", "--executor", "ray", "--address", address, "--until-empty"], env, timeout=600)
        assert w.returncode == 0, w.stdout + w.stderr
        jobs = json.loads(_cli(["jobs", "list", "--json"], env).stdout)
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs

        bad = _cli(["worker", "--executor", "ray", "--address", address, "--until-empty"],
                   dict(env, RAY_AUTH_TOKEN="0" * 64), timeout=600)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert f"cannot connect to the Ray cluster at {address}" in bad.stderr
        assert "it sent the token from RAY_AUTH_TOKEN" in bad.stderr and "ray get-auth-token" in bad.stderr
    finally:
        _stop_head(tmp, env)
        shutil.rmtree(short, ignore_errors=True)
