"""Memory benchmarks: peak RSS while training Fashion-MNIST beside PyTorch's, and a
memory-mapped .npy dataset 3x larger than the memory a cgroup gives the process.

    .venv/bin/python bench/memory.py rss            # needs Fashion-MNIST; PyTorch optional
    .venv/bin/python bench/memory.py mmap [--limit-mb 256]   # needs root (cgroup v1 or v2)

Each measurement runs in its own process; RSS is the child's ru_maxrss.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable

BASELINE = "import deltaprop.training.trainer, deltaprop.plugins.manager as m; m.get_registry()"
TORCH_BASELINE = "import torch, numpy"
TORCH_TRAIN = r"""
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from deltaprop.io.datasets import load_dataset
torch.set_num_threads(2)
ds = load_dataset("fashion-mnist:train")
X = torch.from_numpy(np.asarray(ds.X, np.float32) / 255.0); y = torch.from_numpy(ds.y)
net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
for epoch in range(2):
    perm = torch.randperm(len(X))
    for i in range(0, len(X), 128):
        idx = perm[i:i + 128]
        opt.zero_grad(); F.cross_entropy(net(X[idx]), y[idx]).backward(); opt.step()
"""


def peak_rss_mb(cmd: list[str], env=None) -> float:
    """Peak RSS of a child process (MiB), via wait4's rusage."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-500:]}")
    return usage.ru_maxrss / 1024


def rss(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = HERE.parent / "examples" / "fashion-mnist.toml"
        train = [PY, "-m", "deltaprop.cli.main", "train", str(cfg), "--run-dir", f"{tmp}/run",
                 "--set", "training.epochs=2"]
        out = {"deltaprop_baseline_mb": peak_rss_mb([PY, "-c", BASELINE]),
               "deltaprop_train_mb": peak_rss_mb(train)}
    # dataset as float32 + model + Adam state (2 buffers), in MiB
    params = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    budget = (60000 * 784 * 4 + 3 * params * 4) / 2**20
    out["dataset_model_optimizer_mb"] = budget
    out["allowed_mb"] = 1.5 * budget + out["deltaprop_baseline_mb"]
    try:
        import torch  # noqa: F401
        out["pytorch_baseline_mb"] = peak_rss_mb([PY, "-c", TORCH_BASELINE])
        out["pytorch_train_mb"] = peak_rss_mb([PY, "-c", TORCH_TRAIN])
    except ImportError:
        out["pytorch"] = "skipped: torch not installed"
    return out


def _cgroup(limit_mb: int) -> tuple[str, str]:
    """(procs file, cleanup dir) of a fresh memory cgroup limited to limit_mb (v2, else v1)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "memory" in v2.read_text():
        d = Path(f"/sys/fs/cgroup/deltaprop-bench-{os.getpid()}")
        d.mkdir()
        (d / "memory.max").write_text(str(limit_mb << 20))
        (d / "memory.swap.max").write_text("0")
        return str(d / "cgroup.procs"), str(d)
    d = Path(f"/sys/fs/cgroup/memory/deltaprop-bench-{os.getpid()}")
    d.mkdir()
    (d / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
    return str(d / "cgroup.procs"), str(d)


def mmap(args) -> dict:
    limit = args.limit_mb
    rows = int(3 * (limit << 20) / (784 * 4)) + 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        import numpy as np
        X = np.lib.format.open_memmap(f"{tmp}/big.npy", mode="w+", dtype=np.float32, shape=(rows, 784))
        rng = np.random.default_rng(0)
        for i in range(0, rows, 65536):
            X[i:i + 65536] = rng.random((min(65536, rows - i), 784), dtype=np.float32)
        X.flush()
        del X
        np.save(f"{tmp}/big_y.npy", rng.integers(0, 10, rows))
        size_mb = os.path.getsize(f"{tmp}/big.npy") / 2**20
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(f'[model]\nhidden = [256, 128]\n[data]\ntrain = "{tmp}/big.npy"\ntest = ""\n'
                       f'[training]\nepochs = 1\nbatch_size = 128\nshuffle = {str(args.shuffle >= 0).lower()}\n'
                       f'shuffle_block = {max(0, args.shuffle)}\n'
                       '[checkpoint]\nevery_epochs = 0\n')

        def run(limited: bool) -> float:
            run_dir = Path(tmp) / f"run{int(limited)}"
            cmd = [PY, "-m", "deltaprop.cli.main", "train", str(cfg), "--run-dir", str(run_dir)]
            if limited:
                procs, d = _cgroup(limit)
                subprocess.run(["sync"])
                Path("/proc/sys/vm/drop_caches").write_text("1\n")
                cmd = ["sh", "-c", f"echo $$ > {procs} && exec " + " ".join(cmd)]
            try:
                subprocess.run(cmd, check=True, capture_output=True)
            finally:
                if limited:
                    time.sleep(0.2)
                    os.rmdir(d)
            line = (run_dir / "metrics.jsonl").read_text().splitlines()[-1]
            return json.loads(line)["samples_per_s"]

        in_memory = run(False)
        limited = run(True)
    return {"limit_mb": limit, "dataset_mb": size_mb, "shuffle": args.shuffle,
            "in_memory_samples_per_s": in_memory, "limited_samples_per_s": limited,
            "ratio": limited / in_memory}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("rss")
    m = sub.add_parser("mmap")
    m.add_argument("--limit-mb", type=int, default=256)
    m.add_argument("--shuffle", type=int, default=-1,
                   help="-1: no shuffle (default); 0: full row shuffle; N: training.shuffle_block = N")
    m.add_argument("--dir", default=None, help="where the big .npy goes (default: $TMPDIR)")
    args = p.parse_args()
    result = rss(args) if args.what == "rss" else mmap(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
