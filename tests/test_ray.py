"""The Ray executor on a real local Ray cluster (`ray start --head` on 127.0.0.1); no mocks.

A small sweep runs through the cluster and every result matches a direct `deltaprop train`; a Ray
worker killed mid-job makes the attempt fail, and the retry resumes from the checkpoint to the
same weights.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deltaprop.service.checkpoint import list_checkpoints, read_safetensors

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    port = _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    env = dict(os.environ, RAY_TMPDIR=str(tmp))
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    yield f"127.0.0.1:{port}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env, timeout=120)


@pytest.fixture
def env(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X @ rng.normal(size=(16, 3))).argmax(1))
    (tmp_path / "c.toml").write_text(CONFIG.format(data=tmp_path / "d.npz"))
    return dict(os.environ, DELTAPROP_HOME=str(tmp_path / "home"))


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
    jobs = json.loads(_cli(["jobs", "list", "--json"], env).stdout)
    assert len(jobs) == 4 and all(j["status"] == "succeeded" for j in jobs), jobs
    for job in jobs:
        cfg = (Path(job["run_dir"]) / "config.toml").read_text()
        lr = [l for l in cfg.splitlines() if l.startswith("lr = ")][0].split(" = ")[1]
        hidden = [l for l in cfg.splitlines() if l.startswith("hidden = ")][0].split(" = ")[1].replace(" ", "")
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
    job_id = int(_cli(["submit", str(tmp_path / "c.toml")], env).stdout.strip())
    run_dir = json.loads(_cli(["jobs", "list", "--json"], env).stdout)[0]["run_dir"]
    worker = subprocess.Popen([str(BIN / "deltaprop"), "worker", "--executor", "ray", "--address", ray_head,
                               "--until-empty"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    deadline = time.monotonic() + 300
    while not list_checkpoints(Path(run_dir) / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.05)
    child = _job_process(run_dir)
    assert child is not None
    ray_worker = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    os.kill(ray_worker, signal.SIGKILL)
    out, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, out
    job = json.loads(_cli(["jobs", "show", str(job_id)], env).stdout.split("\nlast epoch")[0])
    assert job["status"] == "succeeded" and job["attempts"] == 2, (job, out)
    log = (Path(run_dir) / "log.txt").read_text()
    assert "resuming from step-" in log
    assert _weights(Path(run_dir) / "model.safetensors") == _direct(tmp_path, env, [])
