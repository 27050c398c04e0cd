"""`deltaprop submit`, `worker`, `sweep` and the `jobs` group."""

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import HELP, console, handle_errors, print_table

app = typer.Typer(help="The job queue: list, show, logs, cancel, retry.", no_args_is_help=True, context_settings=HELP)

NO_WORKER_HINT_S = 10.0
STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "dim",
                "pruned": "magenta"}


def _queue(create=False, readonly=False):
    """The queue; `readonly` for commands that only read (they never wait for a writer's lock)."""
    from ..jobs.queue import Queue
    return Queue(create=create, readonly=readonly)


def _read(config: Path, sets: list[str]):
    """The job's config, checked as `train` would before starting (its loggers included)."""
    from ..api import read_config
    from ..training.loggers import check_logger_names
    cfg = read_config(config, sets)
    check_logger_names(cfg)
    return cfg


def _submit(queue, config: Path, sets: list[str], name: str | None = None, max_attempts: int = 3):
    cfg = _read(config, sets)
    return queue.submit(name or config.stem + ("[" + ",".join(sets) + "]" if sets else ""), cfg.to_toml(),
                        max_attempts)


MaxAttempts = Annotated[int, typer.Option(min=1, help="Attempts before a job is failed (a killed worker "
                                                         "spends one attempt of each job it was running).")]


@handle_errors
def submit(
    config: Annotated[Path, typer.Argument(help="TOML config file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: section.key=value.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Job name (default: the config's name).")] = None,
    max_attempts: MaxAttempts = 3,
):
    """Queue a training run; prints the job id."""
    _read(config, set_ or [])  # a bad config creates no queue
    job = _submit(_queue(create=True), config, set_ or [], name, max_attempts)
    print(job.id)


@handle_errors
def worker(
    concurrency: Annotated[int, typer.Option(help="Jobs at once; the cores are divided among them "
                                                           "(local: at most one job per core).")] = 1,
    executor: Annotated[str, typer.Option(help="local (child processes) or ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (executor ray).")] = None,
    until_empty: Annotated[bool, typer.Option("--until-empty", help="Exit when the queue is empty.")] = False,
    lease_seconds: Annotated[float, typer.Option(help="Lease length; a dead worker's jobs return after it.")] = 30.0,
):
    """Run queued jobs until stopped (SIGTERM drains: running jobs checkpoint and are requeued)."""
    from ..errors import DeltapropError
    from ..jobs.worker import Worker
    if executor not in ("local", "ray"):
        raise DeltapropError(f"--executor {executor!r}: use local or ray")
    ex = None
    if executor == "ray":
        from ..jobs.ray import RayExecutor
        ex = RayExecutor(address)
    w = Worker(_queue(create=True), concurrency, ex, lease_s=lease_seconds,
               heartbeat_s=max(0.2, min(2.0, lease_seconds / 5)), log=console.print)
    console.print(f"worker {w.id}: concurrency {w.concurrency}, {w.threads} thread(s) per job, executor {executor}")
    w.run(until_empty=until_empty)


@handle_errors
def sweep(
    config: Annotated[Path, typer.Argument(help="Base TOML config.")],
    grid: Annotated[list[str], typer.Option(help="section.key=v1,v2,... (repeat for a cartesian product).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Fixed override for every point.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the jobs and print a leaderboard.")] = False,
    max_attempts: MaxAttempts = 3,
):
    """Submit the cartesian product of --grid values as jobs."""
    from ..jobs.sweep import grid_overrides
    queue = _queue(create=True)
    points = grid_overrides(grid)
    for point in points:  # validate every point before queuing any
        _read(config, (set_ or []) + point)
    ids = [_submit(queue, config, (set_ or []) + point, f"{config.stem}[{','.join(point)}]", max_attempts).id
           for point in points]
    console.print(f"submitted {len(ids)} jobs: {' '.join(map(str, ids))} (their leaderboard, any time: "
                  f"deltaprop jobs leaderboard {' '.join(map(str, ids))})")
    if wait:
        t0, hinted = time.monotonic(), False
        while any((states := [queue.get(i).status for i in ids]).count(s) for s in ("queued", "running")):
            if not hinted and time.monotonic() - t0 > NO_WORKER_HINT_S and "running" not in states:
                hinted = True
                console.print(f"waiting for a worker: none has claimed these jobs in {NO_WORKER_HINT_S:g} s. Start "
                              f"one (in another terminal, with the same DELTAPROP_HOME={queue.home}): "
                              "deltaprop worker --until-empty")
            time.sleep(1.0)
        _leaderboard([queue.get(i) for i in ids])


def _leaderboard(jobs) -> None:
    from rich.table import Table

    from ..jobs.sweep import leaderboard
    rows = leaderboard(jobs)
    metrics = [k for k in ("test_accuracy", "val_accuracy", "accuracy", "test_loss", "val_loss", "loss",
                           "test_mse") if any(k in r for r in rows)]
    table = Table("rank", "job", "name", "status", *metrics, title="leaderboard")
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), str(r["id"]), r["name"], r["status"],
                      *[f"{r[k]:.4f}" if k in r else "" for k in metrics])
    console.print(table)


@app.command("list")
@handle_errors
def list_(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    status: Annotated[Optional[str], typer.Option(help="Only jobs in this state.")] = None,
):
    """All jobs, as a table."""
    from ..errors import DeltapropError
    from ..jobs.queue import STATES
    if status and status not in STATES:
        raise DeltapropError(f"--status {status!r}: use one of {', '.join(STATES)}")
    from ..view.runlist import read_run
    jobs = _queue(readonly=True).list(status)
    runs = {j.id: read_run(Path(j.run_dir)) for j in jobs}  # progress and the best metric so far
    if json_:
        print(json.dumps([j.__dict__ | {"epochs_done": runs[j.id].epochs_done, "epochs": runs[j.id].epochs,
                                        "best": runs[j.id].best} for j in jobs]))
        return
    if not jobs:
        console.print(f"no {status} jobs" if status else "no jobs")
        return
    columns = ("id", "name", "status", "attempts", "epoch", "best", "created", "run dir", "error")
    rows = [(str(j.id), j.name, j.status, f"{j.attempts}/{j.max_attempts}",
             f"{runs[j.id].epochs_done}/{runs[j.id].epochs}" if runs[j.id].epochs else "",
             "{metric}={value:.4g}".format(**runs[j.id].best) if runs[j.id].best else "",
             _when(j.created_at), j.run_dir, j.error or "") for j in jobs]
    print_table(columns, rows, {2: STATUS_STYLE})


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


@app.command()
@handle_errors
def leaderboard(job_ids: Annotated[Optional[list[int]], typer.Argument(help="Job ids (default: every job).")] = None):
    """The leaderboard of some jobs (a sweep's, as `sweep --wait` prints it), best first."""
    queue = _queue(readonly=True)
    _leaderboard([queue.get(i) for i in job_ids] if job_ids else queue.list())


@app.command()
@handle_errors
def show(job_id: Annotated[int, typer.Argument(help="Job id.")]):
    """One job: state, attempts, run directory, last metrics."""
    job = _queue(readonly=True).get(job_id)
    shown = dict(job.__dict__)
    for key in ("created_at", "started_at", "finished_at", "lease_until"):  # seconds since 1970 -> dates
        shown[key] = _when(shown[key]) or None
    print(json.dumps(shown, indent=2))
    from ..io.rundir import RunDir
    history = RunDir(job.run_dir).read_metrics()
    if history:
        print("last epoch: " + json.dumps(history[-1], sort_keys=True))
        if console.is_terminal and len(history) > 1:  # off when piped
            from ..view.runlist import sparkline
            losses = [m["loss"] for m in history if "loss" in m]
            console.print(f"loss per epoch: {sparkline(losses, width=60)} {losses[0]:.4g} -> {losses[-1]:.4g}")


@app.command()
@handle_errors
def logs(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
):
    """The job's output (all attempts)."""
    from ..errors import DeltapropError
    queue = _queue(readonly=True)
    job = queue.get(job_id)
    if not Path(job.run_dir).is_dir():
        raise DeltapropError(f"job {job_id}'s run directory {job.run_dir} is missing (moved or deleted)")
    from ..io.rundir import RunDir
    path = RunDir(job.run_dir).log_path
    pos, ended = 0, not follow
    while True:
        if follow:  # read the state before the file: lines written before the job ended get printed
            ended = queue.get(job_id).status not in ("queued", "running")
        if path.exists():
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
            print(chunk.decode(errors="replace"), end="", flush=True)
        if ended:
            break
        time.sleep(0.5)


@app.command()
@handle_errors
def cancel(job_id: Annotated[int, typer.Argument(help="Job id.")]):
    """Cancel a job (a running one stops at the next step boundary, checkpointing)."""
    job = _queue().cancel(job_id)
    console.print(f"job {job_id}: {'cancel requested' if job.status == 'running' else job.status}")


@app.command()
@handle_errors
def retry(job_id: Annotated[int, typer.Argument(help="Job id.")]):
    """Queue a failed or cancelled job again (it resumes from its newest checkpoint)."""
    _queue().retry(job_id)
    console.print(f"job {job_id}: queued")
