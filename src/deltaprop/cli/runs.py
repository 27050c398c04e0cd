"""`deltaprop runs`, `deltaprop plot` and `deltaprop summary`: looking at runs and models."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, handle_errors, print_table

STATUS_STYLE = {"running": "cyan", "finished": "green", "failed": "red", "interrupted": "yellow", "new": "dim"}
SORTS = ("name", "status", "epochs", "best", "modified")


def _default_dirs() -> list[Path]:
    from .._system import home
    return [home() / "runs", Path("runs")]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@handle_errors
def runs(
    dirs: Annotated[Optional[list[Path]], typer.Argument(
        help="Run directories, or directories of them (default: $DELTAPROP_HOME/runs and ./runs).")] = None,
    sort: Annotated[str, typer.Option(help=f"Sort by: {', '.join(SORTS)}, or a metric name (best first).")] = "modified",
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """A table of runs: status, epochs done, best and final metrics, the config keys that differ."""
    from ..errors import DeltapropError
    from ..view.runlist import differing, higher_is_better, scan
    missing = [d for d in dirs or [] if not d.is_dir()]
    if missing:
        raise DeltapropError(f"{missing[0]}: no such directory")
    records = scan(dirs or _default_dirs())
    if sort in ("name", "status"):
        records.sort(key=lambda r: getattr(r, sort))
    elif sort == "epochs":
        records.sort(key=lambda r: -r.epochs_done)
    elif sort == "best":
        records.sort(key=lambda r: (not r.best, -r.best["value"] if r.best and higher_is_better(r.best["metric"])
                                    else r.best.get("value", 0)))
    elif sort == "modified":
        records.sort(key=lambda r: -r.modified)
    elif any(sort in m for r in records for m in r.history):
        sign = -1 if higher_is_better(sort) else 1
        records.sort(key=lambda r: (sort not in r.final, sign * r.final.get(sort, 0)))
    else:
        raise DeltapropError(f"--sort {sort!r}: use one of {', '.join(SORTS)}, or a metric the runs have")
    keys = differing(records)
    if json_:
        print(json.dumps({"runs": [r.as_json() for r in records], "differing": keys}))
        return
    if not records:
        console.print(f"no runs in {', '.join(str(d) for d in dirs or _default_dirs())}")
        return
    final_keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy", "test_accuracy", "test_mse")
                  if any(k in r.final for r in records)]
    columns = ("run", "status", "epochs", "best", *final_keys, *keys)
    rows = [(str(r.path), r.status, f"{r.epochs_done}/{r.epochs}",
             f"{r.best['metric']}={r.best['value']:.4g}@{r.best['epoch']}" if r.best else "",
             *[_fmt(r.final[k]) if k in r.final else "" for k in final_keys],
             *[_fmt(r.config.get(k, "")) for k in keys]) for r in records]
    print_table(columns, rows, {1: STATUS_STYLE})
    for r in records:
        if r.error:
            console.print(f"{r.path} failed: {r.error}")


@handle_errors
def plot(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="Run directories (or directories of them).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Comma-separated metrics, one panel each "
                                                  "(default: loss and the validation or test score).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The PNG to write.")] = Path("curves.png"),
    jobs: Annotated[Optional[list[int]], typer.Option("--job", help="A job's run (repeat; a sweep's job ids).")] = None,
    steps: Annotated[bool, typer.Option("--steps", help="Step scalars (steps.jsonl) against the global step.")] = False,
    study: Annotated[Optional[str], typer.Option(help="A tune study's trials (one line per trial's run).")] = None,
):
    """Training curves of runs as a PNG: one panel per metric, one line per run."""
    from ..errors import DeltapropError
    from ..view.plot import plot_curves
    from ..view.runlist import scan
    dirs = list(run_dirs or [])
    if jobs:
        from .jobs import _queue
        queue = _queue(readonly=True)
        dirs += [Path(queue.get(i).run_dir) for i in jobs]
    if study:
        from ..jobs.study import StudyDir
        sd = StudyDir(study)
        sd.spec()
        from ..io.rundir import RunDir
        dirs += [Path(d) for d in dict.fromkeys(t["run_dir"] for t in sd.board().get("trials", []) if t.get("run_dir"))
                 if RunDir(d).metrics_path.exists()]
        if not dirs:
            raise DeltapropError(f"study {study} has no trial with an epoch yet")
    if not dirs:
        raise DeltapropError("name the runs to plot: deltaprop plot RUN [RUN...] (or --job ID ..., --study ID)")
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise DeltapropError(f"{missing[0]}: no such run directory")
    records = scan(dirs)
    if not records:
        raise DeltapropError(f"no run directories in {', '.join(map(str, dirs))} (a run directory holds config.toml)")
    series = plot_curves(records, [m.strip() for m in metric.split(",") if m.strip()] if metric else None,
                         output, steps=steps)
    console.print(f"wrote {output}: {', '.join(series)} of {len(records)} run{'s' if len(records) != 1 else ''}")


@handle_errors
def summary(
    model: Annotated[Path, typer.Argument(help="A run directory or a .safetensors model.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """A model's layers, parameters, FLOPs per sample and training memory (like Keras' summary())."""
    from ..training.model import load_model
    from ..training.summary import model_summary, summary_text
    m = load_model(model)
    opt = m.config.get("optimizer", {})
    s = model_summary(m, opt.get("name"), opt.get("momentum", 0.0)) if opt.get("name") else model_summary(m)
    print(json.dumps(s) if json_ else summary_text(s))
