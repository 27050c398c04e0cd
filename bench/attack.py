"""Attack deltaprop as an outside audit would, with real processes, and print a table: per class
of attack, trials, passed, failed. A trial passes when deltaprop gives a result or one clear error
(exit code 1 or 2, no Python traceback), damages no existing file, and writes nothing outside
the run directory or output it was given.

    python bench/attack.py [--quick]     # ~2-4 minutes; the table goes into the README

Needs root for the full-disk and read-only classes (it mounts small tmpfs file systems); without
root those rows say so instead of passing.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).with_name("deltaprop")
RESULTS: dict[str, list[int]] = {}
CWD: Path | None = None  # every command runs in this empty directory, which must stay empty


def cli(*args, env=None, timeout=300):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=CWD)


def record(cls: str, ok: bool, why: str = "") -> None:
    RESULTS.setdefault(cls, [0, 0])[0 if ok else 1] += 1
    if not ok:
        print(f"  FAILED {cls}: {why[:300]}", file=sys.stderr)


def clean(r, codes=(1, 2)) -> bool:
    return r.returncode in codes and "Traceback" not in r.stdout + r.stderr


def snapshot(d: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def data(d: Path, n=400, k=3) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    np.savez(d / "d.npz", X=X, y=(X @ rng.normal(size=(8, k))).argmax(1))
    return d / "d.npz"


def config(d: Path, train: Path, epochs=3, extra="") -> Path:
    p = d / "c.toml"
    p.write_text(f'[model]\nhidden = [16]\n[data]\ntrain = "{train}"\ntest = ""\n[training]\n'
                 f'epochs = {epochs}\nbatch_size = 16\n[checkpoint]\nevery_steps = 10\n{extra}')
    return p


# ---- the classes ---------------------------------------------------------------------------------
def planted_symlinks(root: Path) -> None:
    victim = root / "victim"
    victim.write_text("precious")
    train = data(root)
    for i, name in enumerate([".config.toml.tmp", "metrics.jsonl.tmp", ".model.safetensors.tmp"]):
        run = root / f"run{i}"
        run.mkdir()
        (run / name).symlink_to(victim)
        r = cli("train", config(root, train, 1), "--run-dir", run)
        record("planted temp symlinks", r.returncode == 0 and victim.read_text() == "precious", r.stderr)
    (root / ".p.npy.tmp").symlink_to(victim)
    r = cli("predict", root / "run0", "--data", train, "--output", root / "p.npy")
    record("planted temp symlinks", r.returncode == 0 and victim.read_text() == "precious", r.stderr)


def _mount(path: Path, size: str, ro=False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def full_disk(root: Path, trials: int) -> None:
    train = data(root)
    cfg = config(root, train, epochs=4)
    for i in range(trials):
        mnt = root / f"disk{i}"
        if not _mount(mnt, "1m"):
            RESULTS.setdefault("full disk (needs root: not run)", [0, 0])
            return
        try:
            free = random.choice([0, 4, 16, 64, 128, 256])  # KB left free
            filler = mnt / "filler"
            with open(filler, "wb") as f:
                try:
                    f.write(b"\0" * (1 << 20))
                except OSError:
                    pass
            os.truncate(filler, max(0, (1 << 20) - (free + 32) * 1024))
            r = cli("train", cfg, "--run-dir", mnt / "run")
            ok = r.returncode == 0 or clean(r)
            ckpts = sorted((mnt / "run" / "checkpoints").glob("step-*.safetensors")) if (mnt / "run").exists() else []
            for c in ckpts[-1:]:  # the newest checkpoint left behind must load
                ok &= cli("evaluate", c, "--data", train, "--json").returncode == 0
            ok &= not list((mnt / "run").rglob("*.tmp")) if (mnt / "run").exists() else True
            record("full disk", ok, f"free {free} KB: {r.returncode} {r.stderr}")
            if (mnt / "queue").exists() or True:  # the job queue on the full disk
                env = dict(os.environ, DELTAPROP_HOME=str(mnt / "queue"))
                r = cli("submit", cfg, env=env)
                record("full disk", r.returncode == 0 or clean(r, (2,)), f"submit: {r.stderr}")
        finally:
            _umount(mnt)


def read_only(root: Path) -> None:
    train = data(root)
    src = root / "src"
    assert cli("train", config(root, train, 2), "--run-dir", src / "run").returncode == 0
    mnt = root / "ro"
    if not _mount(mnt, "4m"):
        RESULTS.setdefault("read-only mount (needs root: not run)", [0, 0])
        return
    try:
        shutil.copytree(src / "run", mnt / "run")
        (mnt / "run" / "model.safetensors").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        before = snapshot(mnt)
        for args in (["resume", mnt / "run"], ["predict", mnt / "run", "--data", train, "--output", mnt / "p.npy"],
                     ["train", config(root, train, 1), "--run-dir", mnt / "new"]):
            r = cli(*args)
            record("read-only mount", clean(r) and snapshot(mnt) == before, f"{args[0]}: {r.returncode} {r.stderr}")
        env = dict(os.environ, DELTAPROP_HOME=str(mnt / "queue"))
        r = cli("submit", config(root, train, 1), env=env)
        record("read-only mount", clean(r, (2,)), f"submit: {r.stderr}")
    finally:
        _umount(mnt)


def hostile_inputs(root: Path) -> None:
    train = data(root)
    np.savez(root / "big.npz", X=np.zeros((100_001, 1), np.float32), y=np.arange(100_001))  # ids, not classes
    (root / "long.csv").write_text("a,b,label\n1," + "9" * 140_000 + ",0\n")
    (root / "l-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + b"\xff\xff\xff\xff" * 3)
    (root / "l-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x01\0")
    texts = ["[model]\nhidden = " + "[" * 50_000 + "]" * 50_000, "[model]\nx = " + "{a = " * 5000 + "1" + "}" * 5000,
             "[model]\nhidden = [1000000000000]", "[training]\nepochs = 99999999999999999999999",
             "[optimizer]\nlr = nan", "[optimizer]\neps = nan", "[schedule]\nwarmup_epochs = inf",
             "[data]\nvalidation_fraction = nan", "[early_stopping]\nmin_delta = nan", "[training]\nclip_grad_norm = nan"]
    for i, text in enumerate(texts):
        p = root / f"t{i}.toml"
        p.write_text(f'[data]\ntrain = "{train}"\ntest = ""\n' + text.replace("[data]\n", "[data.x]\n") + "\n")
        r = cli("train", p, "--run-dir", root / f"run-t{i}")
        record("hostile config / data", clean(r, (2,)), r.stderr)
    for f in (root / "big.npz", root / "long.csv", root / "l-images-idx3-ubyte"):
        r = cli("train", config(root, f, 1), "--run-dir", root / f"run-{f.stem}")
        record("hostile config / data", clean(r, (2,)), r.stderr)
    for s in ("optimizer.lr=nan", "model.hidden=" + "[" * 50_000, "nosuch", "training.epochs=-1"):
        r = cli("train", config(root, train, 1), "--set", s, "--run-dir", root / "run-set")
        record("hostile config / data", clean(r, (2,)), r.stderr)


def crafted_models(root: Path, trials: int) -> None:
    train = data(root)
    assert cli("train", config(root, train, 1), "--run-dir", root / "run").returncode == 0
    good = (root / "run" / "model.safetensors").read_bytes()
    rng = random.Random(0)
    for i in range(trials):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        if rng.random() < 0.3:
            blob = blob[:rng.randrange(len(blob))]
        p = root / f"m{i}.safetensors"
        p.write_bytes(bytes(blob))
        r = cli("evaluate", p, "--data", train, "--json")
        record("corrupted / hostile model files", r.returncode == 0 or clean(r, (2,)), r.stderr)


def kills_and_resume(root: Path, trials: int) -> None:
    train = data(root, n=3000)
    cfg = config(root, train, epochs=6)
    assert cli("train", cfg, "--run-dir", root / "whole").returncode == 0
    want = (root / "whole" / "model.safetensors").read_bytes()
    rng = random.Random(1)
    for i in range(trials):
        run = root / f"k{i}"
        proc = subprocess.Popen([str(BIN), "train", str(cfg), "--run-dir", str(run)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=CWD)
        time.sleep(rng.uniform(1.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        while True:  # resume until done, killing once more half the time
            r = subprocess.Popen([str(BIN), "resume", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 cwd=CWD)
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.5, 2.0))
                r.send_signal(signal.SIGKILL)
            _, err = r.communicate()
            if r.returncode == 0:
                break
            if r.returncode != -signal.SIGKILL:
                record("SIGKILL then resume", False, err.decode())
                break
        model = run / "model.safetensors"
        record("SIGKILL then resume", model.exists() and model.read_bytes() == want, f"trial {i}")


def queue_files(root: Path) -> None:
    train = data(root)
    cfg = config(root, train, 1)
    for name, make in [("empty", lambda p: p.write_bytes(b"")), ("garbage", lambda p: p.write_bytes(b"x" * 5000)),
                       ("truncated", None)]:
        home = root / f"q-{name}"
        env = dict(os.environ, DELTAPROP_HOME=str(home))
        if make is None:
            for _ in range(20):
                cli("submit", cfg, env=env)
            subprocess.run([sys.executable, "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                            "c.execute('PRAGMA wal_checkpoint(TRUNCATE)')", str(home / "queue.db")], check=True)
            db = home / "queue.db"
            db.write_bytes(db.read_bytes()[:4096])
        else:
            home.mkdir()
            make(home / "queue.db")
        before = (home / "queue.db").read_bytes()
        for args in (["submit", cfg], ["jobs", "list"], ["worker", "--until-empty"]):
            r = cli(*args, env=env)
            record("damaged queue.db", clean(r, (2,)) and (home / "queue.db").read_bytes() == before,
                   f"{name} {args[0]}: {r.returncode} {r.stderr}")


def markup_paths(root: Path) -> None:
    train = data(root)
    for name in ("a[/]b", "[bold red]x", "c[optimizer.lr=0.1]"):
        run = root / name
        r = cli("train", config(root, train, 1), "--run-dir", run)
        record("markup in paths", r.returncode == 0 and f"done: {run}" in r.stdout, r.stdout + r.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer random trials")
    a = ap.parse_args()
    n = 3 if a.quick else 10
    global CWD
    with tempfile.TemporaryDirectory(prefix="deltaprop-attack-") as tmp:
        root = Path(tmp)
        CWD = root / "cwd"
        CWD.mkdir()
        for fn, args in [(planted_symlinks, ()), (markup_paths, ()), (hostile_inputs, ()), (crafted_models, (5 * n,)),
                         (queue_files, ()), (full_disk, (n,)), (read_only, ()), (kills_and_resume, (max(2, n // 2),))]:
            d = root / fn.__name__
            d.mkdir()
            t0 = time.perf_counter()
            fn(d, *args)
            print(f"{fn.__name__}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        changed = sorted(str(p.relative_to(CWD)) for p in CWD.rglob("*"))
    print("| class | trials | passed | failed |\n|---|---|---|---|")
    for cls, (ok, bad) in RESULTS.items():
        print(f"| {cls} | {ok + bad} | {ok} | {bad} |")
    total_bad = sum(b for _, b in RESULTS.values())
    print(f"\n{sum(ok + b for ok, b in RESULTS.values())} trials, {total_bad} failed; files written outside "
          f"the paths given (into the working directory): {', '.join(changed) or 'none'}")
    sys.exit(1 if total_bad or changed else 0)


if __name__ == "__main__":
    main()
