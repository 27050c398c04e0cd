"""`deltaprop tune`: start a study, show it, resume its controller, continue a pruned trial."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from .common import HELP, console, err_console, handle_errors, print_table


class _StartByDefault(TyperGroup):
    """`deltaprop tune CONFIG --space S` is `deltaprop tune start CONFIG --space S`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_StartByDefault, no_args_is_help=True, context_settings=HELP,
                  help="Hyperparameter search with Optuna over the job queue: deltaprop tune CONFIG --space "
                       "SPACE.toml; tune show|resume|continue ID.")


def _checker(config_toml: str):
    """Each trial's overrides -> its config as TOML, validated like `--set` (ConfigError if not)."""
    import tomllib

    from ..api import read_config
    from ..training.loggers import check_logger_names
    base = tomllib.loads(config_toml)

    def check(overrides):
        cfg = read_config(base, overrides)
        check_logger_names(cfg)  # as `submit` does: a config `train` would refuse is never queued
        return cfg.to_toml()
    return check


def _check_metric(cfg, metric: str) -> None:
    from ..errors import ConfigError
    names = ["loss", "accuracy"] if cfg.training.loss == "cross_entropy" else ["loss", "mse", "r2"]
    known = [*(["loss", "accuracy"] if cfg.training.loss == "cross_entropy" else ["loss"]),
             *(f"val_{n}" for n in names if cfg.data.validation_fraction > 0), *(f"test_{n}" for n in names if cfg.data.test)]
    if metric in known:
        return
    if metric.startswith("val_") and cfg.data.validation_fraction == 0 and metric[4:] in names:
        raise ConfigError(f"--metric {metric} needs a validation split: set data.validation_fraction > 0 "
                          f"(e.g. --set data.validation_fraction=0.1), or tune a metric this config has: {', '.join(known)}")
    if metric.startswith("test_") and not cfg.data.test and metric[5:] in names:
        raise ConfigError(f"--metric {metric} needs a test set (data.test); this config has: {', '.join(known)}")
    raise ConfigError(f"--metric {metric!r} is not a metric of this config; use one of {', '.join(known)}")


def _background(study) -> None:
    """Start the study's controller as a detached process (`tune resume ID`), output in controller.log."""
    with open(study.log_path, "ab") as log:
        subprocess.Popen([sys.executable, "-m", "deltaprop.cli.main", "tune", "resume", study.id], stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    err_console.print(f"study {study.id}: controller started in the background (log: {study.log_path}); start "
                      f"workers (deltaprop worker) to run its trials; deltaprop tune show {study.id} to follow it")


def _control(study, queue=None) -> dict:
    from ..jobs.queue import Queue
    from ..jobs.tune import Controller
    spec = study.spec()
    controller = Controller(study, queue or Queue(create=True), _checker(spec["config_toml"]), log=err_console.print)
    return controller.run()


@app.command()
@handle_errors
def start(
    config: Annotated[Path, typer.Argument(help="Base TOML config.")],
    space: Annotated[Path, typer.Option(help="Search space TOML: one table per config key.")],
    trials: Annotated[Optional[int], typer.Option(min=1, help="Search trials (default 20; grid: the grid's size).")] = None,
    sampler: Annotated[str, typer.Option(help="tpe, random or grid.")] = "tpe",
    pruner: Annotated[str, typer.Option(help="asha, hyperband, median or none.")] = "asha",
    metric: Annotated[str, typer.Option(help="The objective: this metric at the last epoch.")] = "val_accuracy",
    direction: Annotated[Optional[str], typer.Option(help="maximize or minimize (default: by the metric).")] = None,
    parallel: Annotated[int, typer.Option(min=1, help="Trials queued or running at once.")] = 2,
    seed: Annotated[int, typer.Option(min=0, help="The sampler's seed.")] = 0,
    min_epochs: Annotated[int, typer.Option(min=1, help="Epochs before a trial can be pruned (ASHA's first rung).")] = 1,
    reduction_factor: Annotated[int, typer.Option(min=2, help="ASHA/Hyperband: keep 1 in this many at each rung.")] = 3,
    startup_trials: Annotated[int, typer.Option(min=0, help="TPE: random trials before it models the space.")] = 10,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Fixed override for every trial.")] = None,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts per trial's job.")] = 3,
    wait: Annotated[bool, typer.Option("--wait", help="Run the controller here until the study ends; "
                                       "print the leaderboard.")] = False,
):
    """Start a study; prints its id. Its trials are jobs: run them with `deltaprop worker`."""
    from ..api import read_config
    from ..errors import ConfigError
    from ..jobs.space import read_space
    from ..jobs.study import StudyDir
    from ..jobs.tune import (
        PRUNERS,
        SAMPLERS,
        default_direction,
        grid_size,
        optuna_module,
    )
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r}: use one of {', '.join(PRUNERS)}")
    if direction not in (None, "maximize", "minimize"):
        raise ConfigError(f"--direction {direction!r}: use maximize or minimize")
    optuna_module()  # a clear error before anything is created
    cfg = read_config(config, set_ or [])
    from ..training.loggers import check_logger_names
    check_logger_names(cfg)
    _check_metric(cfg, metric)
    check = _checker(cfg.to_toml())
    params = read_space(space, check)
    if sampler == "grid":
        size = grid_size(params)
        if trials and trials > size:
            err_console.print(f"note: --trials {trials} is more than the grid's {size} points; running {size}")
        trials = min(trials or size, size)
    import tomllib
    spec = {"config_toml": cfg.to_toml(), "config": str(config), "space": tomllib.loads(space.read_text()),
            "sampler": sampler, "pruner": pruner, "metric": metric, "direction": direction or default_direction(metric),
            "trials": trials or 20, "parallel": parallel, "seed": seed, "min_epochs": min_epochs,
            "reduction_factor": reduction_factor, "startup_trials": startup_trials, "max_attempts": max_attempts,
            "epochs": cfg.training.epochs}
    study = StudyDir.create(spec)
    print(study.id, flush=True)
    if wait:
        _show(study, _control(study))
    else:
        _background(study)


@app.command()
@handle_errors
def resume(study_id: Annotated[str, typer.Argument(help="Study id.")]):
    """Run a study's controller here until the study ends (after a kill, or to take over)."""
    from ..jobs.study import StudyDir
    study = StudyDir(study_id)
    study.spec()
    _show(study, _control(study))


@app.command("continue")
@handle_errors
def continue_(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    trial: Annotated[int, typer.Argument(help="The pruned trial's number.")],
    wait: Annotated[bool, typer.Option("--wait", help="Run the controller here until it is recorded.")] = False,
):
    """Continue a pruned trial from its checkpoint to the configured end (bit-exact: the weights of an
    uninterrupted run); its result is recorded as a new trial that `continues` it."""
    from ..jobs.queue import Queue
    from ..jobs.study import StudyDir, TuneError, job_name
    study = StudyDir(study_id)
    study.spec()
    rows = {r["trial"]: r for r in study.board().get("trials", [])}
    if trial not in rows:
        raise TuneError(f"study {study_id} has no trial {trial}" + (f" (trials: 0..{max(rows)})" if rows else ""))
    row = rows[trial]
    if row["continued_as"] is not None:
        raise TuneError(f"trial {trial} of study {study_id} was already continued, as trial {row['continued_as']}")
    if row["state"] != "pruned" or row["continues"] is not None:
        raise TuneError(f"trial {trial} of study {study_id} is {row['state']}: only pruned trials can be continued")
    queue = Queue(create=False)
    job = queue.find(job_name(study.id, trial))
    if job is None or job.status != "pruned":
        raise TuneError(f"trial {trial}'s job is {job.status if job else 'missing'}, not pruned: nothing to continue")
    queue.retry(job.id)  # opens the trial's gate too: no rung holds a continued trial
    err_console.print(f"trial {trial}: job {job.id} queued again; it resumes from its checkpoint")
    if wait:
        _show(study, _control(study, queue))
    elif not study.controller_running():
        _background(study)


@app.command()
@handle_errors
def show(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """The leaderboard: every trial (state, params, value, epochs spent) and the best config."""
    from ..jobs.study import StudyDir
    study = StudyDir(study_id)
    study.spec()
    _show(study, study.board(), json_)


def _show(study, board: dict, as_json: bool = False) -> None:
    from ..jobs.study import epochs_spent
    board = dict(board or {"study": study.id, "trials": [], "best_value": None, "best": None})
    board["controller"] = "running" if study.controller_running() else "stopped"
    for r in board["trials"]:
        if r["state"] == "running" and r.get("run_dir"):
            r["epochs"] = epochs_spent(r["run_dir"])
    best = board.get("best")
    if best and best.get("run_dir"):
        from ..io.rundir import RunDir
        board["best_config"] = str(RunDir(best["run_dir"]).config_path)
    if as_json:
        print(json.dumps(board))
        return
    spec = study.spec()
    keys = sorted({k for r in board["trials"] for k in r["params"]})
    columns = ("trial", "state", *keys, spec["metric"], "epochs", "job")
    rows = []
    for r in sorted(board["trials"], key=lambda r: r["trial"]):
        state = r["state"] + (f" -> {r['continued_as']}" if r.get("continued_as") is not None else "") \
            + (f" (continues {r['continues']})" if r.get("continues") is not None else "")
        rows.append((str(r["trial"]), state, *[_fmt(r["params"].get(k)) for k in keys],
                     "" if r["value"] is None else f"{r['value']:.4f}", f"{r['epochs'] or 0:g}", str(r["job"] or "")))
    console.print(f"study {study.id}: {spec['sampler']} sampler, {spec['pruner']} pruner, {spec['direction']} "
                  f"{spec['metric']}")
    print_table(columns, rows)
    order = rows
    total = sum(r["epochs"] or 0 for r in board["trials"])
    console.print(f"{len(order)} trials, {total:g} epochs in all; controller {board['controller']}"
                  + ("" if board["controller"] == "running" or board.get("done") else
                     f" (deltaprop tune resume {study.id} continues it)"))
    if best:
        console.print(f"best: trial {best['trial']}, {spec['metric']}={best['value']:.4f}, "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
                      + f"; config: {board.get('best_config')}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)
