"""The builtin loggers, registered through `register_loggers` like a third-party one.

tensorboard  event files in RUN/tb/ (`pip install 'deltaprop[tensorboard]'`). A resumed run
             first writes a session-start event at the checkpoint's step + 1 (what tensorboardX's
             `purge_step` writes), so TensorBoard drops what the killed attempt logged after the
             checkpoint and the curve continues with no duplicated or missing step.
mlflow       one MLflow run per deltaprop run (`pip install 'deltaprop[mlflow]'`), in
             `logging.mlflow_tracking_uri` (default: $MLFLOW_TRACKING_URI, else a SQLite store
             sqlite:///$DELTAPROP_HOME/mlflow.db with artifacts beside it). Params: the resolved
             config; metrics at their global steps; the model file as an artifact. A resumed run
             logs into the same MLflow run (its id is kept in RUN/mlflow.json), skipping the points
             the store already has, and ends it FINISHED, KILLED (interrupted) or FAILED.

Both name scalars `step/<name>` (every logging.every_steps steps) and `epoch/<name>` (at each
epoch's end, at the epoch's last global step).
"""

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from .._system import atomic_write, home
from .logger import Logger, RunInfo

SKIP = ("epoch", "step")  # keys of an epoch's metrics that are its coordinates, not values


class NeedsRunDir(RuntimeError):
    """This logger writes files and the run has no directory (an in-memory run)."""


class TensorBoardLogger(Logger):
    """Event files through the writer that ships with `tensorboard` (the one torch.utils.tensorboard
    uses): its flush blocks until every queued event is in the file, which tensorboardX's does
    not, so a flush before a checkpoint really makes the points before it survive a SIGKILL."""

    def __init__(self):
        # ImportError (a missing extra) is a config error, before training starts
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self._writer_class, self._event, self._session_log = EventFileWriter, Event, SessionLog
        self._summary, self._text = Summary, text_pb
        self.writer = None

    def _add(self, step: int, **fields) -> None:
        import time
        self.writer.add_event(self._event(wall_time=time.time(), step=step, **fields))

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self._add(step, summary=self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))]))

    def start(self, run: RunInfo) -> None:
        if run.run_dir is None:
            raise NeedsRunDir("tensorboard writes event files into the run directory; this run has none")
        self.writer = self._writer_class(str(run.run_dir / "tb"), flush_secs=30)
        if run.resumed:  # TensorBoard drops the events at and after this step from older files
            self._add(run.step + 1, session_log=self._session_log(status=self._session_log.START))
        else:
            self._add(0, summary=self._text("config", "```\n" + json.dumps(run.config, indent=2) + "\n```"))
            self._add(0, summary=self._text("summary", "```\n" + run.summary.get("text", "") + "\n```"))

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self._scalar(f"step/{k}", v, step)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if k not in SKIP:
                self._scalar(f"epoch/{k}", v, step)

    def flush(self) -> None:
        self.writer.flush()

    def end(self, status: str, model_path: Path | None) -> None:
        self.writer.close()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def flat_params(config: dict) -> dict[str, str]:
    return {f"{section}.{k}": str(v) for section, values in config.items() for k, v in values.items()}


class MLflowLogger(Logger):
    def __init__(self):
        # ImportError (a missing extra) is a config error, before training starts
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." on stderr
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._client_class, self._metric, self._param = MlflowClient, Metric, Param
        self.pending: list = []
        self.have: dict[str, int] = {}  # metric key -> the last step the store already has

    @contextmanager
    def _store_lock(self):
        """Writers of one SQLite store take turns (an flock on DB.lock beside it): two jobs
        starting at once raced to create its tables ("table metrics already exists"), and
        concurrent writes can meet "database is locked"."""
        if not self.uri.startswith("sqlite:///"):
            yield
            return
        import fcntl
        db = Path(self.uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def start(self, run: RunInfo) -> None:
        self.uri = run.options.get("mlflow_tracking_uri") or default_tracking_uri()
        with self._store_lock():
            self._start(run, self.uri)

    def _start(self, run: RunInfo, uri: str) -> None:
        self.client = client = self._client_class(tracking_uri=uri)
        name = run.options.get("mlflow_experiment") or "deltaprop"
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            where = None
            if uri.startswith("sqlite:///"):  # artifacts next to the database, not in the cwd
                where = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            exp_id = client.create_experiment(name, artifact_location=where)
        self.state_path = run.run_dir / "mlflow.json" if run.run_dir is not None else None
        self.run_id = self._existing_run(uri, exp_id) if run.resumed else None
        params = flat_params(run.config)
        if self.run_id is None:
            tags = {"deltaprop.run_dir": str(run.run_dir)} if run.run_dir is not None else {}
            self.run_id = client.create_run(exp_id, run_name=run.name or None, tags=tags).info.run_id
            if self.state_path is not None:
                atomic_write(self.state_path, json.dumps({"tracking_uri": uri, "experiment_id": exp_id,
                                                          "run_id": self.run_id}) + "\n")
            client.log_batch(self.run_id, params=[self._param(k, v) for k, v in params.items()])
            return
        client.update_run(self.run_id, status="RUNNING")
        logged = client.get_run(self.run_id).data
        new = {k: v for k, v in params.items() if k not in logged.params}
        client.log_batch(self.run_id, params=[self._param(k, v) for k, v in new.items()])
        for k, v in params.items():  # params cannot change: a changed one (--epochs) is a tag
            if k in logged.params and logged.params[k] != v:
                client.set_tag(self.run_id, f"resumed.{k}", v)
        for key in logged.metrics:
            self.have[key] = max(m.step for m in client.get_metric_history(self.run_id, key))

    def _existing_run(self, uri: str, exp_id: str) -> str | None:
        """The MLflow run an earlier attempt of this run created, if it is in this store."""
        try:
            saved = json.loads(self.state_path.read_text()) if self.state_path else None
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("tracking_uri") != uri:
            return None
        try:
            found = self.client.get_run(str(saved.get("run_id")))
        except Exception:  # deleted, or another store's id
            return None
        return found.info.run_id if found.info.experiment_id == exp_id else None

    def _add(self, key: str, value: float, step: int) -> None:
        if step > self.have.get(key, -1):
            self.pending.append(self._metric(key, float(value), 0, step))

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self._add(f"step/{k}", v, step)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if k not in SKIP:
                self._add(f"epoch/{k}", v, step)
        self.flush()

    def flush(self) -> None:
        import time
        now = int(time.time() * 1000)
        batch, self.pending = self.pending, []
        if not batch:
            return
        with self._store_lock():
            for i in range(0, len(batch), 1000):  # MLflow's log_batch limit
                chunk = [self._metric(m.key, m.value, now, m.step) for m in batch[i:i + 1000]]
                self.client.log_batch(self.run_id, metrics=chunk)

    def end(self, status: str, model_path: Path | None) -> None:
        self.flush()
        with self._store_lock():
            if model_path is not None:
                self.client.log_artifact(self.run_id, str(model_path))
            state = {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self.client.set_terminated(self.run_id, state)
