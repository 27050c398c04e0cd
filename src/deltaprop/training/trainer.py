"""The training loop: epochs of compiled steps, metrics, checkpoints, early stopping, resume.

    result = Trainer(config, arrays=(X, y), start=Start(theta, ...)).run()   # in memory
    (in a run directory: train_run / resume_run, training/runs.py)

Without a run directory (a `NullRunDir`, the scikit-learn estimators) a run writes no files,
takes no lock and installs no signal handlers; `start` continues from given weights, optimizer
state, step and RNG state (warm starts, partial fits), and the result carries them back out.

Python runs once per *chunk* of steps (sized to ~0.25 s), never per minibatch: the compiled
`run_steps` does gather, forward, loss, backward and update for every step of the chunk. Chunks end
on checkpoint boundaries. Everything that decides the next step — weights, optimizer state, global
step, epoch, position in the epoch's permutation, the shuffling RNG state at the epoch's start,
early-stopping state — is in each checkpoint, so a resumed run is bit-identical to an
uninterrupted one.
"""

import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .._system import catch_signals
from ..compute.engine import Engine, OptimizerSpec
from ..compute.warmup import compile_kernels
from ..errors import CheckpointError, ConfigError, TrainingFailed, WriteError
from ..io.datasets import is_memory_mapped
from ..io.rundir import NullRunDir, RunDir
from .checkpoint import check_plugins, checkpoint_contents, restore
from .config import Config
from .early_stopping import EarlyStopping
from .loggers import RunLoggers
from .order import EpochOrder, prefetch_blocks
from .prepare import Prepared, prepare
from .run import Reporter, RunResult, Start  # noqa: F401  (Start: re-exported)
from .schedule import Schedule
from .state import State
from .summary import model_summary, summary_text
from .threads import ThreadTuner

CHUNK_SECONDS = 0.25


class Interrupted(TrainingFailed):
    """Stopped on a signal or request after writing a checkpoint."""


class Trainer:
    def __init__(self, config: Config, rundir: RunDir | None = None, *, registry=None,
                 reporter: Reporter | None = None, stop_requested=None, arrays: tuple | None = None,
                 n_outputs: int | None = None, source: str = "arrays", start: Start | None = None,
                 threads: int | None = None, extend: bool = False):
        """`threads`: Numba threads (None: training.threads; 0: all cores, tuned while running)."""
        from ..plugins.manager import get_registry
        self.config = config
        self.rundir = rundir if rundir is not None else NullRunDir()
        self.arrays, self.n_outputs, self.source, self.start = arrays, n_outputs, source, start
        self.threads = config.training.threads if threads is None else threads
        self.extend = extend  # resume to a different training.epochs (config.toml is rewritten)
        self.registry = registry or get_registry()
        self.reporter = reporter or Reporter()
        self.stop_requested = stop_requested or (lambda: None)
        self._signal: int | None = None

    # ---- set-up ------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        self.loggers = RunLoggers(c, self.registry, self.rundir, self.reporter.note)  # names checked first
        self.prep: Prepared = prepare(c, self.registry, self.arrays, n_outputs=self.n_outputs,
                                      source=self.source)
        m = self.prep.model
        self.engine = Engine(m.sizes, m.activations, m.loss, m.dtype, self.registry, self.threads)
        # threads = 0 (auto): adapt to what the machine gives us (results do not depend on it)
        self.tuner = ThreadTuner(self.engine.threads) if self.threads == 0 else None
        m._engine = self.engine
        self.n_train = len(self.prep.train_idx)
        self.batch = min(c.training.batch_size, self.n_train)
        self.steps_per_epoch = math.ceil(self.n_train / self.batch)
        self.schedule = Schedule(c.optimizer.lr, self.steps_per_epoch, self.steps_per_epoch * c.training.epochs,
                                 c.schedule)
        self.order = EpochOrder(self.prep.train_idx, c.training.seed, c.training.shuffle, c.training.shuffle_block)
        self.stopper = EarlyStopping(c.early_stopping)
        o = c.optimizer
        self.opt = OptimizerSpec(o.name, o.momentum, o.dampening, o.nesterov, o.resolved_weight_decay(),
                                 tuple(o.betas), o.eps)
        self.theta = m.theta
        self.grad = np.zeros_like(self.theta)
        self.opt_state = np.zeros((2, self.theta.size), self.theta.dtype)
        self.state = State()
        if self.start is not None:
            s = self.start
            if s.theta.shape != self.theta.shape:
                raise ConfigError(f"the starting weights have {s.theta.size} parameters, the network "
                                  f"{m.sizes} has {self.theta.size}")
            self.theta[:] = s.theta
            if s.opt_state is not None:
                self.opt_state[:] = s.opt_state
            self.state.step = s.step

    def _compile(self) -> None:
        """This run's kernels compiled (or loaded from the cache) before the first step, visibly and
        interruptibly (compute/warmup.py): zero-step and one-row calls with the loop's own types."""
        c, m = self.config, self.prep.model
        split = self.prep.val or self.prep.test

        def work():
            self.engine.run_steps(self.prep.X, m.mean, m.inv_std, self.prep.y, self.prep.train_idx, 0, 0,
                                  self.batch, self.theta, self.grad, self.opt, self.opt_state, self.schedule.lrs(0, 0),
                                  0, seed=c.training.seed, dropout=c.model.dropout_rates() + [0.0],
                                  clip=c.training.clip_grad_norm, weights=self.prep.w)
            if split is not None:
                self.engine.predict(split.X[:1], m.mean, m.inv_std, self.theta)

        compile_kernels(work, what=f"{', '.join(dict.fromkeys(m.activations))}, {m.dtype}", note=self.reporter.note,
                        compiled=self.engine.compiled, helper=self.engine.compile_helper)

    # ---- checkpoints -------------------------------------------------------------------------
    def _diverged(self, step: int, what: str, lr: float) -> TrainingFailed:
        kept = (f"The last good checkpoint in {self.rundir.checkpoint_dir} is kept; "
                if self.rundir.persistent and self.rundir.checkpoints() else "")
        return TrainingFailed(f"training diverged at epoch {self.state.epoch + 1}, step {step}: {what} "
                              f"(learning rate {lr:.3g}). {kept}lower optimizer.lr or set "
                              "training.clip_grad_norm.")

    def _check_finite(self) -> None:
        """Before anything is saved: an update can overflow the weights to Inf although its loss
        and gradient were finite (the kernels check those), and such weights are never written."""
        if not (np.isfinite(self.theta).all() and np.isfinite(self.opt_state).all()):
            lr = self.schedule.lr(max(self.state.step - 1, 0))
            raise self._diverged(self.state.step, "an update made the weights or optimizer state NaN/Inf", lr)

    def _save(self) -> Path | None:
        self._check_finite()
        self.loggers.flush()  # what was logged before a checkpoint survives a kill after it
        tensors, meta = checkpoint_contents(self.prep.model, self.opt.name, self.opt_state,
                                            self.stopper.best_theta, self.state, self.engine.threads)
        return self.rundir.save_checkpoint(self.state.step, tensors, meta, self.config.checkpoint.keep)

    def _restore(self, path: Path, tensors: dict, meta: dict) -> None:
        """Continue from a checkpoint. Everything is validated before anything is assigned, so a
        CheckpointError leaves the trainer untouched and the caller can try an older checkpoint."""
        r = restore(path, tensors, meta, model=self.prep.model, opt_name=self.opt.name,
                    epochs=self.config.training.epochs, n_train=self.n_train, batch=self.batch)
        self.theta[:] = r.theta
        for i, a in enumerate(r.opt_state):
            self.opt_state[i] = a
        self.stopper.best_theta = r.best_theta
        self.state = r.state
        if not self.state.history:  # the epochs before the checkpoint, as metrics.jsonl recorded them
            by_epoch = {m.get("epoch"): m for m in self.rundir.read_metrics()}
            self.state.history = [by_epoch[e] for e in range(1, self.state.epoch + 1) if e in by_epoch]

    def _newest_checkpoint(self) -> Path | None:
        """Restore the newest checkpoint that reads cleanly and fits this run, and return its path
        (None: there are no checkpoints). Newer unusable ones are skipped, saying so."""
        if not self.rundir.checkpoints():
            return None
        path, _, _, skipped = self.rundir.latest_checkpoint(check=self._restore)
        for bad, why in skipped:
            self.reporter.note(f"skipping unusable checkpoint {bad.name} (falling back to an older one): {why}")
        return path

    # ---- evaluation --------------------------------------------------------------------------
    def _eval(self, split, prefix: str) -> dict:
        if split is None:
            return {}
        try:
            r = self.prep.model.evaluate(split.X, split.y, split.source, encoded=True, weights=split.w)
        except CheckpointError as exc:  # the weights overflow on this split's data
            raise self._diverged(self.state.step, str(exc), self.schedule.lr(self.state.step - 1)) from None
        for key in ("confusion", "n", "weight_sum"):
            r.pop(key, None)
        return {f"{prefix}_{k}": v for k, v in r.items()}

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False, wait_for_lock: bool = False) -> RunResult:
        with self.rundir.lock(wait=wait_for_lock, on_wait=self.reporter.note):
            return self._run(resume)

    def _run(self, resume: bool) -> RunResult:
        if resume:
            check_plugins(self.rundir, self.registry)  # before loading data: names plugin and version
        self._setup()
        if self.prep.model.sample_weights:
            sw = self.prep.model.sample_weights
            self.reporter.note(f"sample weights: {sw['from']} ({sw['rows']:,} training rows, sum {sw['total']:.6g})")
        self._compile()
        found = self._newest_checkpoint() if resume else None
        if found is None:
            if resume:
                self.reporter.note("no checkpoint yet: starting the run from the beginning")
            self.state.epoch_rng = self.order.initial_state()
            if self.start is not None and self.start.rng is not None:
                self.state.epoch_rng = self.start.rng
        if self.extend:
            self._extend()
        elif self.state.finished:
            self.reporter.note(f"nothing to do: the run has finished (epoch {self.state.epoch}); "
                               f"`deltaprop resume {self.rundir.path} --epochs N` trains it further")
        self.rundir.remove_stale_temps()
        self.rundir.write_metrics(self.state.history)  # the history up to the restored checkpoint
        self.reporter.start(self.rundir.path, self.config.training.epochs, self.steps_per_epoch,
                            found.name if found else None)
        summary = model_summary(self.prep.model, self.opt.name, self.opt.momentum)
        self.reporter.summary(summary_text(summary))
        self.loggers.start(self.config, summary, resume, self.state, self.steps_per_epoch)
        rd, status, error = self.rundir, "failed", ""
        try:
            with catch_signals(self._on_signal) if self.rundir.persistent else nullcontext():
                stopped_early = self._loop()
            result = self._finish(stopped_early)
            status = "finished"
            return result
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
            error = str(exc)
            if isinstance(exc, WriteError):  # a full disk or a read-only mount, mid-run: the run failed
                error = (f"{exc}. The run stopped at epoch {self.state.epoch + 1}, step {self.state.step}; its "
                         f"last good checkpoint is kept. Free some space and continue with: deltaprop resume {rd.path}")
                raise TrainingFailed(error) from None
            raise
        finally:
            self.loggers.end(status, rd.model_path if rd.persistent and status == "finished" else None,
                             self.state, error)

    def _extend(self) -> None:
        """Resume to a new epoch count: refuse fewer epochs than trained, reopen a run that ended
        at its old last epoch (not one that stopped early), record the new count."""
        st, epochs, es = self.state, self.config.training.epochs, self.config.early_stopping
        if st.epoch > epochs:
            raise ConfigError(f"--epochs {epochs}: the run has already trained {st.epoch} epochs")
        if st.finished and es.patience and st.bad_epochs >= es.patience:
            self.reporter.note(f"nothing to do: the run stopped early at epoch {st.epoch} "
                               f"({es.monitor} had stopped improving)")
        elif st.epoch < epochs:
            st.finished = False
        self.rundir.write_config(self.config.to_toml())

    def _on_signal(self, signum: int) -> None:
        self._signal = signum

    def _loop(self) -> bool:
        c, st = self.config, self.state
        every_steps = c.checkpoint.every_steps
        prefetch = c.training.shuffle and c.training.shuffle_block > 0 and is_memory_mapped(self.prep.X)
        while st.epoch < c.training.epochs and not st.finished:
            perm, self._next_rng = self.order.draw(st.epoch_rng)
            self.reporter.epoch_start(st.epoch, self.steps_per_epoch, st.pos // self.batch)
            chunk = 8
            while st.pos < self.n_train:
                left = math.ceil((self.n_train - st.pos) / self.batch)
                n = min(chunk, left)
                if every_steps:
                    n = min(n, every_steps - st.step % every_steps)
                if self.tuner:
                    self.engine.threads = self.tuner.choose()
                if prefetch:  # a chunk of about one block, so the next block is read while it trains
                    block = c.training.shuffle_block
                    n = min(n, max(1, block // self.batch))
                    prefetch_blocks(self.prep.X, perm[st.pos:st.pos + n * self.batch + 2 * block], block)
                t0 = time.perf_counter()
                lrs = self.schedule.lrs(st.step, n)
                done, step_loss, step_correct = self.engine.run_steps(
                    self.prep.X, self.prep.model.mean, self.prep.model.inv_std, self.prep.y, perm, st.pos, n,
                    self.batch, self.theta, self.grad, self.opt, self.opt_state, lrs, st.step,
                    seed=c.training.seed, dropout=c.model.dropout_rates() + [0.0],
                    clip=c.training.clip_grad_norm, weights=self.prep.w)
                dt = time.perf_counter() - t0
                rows = np.minimum(self.batch, self.n_train - (st.pos + self.batch * np.arange(done)))
                for v in step_loss[:done] * rows:  # one step at a time: independent of chunking
                    st.loss_sum += float(v)
                self.loggers.steps(st.step, step_loss[:done], lrs[:done], step_correct[:done], rows,
                                   sum(rows) / max(dt, 1e-9), self.prep.model.loss == "cross_entropy")
                if self.prep.w is None:  # a count of rows
                    st.correct += int(step_correct[:done].sum())
                else:  # weighted: each batch's accuracy times its rows, as the loss
                    for v in step_correct[:done]:
                        st.correct += float(v)
                if self.tuner:
                    self.tuner.record(self.engine.threads, dt, int(rows.sum()))
                st.seen += int(rows.sum())
                st.pos += int(rows.sum())
                st.step += done
                st.train_seconds += dt
                if done < n:
                    raise self._diverged(st.step + 1, "the loss or gradient became NaN/Inf", lrs[done])
                acc = st.correct / st.seen if self.prep.model.loss == "cross_entropy" else None
                self.reporter.advance(done, st.loss_sum / st.seen, acc, sum(rows) / max(dt, 1e-9))
                chunk = max(1, min(4096, int(CHUNK_SECONDS / max(dt / done, 1e-7))))
                if every_steps and st.step % every_steps == 0 and st.pos < self.n_train:
                    self._save()
                self._check_stop()
            if self._end_epoch():
                return True
        return False

    def _end_epoch(self) -> bool:
        """Metrics, early stopping and the epoch checkpoint; True when stopping early."""
        c, st = self.config, self.state
        metrics = {"epoch": st.epoch + 1, "step": st.step, "loss": st.loss_sum / st.seen}
        if self.prep.model.loss == "cross_entropy":
            metrics["accuracy"] = st.correct / st.seen
        metrics |= self._eval(self.prep.val, "val") | self._eval(self.prep.test, "test")
        metrics["lr"] = float(self.schedule.lr(st.step - 1))
        metrics["samples_per_s"] = st.seen / max(st.train_seconds, 1e-9)
        st.history.append(metrics)
        self.rundir.append_metrics(metrics)
        self.loggers.epoch(metrics)
        self.reporter.epoch_end(metrics)
        why = self.stopper.update(metrics, st, self.theta)
        if why:
            self.reporter.note(why)
        st.epoch_rng = self._next_rng  # the state after drawing this epoch's permutation
        st.epoch += 1
        st.pos = st.seen = st.correct = 0
        st.loss_sum = st.train_seconds = 0.0
        st.finished = bool(why) or st.epoch >= c.training.epochs
        every = c.checkpoint.every_epochs
        if st.finished or (every and st.epoch % every == 0) or (c.checkpoint.every_steps and
                                                                st.step % c.checkpoint.every_steps == 0):
            self._save()
        self._check_stop()
        return bool(why)

    def _finish(self, stopped_early: bool) -> RunResult:
        model = self.prep.model
        self._check_finite()
        best = self.stopper.final_theta()
        if best is not None:
            model.theta = best
        self.rundir.save_model(model.layer_tensors(), model.metadata())
        return RunResult(self.rundir.path, list(self.state.history), model, stopped_early, self.state,
                         self.opt_state)

    # ---- stopping on signals and requests ----------------------------------------------------
    def _check_stop(self) -> None:
        reason = self.stop_requested()
        if self._signal is not None:
            reason = signal.Signals(self._signal).name
        if not reason:
            return
        where = f"stopped by {reason} at epoch {self.state.epoch + 1}, step {self.state.step}"
        path = self._save()
        if path is None:
            raise Interrupted(where)
        raise Interrupted(f"{where}; checkpoint written to {path}. Continue with: deltaprop resume "
                          f"{self.rundir.path}")
