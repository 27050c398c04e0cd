"""The runs table: what each run directory holds, and the config keys that differ between runs.

    records = scan([Path("runs")])        # run directories, or directories of them
    differing(records)                    # ["optimizer.lr", "model.hidden"]

A run's status: `running` (a process holds its lock now), `finished` (its model is written),
`failed` (diverged, disk full...: status.json says so, with the error), `interrupted` (stopped by
a signal or a kill; `deltaprop resume RUN` continues it), `new` (nothing trained yet).
"""

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..io.rundir import RunDir

# The metric a run is ranked by, best first: the first of these it has (higher is better for accuracy/r2)
PRIMARY = ("val_accuracy", "test_accuracy", "accuracy", "val_r2", "test_r2", "val_loss", "test_loss", "loss")


@dataclass
class RunRecord:
    path: Path
    name: str
    status: str
    epochs_done: int
    epochs: int
    config: dict = field(default_factory=dict)  # flattened: "section.key" -> value
    final: dict = field(default_factory=dict)  # the last epoch's metrics
    best: dict = field(default_factory=dict)  # {"metric", "value", "epoch"}
    history: list = field(default_factory=list)
    steps: list = field(default_factory=list)  # steps.jsonl, read by load_steps() (it can be long)
    error: str = ""
    modified: float = 0.0

    def load_steps(self) -> None:
        self.steps = RunDir(self.path).read_steps()

    def as_json(self) -> dict:
        return {"path": str(self.path), "name": self.name, "status": self.status, "epochs_done": self.epochs_done,
                "epochs": self.epochs, "final": self.final, "best": self.best, "error": self.error,
                "config": self.config}


def higher_is_better(metric: str) -> bool:
    return metric.endswith(("accuracy", "r2"))


def best_of(history: list[dict]) -> dict:
    for metric in PRIMARY:
        points = [(m[metric], m.get("epoch", i + 1)) for i, m in enumerate(history) if metric in m]
        if points:
            value, epoch = (max if higher_is_better(metric) else min)(points, key=lambda p: p[0])
            return {"metric": metric, "value": value, "epoch": epoch}
    return {}


def flat_config(text: str) -> dict:
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    return {f"{s}.{k}": v for s, values in raw.items() if isinstance(values, dict) for k, v in values.items()}


def read_run(path: Path) -> RunRecord:
    rd = RunDir(path)
    try:
        config = flat_config(rd.read_config_text())
    except Exception:  # unreadable config: still listed, with what can be read
        config = {}
    history = rd.read_metrics()
    saved = rd.read_status()
    if rd.in_use():
        status = "running"
    elif rd.model_path.exists() and saved.get("status", "finished") == "finished":
        status = "finished"
    elif saved.get("status") == "failed":
        status = "failed"
    elif rd.holds_run() or saved:
        status = "interrupted"
    else:
        status = "new"
    epochs = config.get("training.epochs")
    try:
        modified = max(p.stat().st_mtime for p in (rd.config_path, rd.metrics_path, rd.status_path) if p.exists())
    except (OSError, ValueError):
        modified = 0.0
    return RunRecord(path, path.name, status, len(history), epochs if isinstance(epochs, int) else 0, config,
                     history[-1] if history else {}, best_of(history), history, [],
                     saved.get("error", "") if status == "failed" else "", modified)


def scan(dirs: list[Path]) -> list[RunRecord]:
    """Every run directory in `dirs`: a directory holding config.toml is one, otherwise its
    children that hold one are (one level down), newest first within each."""
    out, seen = [], set()
    for d in dirs:
        d = Path(d)
        candidates = [d] if RunDir(d).config_path.is_file() else sorted(
            (c for c in _children(d) if RunDir(c).config_path.is_file()), key=lambda c: c.name)
        for c in candidates:
            key = os.path.realpath(c)
            if key not in seen:
                seen.add(key)
                out.append(read_run(c))
    return out


def _children(d: Path) -> list[Path]:
    try:
        return [c for c in d.iterdir() if c.is_dir()]
    except OSError:
        return []


def differing(records: list[RunRecord]) -> list[str]:
    """The config keys whose values are not the same in every record (data paths included)."""
    keys = sorted({k for r in records for k in r.config})
    return [k for k in keys if len({repr(r.config.get(k)) for r in records}) > 1]


BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    """A curve in block characters (the last `width` points)."""
    values = [v for v in values[-width:]]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi == lo:
        return BARS[3] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / (hi - lo) * len(BARS)))] for v in values)
