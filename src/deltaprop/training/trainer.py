"""The training loop: epochs of compiled steps, metrics, checkpoints, early stopping, resume.

    result = train_run(config, run_dir)      # a new run
    result = resume_run(run_dir)             # continue from the newest valid checkpoint
    result = Trainer(config, None, arrays=(X, y), start=Start(theta, ...)).run()   # in memory

Without a run directory (`run_dir=None`, the scikit-learn estimators) a run writes no files,
takes no lock and installs no signal handlers; `start` continues from given weights, optimizer
state, step and RNG state (warm starts, partial fits), and the result carries them back out.

Python runs once per *chunk* of steps (sized to ~0.25 s), never per minibatch: the compiled
`run_steps` does gather, forward, loss, backward and update for every step of the chunk. Chunks end
on checkpoint boundaries. Everything that decides the next step — weights, optimizer state, global
step, epoch, position in the epoch's permutation, the shuffling RNG state at the epoch's start,
early-stopping state — is in each checkpoint, so a resumed run is bit-identical to an
uninterrupted one.
"""

import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError, PluginError, TrainingFailed
from ..io.safetensors import latest_valid, list_checkpoints, read_safetensors, save_checkpoint
from .config import Config
from ..io.datasets import is_memory_mapped, prefetch_rows
from ..compute.engine import Engine, OptimizerSpec
from .model import Model
from .prepare import Prepared, prepare
from .rundir import lock_run_dir, prepare_run_dir, read_run_config
from .schedule import lrs_for
from .state import State, state_from_checkpoint
from .threads import ThreadTuner

CHUNK_SECONDS = 0.25
OPT_STATE_NAMES = {"sgd": ("optimizer.momentum_buffer",), "adam": ("optimizer.exp_avg", "optimizer.exp_avg_sq"),
                   "adamw": ("optimizer.exp_avg", "optimizer.exp_avg_sq")}


class Reporter:
    """Progress callbacks; this base class is silent (the CLI draws bars or lines)."""

    def start(self, run_dir: Path, epochs: int, steps_per_epoch: int, resumed: str | None): ...
    def epoch_start(self, epoch: int, steps: int, done: int): ...
    def advance(self, steps: int, loss: float, accuracy: float | None, samples_per_s: float): ...
    def epoch_end(self, metrics: dict): ...
    def note(self, text: str): ...


@dataclass
class RunResult:
    run_dir: Path | None
    metrics: list[dict]
    model: Model
    stopped_early: bool = False
    state: "State | None" = None  # where the run ended (step, RNG state, early-stopping state)
    opt_state: np.ndarray | None = None  # (2, P) optimizer state after the last step


@dataclass
class Start:
    """Where a run without a checkpoint starts: a previous run's weights and optimizer."""

    theta: np.ndarray  # flat parameters (kernels/network.py layout)
    opt_state: np.ndarray | None = None  # (2, P); None: fresh
    step: int = 0  # optimizer steps already taken (Adam's bias correction continues from it)
    rng: dict | None = None  # shuffling RNG state to continue from; None: from the seed


def _metric_is_loss(monitor: str) -> bool:
    return monitor.endswith("loss")




class Trainer:
    def __init__(self, config: Config, run_dir: Path | None, *, registry=None, reporter: Reporter | None = None,
                 stop_requested=None, arrays: tuple | None = None, n_outputs: int | None = None,
                 source: str = "arrays", start: Start | None = None):
        from ..plugins.manager import get_registry
        self.config, self.run_dir = config, None if run_dir is None else Path(run_dir)
        self.arrays, self.n_outputs, self.source, self.start = arrays, n_outputs, source, start
        self.registry = registry or get_registry()
        self.reporter = reporter or Reporter()
        self.stop_requested = stop_requested or (lambda: None)
        self._signal: int | None = None

    # ---- set-up ------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        self.prep: Prepared = prepare(c, self.registry, self.arrays, n_outputs=self.n_outputs,
                                      source=self.source)
        m = self.prep.model
        threads = int(os.environ.get("DELTAPROP_THREADS", "0") or 0) or c.training.threads
        self.engine = Engine(m.sizes, m.activations, m.loss, m.dtype, self.registry, threads)
        # threads = 0 (auto): adapt to what the machine gives us (results do not depend on it)
        self.tuner = ThreadTuner(self.engine.threads) if threads == 0 else None
        m._engine = self.engine
        self.n_train = len(self.prep.train_idx)
        self.batch = min(c.training.batch_size, self.n_train)
        self.steps_per_epoch = math.ceil(self.n_train / self.batch)
        self.total_steps = self.steps_per_epoch * c.training.epochs
        o = c.optimizer
        self.opt = OptimizerSpec(o.name, o.momentum, o.dampening, o.nesterov, o.resolved_weight_decay(),
                                 tuple(o.betas), o.eps)
        self.theta = m.theta
        self.grad = np.zeros_like(self.theta)
        self.opt_state = np.zeros((2, self.theta.size), self.theta.dtype)
        self.best_theta: np.ndarray | None = None
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

    def _draw(self) -> tuple[np.ndarray, dict]:
        """This epoch's order of training rows, and the RNG state after drawing it.

        training.shuffle_block = N > 0 shuffles blocks of N consecutive rows, then the rows within
        each block: every block is read from one contiguous stretch of the file, so a memory-mapped
        dataset larger than RAM streams instead of faulting in one random page per row.
        """
        rng = np.random.default_rng(self.config.training.seed)
        rng.bit_generator.state = self.state.epoch_rng
        n, block = self.n_train, self.config.training.shuffle_block
        if not self.config.training.shuffle:
            order = np.arange(n)
        elif block:
            starts = np.arange(0, n, block)[rng.permutation((n + block - 1) // block)]
            order = np.concatenate([s + rng.permutation(min(block, n - s)) for s in starts])
        else:
            order = rng.permutation(n)
        return self.prep.train_idx[order], rng.bit_generator.state

    def _perm(self) -> np.ndarray:
        return self._draw()[0]

    def _advance_rng(self) -> None:
        """RNG state for the next epoch: the state after drawing this epoch's permutation."""
        self.state.epoch_rng = self._draw()[1]

    # ---- checkpoints -------------------------------------------------------------------------
    def _diverged(self, step: int, what: str, lr: float) -> TrainingFailed:
        kept = (f"The last good checkpoint in {self.run_dir / 'checkpoints'} is kept; "
                if self.run_dir is not None else "")
        return TrainingFailed(f"training diverged at epoch {self.state.epoch + 1}, step {step}: {what} "
                              f"(learning rate {lr:.3g}). {kept}lower optimizer.lr or set "
                              "training.clip_grad_norm.")

    def _check_finite(self) -> None:
        """Before anything is saved: an update can overflow the weights to Inf although its loss
        and gradient were finite (the kernels check those), and such weights are never written."""
        if not (np.isfinite(self.theta).all() and np.isfinite(self.opt_state).all()):
            c, st = self.config, self.state
            lr = lrs_for(max(st.step - 1, 0), 1, c.optimizer.lr, self.steps_per_epoch, self.total_steps,
                         c.schedule)[0]
            raise self._diverged(st.step, "an update made the weights or optimizer state NaN/Inf", lr)

    def _save(self) -> Path | None:
        if self.run_dir is None:
            return None
        self._check_finite()
        m = self.prep.model
        tensors = m.layer_tensors()
        for i, name in enumerate(OPT_STATE_NAMES[self.opt.name]):
            tensors[name] = self.opt_state[i]
        if self.best_theta is not None:
            tensors["early_stopping.best_theta"] = self.best_theta
        meta = m.metadata() | {"kind": "checkpoint", "state": self.state.__dict__,
                               "threads": self.engine.threads}
        return save_checkpoint(self.run_dir / "checkpoints", self.state.step, tensors, meta,
                               self.config.checkpoint.keep)

    def _restore(self, path: Path, tensors: dict, meta: dict) -> None:
        """Continue from a checkpoint. Everything is validated before anything is assigned, so a
        CheckpointError leaves the trainer untouched and the caller can try an older checkpoint."""
        restored = Model.from_parts(tensors, meta, str(path))
        if restored.sizes != self.prep.model.sizes:
            raise CheckpointError(f"{path}: layer sizes {restored.sizes} do not match the run's config")
        n = self.theta.size
        opt = []
        for name in OPT_STATE_NAMES[self.opt.name]:
            a = tensors.get(name)
            if a is None:
                raise CheckpointError(f"{path}: missing optimizer tensor {name}")
            if a.shape != (n,) or a.dtype.kind != "f" or not np.isfinite(a).all():
                raise CheckpointError(f"{path}: optimizer tensor {name} must be {n} finite numbers, "
                                      f"got shape {a.shape} {a.dtype}")
            opt.append(a)
        best = tensors.get("early_stopping.best_theta")
        if best is not None and (best.shape != (n,) or best.dtype.kind != "f" or not np.isfinite(best).all()):
            raise CheckpointError(f"{path}: early_stopping.best_theta must be {n} finite numbers, "
                                  f"got shape {best.shape} {best.dtype}")
        state = state_from_checkpoint(meta.get("state"), path, epochs=self.config.training.epochs,
                                      n_train=self.n_train, batch=self.batch)
        self.theta[:] = restored.theta
        for i, a in enumerate(opt):
            self.opt_state[i] = a
        self.best_theta = None if best is None else best.astype(self.theta.dtype)
        self.state = state

    # ---- evaluation --------------------------------------------------------------------------
    def _eval(self, split, prefix: str) -> dict:
        if split is None:
            return {}
        r = self.prep.model.evaluate(split.X, split.y, split.source)
        r.pop("confusion", None)
        r.pop("n", None)
        return {f"{prefix}_{k}": v for k, v in r.items()}

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> RunResult:
        if self.run_dir is None:
            return self._run(False)
        with lock_run_dir(self.run_dir):
            return self._run(resume)

    def _run(self, resume: bool) -> RunResult:
        if resume:
            self._check_plugins()  # before loading data: a missing plugin is named with its version
        self._setup()
        found = self._newest_checkpoint() if resume else None
        if found is None:
            if resume:
                self.reporter.note("no checkpoint yet: starting the run from the beginning")
            self.state.epoch_rng = np.random.default_rng(self.config.training.seed).bit_generator.state
            if self.start is not None and self.start.rng is not None:
                self.state.epoch_rng = self.start.rng
        self._write_metrics_file()
        self.reporter.start(self.run_dir, self.config.training.epochs, self.steps_per_epoch,
                            found.name if found else None)
        with self._signals() if self.run_dir is not None else _nothing():
            stopped_early = self._loop()
        return self._finish(stopped_early)

    def _check_plugins(self) -> None:
        """A PluginError naming plugin and version if the newest readable checkpoint's activations
        are not all registered."""
        for path in reversed(list_checkpoints(self.run_dir / "checkpoints")):
            try:
                _, meta = read_safetensors(path)
            except CheckpointError:
                continue
            plugins = meta.get("plugins")
            for name, info in plugins.items() if isinstance(plugins, dict) else ():
                if name not in self.registry.activations:
                    info = info if isinstance(info, dict) else {}
                    raise PluginError(
                        f"checkpoint {path} uses activation {name!r} from plugin {info.get('source')} "
                        f"{info.get('version')}, which is not installed or failed to load "
                        f"(`deltaprop plugins list` shows why); install it to resume this run")
            return

    def _newest_checkpoint(self) -> Path | None:
        """Restore the newest checkpoint that reads cleanly and fits this run, and return its path
        (None: there are no checkpoints). Newer unusable ones are skipped, saying so."""
        ckpt_dir = self.run_dir / "checkpoints"
        if not list_checkpoints(ckpt_dir):
            return None
        path, _, _, skipped = latest_valid(ckpt_dir, check=self._restore)
        for bad, why in skipped:
            self.reporter.note(f"skipping unusable checkpoint {bad.name} (falling back to an older one): {why}")
        return path

    def _loop(self) -> bool:
        c, st = self.config, self.state
        every_steps = c.checkpoint.every_steps
        prefetch = c.training.shuffle and c.training.shuffle_block > 0 and is_memory_mapped(self.prep.X)
        while st.epoch < c.training.epochs and not st.finished:
            perm = self._perm()
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
                    n = min(n, max(1, c.training.shuffle_block // self.batch))
                    self._prefetch(perm, st.pos, n)
                t0 = time.perf_counter()
                lrs = lrs_for(st.step, n, c.optimizer.lr, self.steps_per_epoch, self.total_steps, c.schedule)
                done, step_loss, step_correct = self.engine.run_steps(
                    self.prep.X, self.prep.model.mean, self.prep.model.inv_std, self.prep.y, perm, st.pos, n,
                    self.batch, self.theta, self.grad, self.opt, self.opt_state, lrs, st.step,
                    seed=c.training.seed, dropout=c.model.dropout_rates() + [0.0],
                    clip=c.training.clip_grad_norm)
                dt = time.perf_counter() - t0
                rows = np.minimum(self.batch, self.n_train - (st.pos + self.batch * np.arange(done)))
                for v in step_loss[:done] * rows:  # one step at a time: independent of chunking
                    st.loss_sum += float(v)
                st.correct += int(step_correct[:done].sum())
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

    def _prefetch(self, perm: np.ndarray, pos: int, n_steps: int) -> None:
        """Memory-mapped data shuffled by `shuffle_block`: have the kernel read this chunk's blocks
        and the next one now, each as one sequential read, instead of faulting in one page per
        row in shuffled order. (Rows in file order need nothing: the kernel reads ahead itself.)"""
        block = self.config.training.shuffle_block
        window = perm[pos:pos + n_steps * self.batch + 2 * block]
        keys = window // block
        for k in np.unique(keys):
            rows = window[keys == k]
            prefetch_rows(self.prep.X, int(rows.min()), int(rows.max()) + 1)

    def _end_epoch(self) -> bool:
        """Metrics, early stopping and the epoch checkpoint; True when stopping early."""
        c, st = self.config, self.state
        metrics = {"epoch": st.epoch + 1, "step": st.step, "loss": st.loss_sum / st.seen}
        if self.prep.model.loss == "cross_entropy":
            metrics["accuracy"] = st.correct / st.seen
        metrics |= self._eval(self.prep.val, "val") | self._eval(self.prep.test, "test")
        metrics["lr"] = float(lrs_for(st.step - 1, 1, c.optimizer.lr, self.steps_per_epoch,
                                      self.total_steps, c.schedule)[0])
        metrics["samples_per_s"] = st.seen / max(st.train_seconds, 1e-9)
        st.history.append(metrics)
        self._append_metrics(metrics)
        self.reporter.epoch_end(metrics)
        stop = self._early_stopping(metrics)
        self._advance_rng()
        st.epoch += 1
        st.pos = st.seen = st.correct = 0
        st.loss_sum = st.train_seconds = 0.0
        st.finished = stop or st.epoch >= c.training.epochs
        every = c.checkpoint.every_epochs
        if st.finished or (every and st.epoch % every == 0) or (c.checkpoint.every_steps and
                                                                st.step % c.checkpoint.every_steps == 0):
            self._save()
        self._check_stop()
        return stop

    def _early_stopping(self, metrics: dict) -> bool:
        es, st = self.config.early_stopping, self.state
        if not es.patience:
            return False
        key = es.monitor if es.monitor in metrics else es.monitor.replace("train_", "")
        value = metrics[key]
        sign = 1.0 if _metric_is_loss(es.monitor) else -1.0  # compared as "lower is better"
        v, best = sign * value, None if st.best is None else sign * st.best
        if es.best == "running":  # scikit-learn's tol rule (its comparisons are not strict)
            improved = best is None or v <= best - es.min_delta
            new_best = best is None or v < best
        else:
            improved = new_best = best is None or v < best - es.min_delta
        if new_best:
            st.best, st.best_epoch = value, st.epoch + 1
            if es.restore_best:
                self.best_theta = self.theta.copy()
        st.bad_epochs = 0 if improved else st.bad_epochs + 1
        if st.bad_epochs >= es.patience:
            self.reporter.note(f"early stopping after epoch {st.epoch + 1}: {es.monitor} has not improved "
                               f"for {es.patience} epochs (best {st.best:.4g} at epoch {st.best_epoch})")
            return True
        return False

    def _finish(self, stopped_early: bool) -> RunResult:
        es = self.config.early_stopping
        model = self.prep.model
        self._check_finite()
        if es.patience and es.restore_best and self.best_theta is not None:
            model.theta = self.best_theta.copy()
        if self.run_dir is not None:
            model.save(self.run_dir / "model.safetensors")
        return RunResult(self.run_dir, list(self.state.history), model, stopped_early, self.state,
                         self.opt_state)

    # ---- metrics file ------------------------------------------------------------------------
    def _write_metrics_file(self) -> None:
        """metrics.jsonl = the history up to the restored checkpoint (rewritten atomically)."""
        if self.run_dir is None:
            return
        path = self.run_dir / "metrics.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in self.state.history))
        os.replace(tmp, path)

    def _append_metrics(self, metrics: dict) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")

    # ---- stopping on signals and requests ----------------------------------------------------
    def _check_stop(self) -> None:
        reason = self.stop_requested()
        if self._signal is not None:
            reason = signal.Signals(self._signal).name
        if reason and self.run_dir is None:
            raise Interrupted(f"stopped by {reason} at epoch {self.state.epoch + 1}, step {self.state.step}")
        if reason:
            path = self._save()
            raise Interrupted(f"stopped by {reason} at epoch {self.state.epoch + 1}, step {self.state.step}; "
                              f"checkpoint written to {path}. Continue with: deltaprop resume {self.run_dir}")

    def _signals(self):
        trainer = self

        class _Handlers:
            def __enter__(self):
                self.old = {}
                if threading.current_thread() is threading.main_thread():
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        self.old[sig] = signal.signal(sig, lambda s, f: setattr(trainer, "_signal", s))

            def __exit__(self, *exc):
                for sig, handler in self.old.items():
                    signal.signal(sig, handler)

        return _Handlers()


@contextmanager
def _nothing():
    yield


class Interrupted(TrainingFailed):
    """Stopped on a signal or request after writing a checkpoint."""


def train_run(config: Config, run_dir: Path, **kwargs) -> RunResult:
    """Start a new run in `run_dir` (which must not hold one already)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    with lock_run_dir(run_dir):  # before config.toml is looked at or written
        prepare_run_dir(config, run_dir)
        return Trainer(config, run_dir, **kwargs)._run(False)


def resume_run(run_dir: Path, **kwargs) -> RunResult:
    """Continue a run from its newest valid checkpoint to the configured end."""
    run_dir = Path(run_dir)
    return Trainer(read_run_config(run_dir), run_dir, **kwargs).run(resume=True)
