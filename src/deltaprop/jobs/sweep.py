"""Sweeps: the cartesian product of --grid values, submitted as jobs, and their leaderboard."""

import itertools

from ..errors import ConfigError
from ..io.rundir import RunDir


def split_values(text: str) -> list[str]:
    """'0.1,0.01' -> ['0.1', '0.01']; '[256],[512,256]' -> ['[256]', '[512,256]'] (commas inside
    brackets or quotes do not split)."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    if depth != 0 or quote or any(v == "" for v in out):
        raise ConfigError(f"--grid value list {text!r} is malformed (unbalanced brackets or an empty value)")
    return out


def grid_overrides(grids: list[str]) -> list[list[str]]:
    """['optimizer.lr=0.1,0.01', 'model.hidden=[256],[512,256]'] -> one --set list per point."""
    axes = []
    for g in grids:
        if "=" not in g:
            raise ConfigError(f"--grid {g!r}: expected section.key=v1,v2,...")
        key, values = g.split("=", 1)
        axes.append([f"{key.strip()}={v}" for v in split_values(values)])
    return [list(point) for point in itertools.product(*axes)]


def leaderboard(jobs) -> list[dict]:
    """Finished jobs with their last epoch's metrics, best first (accuracy, else lowest loss)."""
    rows = []
    for job in jobs:
        history = RunDir(job.run_dir).read_metrics()
        last = history[-1] if history else {}
        rows.append({"id": job.id, "name": job.name, "status": job.status, **last})

    def key(r):
        for k in ("test_accuracy", "val_accuracy", "accuracy"):
            if k in r:
                return (0, -r[k])
        for k in ("test_loss", "val_loss", "loss"):
            if k in r:
                return (1, r[k])
        return (2, 0)
    return sorted(rows, key=key)
