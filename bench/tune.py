"""Grid search against `deltaprop tune` (TPE + ASHA) at equal trial count: best validation accuracy,
epochs spent and wall time of each, on digits and on a 10k-row Fashion-MNIST subset.

    python bench/tune.py [--datasets digits,fashion] [--epochs 9] [--json]    # also run by `make bench`

Each search runs in a fresh DELTAPROP_HOME with one `deltaprop worker --concurrency 2`; the grid is
lr x hidden x batch size (3 x 3 x 3 = 27 trials, `--sampler grid --pruner none`), the tuned study
is 27 trials of TPE over a log-uniform lr range and the same hidden and batch choices, with ASHA
(reduction factor 3, rungs at epochs 1 and 3 of 9). Epochs spent are what the runs trained
(`tune show --json`'s `epochs_total`: a pruned trial counts the epochs it ran). Wall time includes
each job's process start (about 2-4 s on a 2-core machine), which dominates on data this small.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DELTAPROP = str(Path(sys.executable).with_name("deltaprop"))
LRS = [3e-4, 1e-3, 3e-3]
HIDDEN = [[32], [128], [256, 128]]
BATCHES = [32, 64, 128]
CONFIG = """
[model]
hidden = [128]
[data]
train = "{data}"
test = ""
validation_fraction = 0.2
scale = "unit"
[training]
epochs = {epochs}
batch_size = 64
seed = 0
[optimizer]
name = "adam"
lr = 0.001
[checkpoint]
every_epochs = 1
keep = 1
"""


def _toml(v) -> str:
    return "[" + ", ".join(_toml(x) for x in v) + "]" if isinstance(v, list) else repr(v)


GRID_SPACE = (f'["optimizer.lr"]\nchoices = {_toml(LRS)}\n["model.hidden"]\nchoices = {_toml(HIDDEN)}\n'
              f'["training.batch_size"]\nchoices = {_toml(BATCHES)}\n')
TPE_SPACE = (f'["optimizer.lr"]\nlow = {min(LRS) / 3}\nhigh = {max(LRS) * 3}\nlog = true\n'
             f'["model.hidden"]\nchoices = {_toml(HIDDEN)}\n["training.batch_size"]\nchoices = {_toml(BATCHES)}\n')


def dataset(name: str, out: Path) -> Path:
    """digits (scikit-learn's bundled 1797 x 64) or the first 10,000 Fashion-MNIST training rows."""
    path = out / f"{name}.npz"
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        np.savez(path, X=d.data.astype(np.float32), y=d.target)
    elif name == "fashion":
        import deltaprop
        ds = deltaprop.load_dataset("fashion-mnist:train")
        np.savez(path, X=np.asarray(ds.X[:10_000]), y=np.asarray(ds.y[:10_000]))
    else:
        raise SystemExit(f"unknown dataset {name!r}: use digits or fashion")
    return path


def search(kind: str, data: Path, epochs: int, work: Path) -> dict:
    """One search in its own DELTAPROP_HOME: returns best value, epochs spent, wall time, trials."""
    home = work / f"home-{data.stem}-{kind}"
    config, space = work / f"{data.stem}.toml", work / f"{data.stem}-{kind}.toml"
    config.write_text(CONFIG.format(data=data, epochs=epochs))
    space.write_text(GRID_SPACE if kind == "grid" else TPE_SPACE)
    env = dict(os.environ, DELTAPROP_HOME=str(home), PYTHONUNBUFFERED="1")
    args = ["tune", str(config), "--space", str(space), "--trials", str(len(LRS) * len(HIDDEN) * len(BATCHES)),
            "--parallel", "2", "--wait"]
    args += ["--sampler", "grid", "--pruner", "none"] if kind == "grid" else \
        ["--sampler", "tpe", "--pruner", "asha", "--reduction-factor", "3", "--startup-trials", "8"]
    t0 = time.monotonic()
    with open(work / f"worker-{data.stem}-{kind}.log", "wb") as log:
        worker = subprocess.Popen([DELTAPROP, "worker", "--concurrency", "2"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        tune = subprocess.run([DELTAPROP, *args], env=env, capture_output=True, text=True, timeout=7200)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=300)
    wall = time.monotonic() - t0
    if tune.returncode != 0:
        raise SystemExit(f"{kind} on {data.stem} failed:\n{tune.stderr[-3000:]}")
    study = tune.stdout.splitlines()[0].strip()
    show = subprocess.run([DELTAPROP, "tune", "show", study, "--json"], env=env, capture_output=True, text=True)
    board = json.loads(show.stdout)
    states = [t["state"] for t in board["trials"]]
    return {"best_val_accuracy": board["best_value"], "epochs": board["epochs_total"], "wall_s": round(wall, 1),
            "trials": len(states), "pruned": states.count("pruned"), "best_params": board["best"]["params"]}


def table(results: dict) -> str:
    lines = ["| dataset | search | trials (pruned) | best val accuracy | epochs spent | wall time |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        g, t = r["grid"], r["tune"]
        for label, x in (("grid", g), ("tune TPE + ASHA", t)):
            lines.append(f"| {name} | {label} | {x['trials']} ({x['pruned']}) | {100 * x['best_val_accuracy']:.2f} % "
                         f"| {x['epochs']:g} | {x['wall_s']:.0f} s |")
        gap = 100 * (g["best_val_accuracy"] - t["best_val_accuracy"])
        lines.append(f"| {name} | tune / grid | | {-gap:+.2f} points | {t['epochs'] / g['epochs']:.2f}x "
                     f"| {t['wall_s'] / g['wall_s']:.2f}x |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,fashion", help="comma-separated: digits, fashion")
    p.add_argument("--epochs", type=int, default=9, help="epochs of a full trial (ASHA's last rung)")
    p.add_argument("--json", action="store_true", help="print the results as JSON after the table")
    p.add_argument("--keep", type=Path, default=None, help="keep the homes and logs in this directory")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in args.datasets:
        if d not in ("digits", "fashion"):
            p.error(f"--datasets: unknown dataset {d!r} (use digits, fashion)")
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deltaprop-bench-tune-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in args.datasets:
            data = dataset(name, work)
            results[name] = {kind: search(kind, data, args.epochs, work) for kind in ("grid", "tune")}
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
