"""The tune controller: Optuna's ask-and-tell over the durable queue (`pip install 'deltaprop[tune]'`).

    Controller(StudyDir(id), queue, check).run()     # until every trial has ended

Optuna samples and prunes; the controller is the only process that writes its storage
(`optuna.db`), so SQLite is safe however many workers run the trials. Each search trial N is one
job, `tune-ID-trial-N`, run by ordinary workers in the run directory `trial-N/`. Every poll:

1) each RUNNING trial gets its job (submitted by name, at most once: the queue looks the name up in
   the same transaction as the insert; a trial asked before a kill is re-created from its stored
   params), its new epochs reported, and a prune request (the job stops at its next step boundary
   with a checkpoint and ends `pruned`) when the pruner says so;
2) a trial whose job ended is told: complete (the metric at its last epoch), pruned, or failed;
3) a pruned trial whose job was continued (`tune continue`: the job is requeued and resumes from
   its checkpoint) and has succeeded is recorded once as a new complete trial with the same params
   and the user attr `continues` (Optuna's finished trials are immutable);
4) new trials are asked while fewer than `trials` exist and fewer than `parallel` are in flight.

Every step is idempotent, so a controller killed at any moment and restarted (`tune resume`)
loses no trial and evaluates none twice.
"""

import time

from ..errors import ConfigError, DeltapropError
from ..io.rundir import RunDir
from .queue import Queue
from .space import Param, parse_space
from .study import StudyDir, epochs_spent, job_name

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("asha", "hyperband", "median", "none")
HIGHER_IS_BETTER = ("accuracy", "r2")


def default_direction(metric: str) -> str:
    return "maximize" if metric.endswith(HIGHER_IS_BETTER) else "minimize"


def optuna_module():
    try:
        import optuna
    except ImportError:
        raise DeltapropError("deltaprop tune needs Optuna: pip install 'deltaprop[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def grid_space(params: list[Param], source: str = "the search space") -> dict:
    grid = {}
    for p in params:
        values = p.grid()
        if values is None:
            raise ConfigError(f'{source}: ["{p.key}"] is a range without a step: --sampler grid needs choices or '
                              "a range with step (or use --sampler tpe or random)")
        grid[p.key] = values
    return grid


def grid_size(params: list[Param]) -> int:
    n = 1
    for values in grid_space(params).values():
        n *= len(values)
    return n


def suggest(trial, p: Param):
    """Trial's value for p (a re-created trial returns the value it already holds)."""
    if p.choices:
        return trial.suggest_categorical(p.key, [p.stored(c) for c in p.choices])
    if p.is_int:
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)


class Controller:
    def __init__(self, study: StudyDir, queue: Queue, check, log=print, poll_s: float = 0.5):
        self.study, self.queue, self.check, self.log, self.poll_s = study, queue, check, log, poll_s
        self.spec = study.spec()
        self.params = parse_space(self.spec["space"], str(study.spec_path))
        self.optuna = optuna_module()
        self._board = None
        self._job_epochs: dict[int, int] = {}

    # ---- Optuna objects -----------------------------------------------------------------------
    def _sampler(self, n_existing: int):
        o, name, seed = self.optuna, self.spec["sampler"], self.spec["seed"]
        if name == "grid":  # trial k takes point k of the grid as the seed shuffles it: the same after a restart

            class Grid(o.samplers.GridSampler):
                def after_trial(self, *args):  # it would call study.stop(), which needs optimize();
                    pass                       # the controller counts the trials itself
            return Grid(grid_space(self.params), seed=seed)
        seed = seed * 1_000_003 + n_existing  # a restarted sampler does not replay earlier draws
        if name == "random":
            return o.samplers.RandomSampler(seed=seed)
        return o.samplers.TPESampler(seed=seed, n_startup_trials=self.spec.get("startup_trials", 10))

    def _pruner(self):
        o, name = self.optuna, self.spec["pruner"]
        r, lo = self.spec.get("reduction_factor", 3), self.spec.get("min_epochs", 1)
        if name == "asha":
            return o.pruners.SuccessiveHalvingPruner(min_resource=lo, reduction_factor=r)
        if name == "hyperband":
            return o.pruners.HyperbandPruner(min_resource=lo, max_resource=self.spec["epochs"], reduction_factor=r)
        if name == "median":
            return o.pruners.MedianPruner(n_startup_trials=self.spec.get("parallel", 2), n_warmup_steps=lo)
        return o.pruners.NopPruner()

    def _load(self):
        storage = self.optuna.storages.RDBStorage(f"sqlite:///{self.study.storage_path}",
                                                  engine_kwargs={"connect_args": {"timeout": 60}})
        name = f"deltaprop-{self.study.id}"
        try:
            n = len(self.optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            n = 0
        return self.optuna.create_study(storage=storage, study_name=name, direction=self.spec["direction"],
                                        sampler=self._sampler(n), pruner=self._pruner(), load_if_exists=True)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        with self.study.lock():
            study = self._load()
            while True:
                if self.step(study):
                    self._board = dict(self._board, done=True)
                    self.study.write_board(self._board)
                    return self._board
                time.sleep(self.poll_s)

    def step(self, study) -> bool:
        """One poll (steps 1-4 of the module docstring); True when the study has ended."""
        TS = self.optuna.trial.TrialState
        jobs = {j.name: j for j in self.queue.list() if j.name.startswith(f"tune-{self.study.id}-trial-")}
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state == TS.RUNNING:
                self._follow(study, t, jobs)
        continued = {t.user_attrs["continues"] for t in trials if "continues" in t.user_attrs}
        pending = 0
        for t in trials:
            job = jobs.get(job_name(self.study.id, t.number))
            if t.state == TS.PRUNED and job is not None and t.number not in continued:
                if job.status in ("queued", "running"):
                    pending += 1
                    if RunDir(job.run_dir).read_gate() is not None:  # continued: no rung holds it
                        RunDir(job.run_dir).write_gate(None)
                elif job.status == "succeeded":
                    self._record_continued(study, t, job)
        trials = study.get_trials(deepcopy=False)
        search = [t for t in trials if "continues" not in t.user_attrs]
        in_flight = sum(t.state == TS.RUNNING for t in search)
        while len(search) < self.spec["trials"] and in_flight < self.spec["parallel"]:
            trial = study.ask()
            self.log(f"trial {trial.number}: asked")
            self._follow(study, study._storage.get_trial(trial._trial_id), jobs, trial)
            search.append(trial)
            in_flight += 1
        self._write_board(study, jobs)
        return len(search) >= self.spec["trials"] and in_flight == 0 and pending == 0 and all(
            t.state != TS.RUNNING for t in study.get_trials(deepcopy=False))

    def _follow(self, study, frozen, jobs: dict, trial=None) -> None:
        name = job_name(self.study.id, frozen.number)
        job = jobs.get(name)
        trial = trial or self.optuna.trial.Trial(study, frozen._trial_id)
        if job is None:
            stored = {p.key: suggest(trial, p) for p in self.params}  # stored values come back as they were
            overrides = [p.override(stored[p.key]) for p in self.params]
            try:
                config = self.check(overrides)
            except ConfigError as exc:
                trial.set_user_attr("error", str(exc))
                study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                self.log(f"trial {frozen.number}: failed: {exc}")
                return
            run_dir = self.study.trial_dir(frozen.number)
            if self._rungs() and name not in jobs:  # the first rung's gate, before a worker can start it
                run_dir.mkdir(parents=True, exist_ok=True)
                RunDir(run_dir).write_gate(self._rungs()[0])
            job = self.queue.submit(name, config, self.spec.get("max_attempts", 3), run_dir=run_dir, unique=True)
            jobs[name] = job
            self.log(f"trial {frozen.number}: job {job.id} queued ({', '.join(overrides)})")
            return
        history = RunDir(job.run_dir).read_metrics()
        metric = self.spec["metric"]
        reported = set(frozen.intermediate_values)
        for m in history:
            if metric in m and m["epoch"] not in reported:
                trial.report(m[metric], step=m["epoch"])
        if job.status in ("queued", "running"):
            last = history[-1]["epoch"] if history else 0
            if job.status != "running" or job.cancel or not 0 < last < self._epochs(job):
                return
            rd = RunDir(job.run_dir)
            gate = rd.read_gate()
            if gate is not None and last < gate:
                return  # on its way to the next rung
            if trial.should_prune():
                self.queue.prune(job.id)
                self.log(f"trial {frozen.number}: pruned at epoch {last} ({metric}="
                         f"{history[-1].get(metric, float('nan')):.4g}); job {job.id} stops at its next step")
            elif gate is not None:  # promoted: on to the next rung
                rd.write_gate(next((r for r in self._rungs() if r > last), None))
            return
        trial.set_user_attr("epochs", epochs_spent(job.run_dir))
        trial.set_user_attr("job", job.id)
        if job.status == "succeeded" and history and metric in history[-1]:
            study.tell(trial, history[-1][metric])
            self.log(f"trial {frozen.number}: complete, {metric}={history[-1][metric]:.4g}")
        elif job.status == "pruned":
            study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
            self.log(f"trial {frozen.number}: pruned (job {job.id} checkpointed; `deltaprop tune continue "
                     f"{self.study.id} {frozen.number}` continues it)")
        else:
            why = job.error or (f"no {metric} in its last epoch" if job.status == "succeeded" else job.status)
            trial.set_user_attr("error", why)
            study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            self.log(f"trial {frozen.number}: failed: {why}")

    def _rungs(self) -> list[int]:
        """The epochs at which ASHA (and Hyperband's brackets) decide: min_epochs * factor**k. A trial
        waits at each (RunDir.wait_at_gate) until the controller has told its pruner, so a
        pruned trial stops exactly at its rung however fast its epochs are."""
        if self.spec["pruner"] not in ("asha", "hyperband"):
            return []
        lo, r, out = self.spec.get("min_epochs", 1), self.spec.get("reduction_factor", 3), []
        while lo < self.spec["epochs"]:
            out.append(lo)
            lo *= r
        return out

    def _epochs(self, job) -> int:
        """The epochs the trial's config trains (pruning at the last one would save nothing)."""
        if job.id not in self._job_epochs:
            import tomllib
            try:
                cfg = tomllib.loads(RunDir(job.run_dir).read_config_text())
                self._job_epochs[job.id] = int(cfg.get("training", {}).get("epochs", self.spec["epochs"]))
            except (DeltapropError, ValueError, TypeError):
                return self.spec["epochs"]
        return self._job_epochs[job.id]

    def _record_continued(self, study, pruned, job) -> None:
        """The continued job's result as a new complete trial (once: the caller checked)."""
        history = RunDir(job.run_dir).read_metrics()
        metric = self.spec["metric"]
        if not history or metric not in history[-1]:
            return
        total = epochs_spent(job.run_dir)
        trial = self.optuna.trial.create_trial(
            params=pruned.params, distributions=pruned.distributions, value=history[-1][metric],
            intermediate_values={m["epoch"]: m[metric] for m in history if metric in m},
            user_attrs={"continues": pruned.number, "job": job.id,
                        "epochs": round(total - pruned.user_attrs.get("epochs", 0.0), 3)})
        study.add_trial(trial)
        self.log(f"trial {pruned.number} (continued): complete, {metric}={history[-1][metric]:.4g}")

    # ---- the leaderboard ----------------------------------------------------------------------
    def _write_board(self, study, jobs: dict) -> None:
        board = leaderboard(study.get_trials(deepcopy=False), self.params, self.spec, self.study.id, jobs)
        if board != self._board:
            self.study.write_board(board)
            self._board = board


def leaderboard(trials, params: list[Param], spec: dict, study_id: str, jobs: dict) -> dict:
    """What `tune show` prints: every trial (state, params, value, epochs spent) and the best."""
    by_key = {p.key: p for p in params}
    continued_as = {t.user_attrs["continues"]: t.number for t in trials if "continues" in t.user_attrs}
    rows = []
    for t in trials:
        number = t.user_attrs.get("continues", t.number)
        job = jobs.get(job_name(study_id, number))
        state = t.state.name.lower()
        row = {"trial": t.number, "state": state if state in ("complete", "pruned", "fail") else "running",
               "params": {k: by_key[k].value(v) if k in by_key else v for k, v in t.params.items()},
               "value": t.value if t.state.name in ("COMPLETE", "PRUNED") else None,
               "epochs": t.user_attrs.get("epochs", epochs_spent(job.run_dir) if job else 0.0),
               "job": job.id if job else None, "run_dir": job.run_dir if job else None,
               "continues": t.user_attrs.get("continues"), "continued_as": continued_as.get(t.number),
               "error": t.user_attrs.get("error")}
        row["state"] = "failed" if row["state"] == "fail" else row["state"]
        rows.append(row)
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    sign = -1 if spec["direction"] == "maximize" else 1
    best = min(done, key=lambda r: sign * r["value"]) if done else None
    return {"study": study_id, "metric": spec["metric"], "direction": spec["direction"],
            "trials": rows, "best_value": best["value"] if best else None,
            "best": best, "epochs_total": round(sum(r["epochs"] or 0 for r in rows), 3)}
