"""`deltaprop train` and `deltaprop resume`."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, handle_errors


def _summary(result) -> None:
    from ..io.rundir import RunDir
    from ..training.run import plural
    last = result.metrics[-1] if result.metrics else {}
    parts = [f"{k}={last[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy", "test_loss",
                                             "test_accuracy", "test_mse") if k in last]
    console.print(f"done: {result.run_dir} after {plural(len(result.metrics), 'epoch')}"
                  + (" (stopped early)" if result.stopped_early else "") + ("; " + " ".join(parts) if parts else ""))
    console.print(f"model: {RunDir(result.run_dir).model_path}")
    if console.is_terminal and len(result.metrics) > 1:  # off when piped
        from ..view.runlist import sparkline
        losses = [m["loss"] for m in result.metrics if "loss" in m]
        console.print(f"loss per epoch: {sparkline(losses, width=60)} {losses[0]:.4g} -> {losses[-1]:.4g}")


def _run(fn, *args, **kwargs):
    from .progress import make_reporter
    reporter = make_reporter()
    try:
        return fn(*args, reporter=reporter, **kwargs)
    finally:
        if hasattr(reporter, "stop"):
            reporter.stop()


Threads = Annotated[Optional[int], typer.Option(min=0, help="Threads for this process, not recorded in the "
                                                "config (default: training.threads; results do not depend on it).")]


@handle_errors
def train(
    config: Annotated[Path, typer.Argument(help="TOML config file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: section.key=value.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default: $DELTAPROP_HOME/runs/NAME-TIME).")] = None,
    threads: Threads = None,
):
    """Train a model in the foreground and write the run directory."""
    from ..api import default_run_dir, read_config
    from ..training.runs import train_run
    cfg = read_config(config, set_ or [])
    result = _run(train_run, cfg, run_dir or default_run_dir(config.stem), threads=threads)
    _summary(result)


@handle_errors
def resume(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to continue.")],
    threads: Threads = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Train to this many epochs instead of the "
                                                  "configured number (a finished run too); recorded in config.toml.")] = None,
    wait_for_lock: Annotated[bool, typer.Option("--wait-for-lock", help="If another process is training "
                                                "this run, wait for it to end instead of failing.")] = False,
):
    """Continue a run from its newest valid checkpoint to the configured end."""
    from ..training.runs import resume_run
    result = _run(resume_run, run_dir, threads=threads, wait_for_lock=wait_for_lock, epochs=epochs)
    _summary(result)
