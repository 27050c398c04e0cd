"""The durable job queue: one SQLite database under DELTAPROP_HOME (WAL, BEGIN IMMEDIATE).

States: queued -> running -> succeeded | failed | cancelled | pruned (a tune trial its pruner
stopped; `retry` continues it from its checkpoint); the schema and its migration are in schema.py.
A claim takes a lease that the worker renews by heartbeat; a claim first sends expired leases
(killed workers) back to the queue, where the next attempt resumes from the job's newest checkpoint. Every write a worker makes about a
running job is fenced by (worker id, attempt): a late zombie cannot overwrite a newer attempt.
"""

import os
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .._system import describe
from .._system import home as default_home
from ..io.rundir import RunDir
from . import dbfile, schema
from .dbfile import QueueError  # noqa: F401 (re-exported)
from .schema import COLUMNS, SCHEMA, STATES, STOP_CANCEL, STOP_NONE, STOP_PRUNE  # noqa: F401 (re-exported)

BUSY_TIMEOUT_S = 60.0  # how long a write waits for another process's transaction


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    status: str
    run_dir: str
    attempts: int
    max_attempts: int
    worker: str | None
    lease_until: float | None
    cancel: int
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None


class Queue:
    """The queue database. `readonly=True` (jobs list/show/logs) never writes: it opens the file
    with SQLite's `mode=ro`, takes no lock a writer waits for, and works on a read-only copy."""

    def __init__(self, home: Path | None = None, *, create: bool = True, readonly: bool = False):
        self.home = Path(home) if home is not None else default_home()
        self.path = self.home / "queue.db"
        self.readonly = readonly
        if (readonly or not create) and not self.path.exists():
            raise QueueError(f"no job queue at {self.path}: submit a job first (or set DELTAPROP_HOME)")
        try:
            if readonly:
                self.db = self._connect_readonly()
            else:
                try:
                    self.home.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise QueueError(f"cannot create the job queue's directory {self.home}: {describe(exc)}") from None
                if not self.path.exists() and create:
                    self._create()
                self.db = self._connect(str(self.path))
                self._check_schema()  # before anything could write to a file that is not a queue
                if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")
                self._migrate()  # an older queue's schema, in one transaction
            if readonly:
                self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    def _create(self) -> None:
        dbfile.create(self.home, self.path, SCHEMA)

    def _check_schema(self) -> None:
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(jobs)").fetchall()}
        if not cols:
            size = self.path.stat().st_size
            raise QueueError(f"{self.path} is not a deltaprop job queue ("
                             + ("the file is empty" if size == 0 else "it has no jobs table")
                             + "); it was not modified. Move it aside (or set DELTAPROP_HOME) to start a new queue.")
        if cols != COLUMNS:
            missing, extra = sorted(COLUMNS - cols), sorted(cols - COLUMNS)
            raise QueueError(f"{self.path} has a jobs table that is not deltaprop's ("
                             + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                         + ([f"unknown {', '.join(extra)}"] if extra else []))
                             + "); it was not modified.")
        if schema.version(self.db) > schema.VERSION:
            raise QueueError(f"{self.path} was written by a newer deltaprop (queue version "
                             f"{schema.version(self.db)}, this one knows {schema.VERSION}); it was not modified. "
                             "Upgrade deltaprop to use it.")

    def _migrate(self) -> None:
        try:
            schema.migrate(self.db)
        except sqlite3.DatabaseError as exc:
            error = self._error(exc)
            if "unreadable" not in str(error):  # locked, full disk, read-only: say that
                raise error from None
            raise QueueError(f"cannot migrate the job queue {self.path} to version {schema.VERSION} ({exc}); "
                             "it was not modified") from None

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        return dbfile.connect(target, BUSY_TIMEOUT_S, uri)

    def _connect_readonly(self) -> sqlite3.Connection:
        return dbfile.connect_readonly(self.path, self.home, BUSY_TIMEOUT_S)

    def _error(self, exc: Exception) -> QueueError:
        return dbfile.error(exc, self.path, self.home, getattr(self, "db", None), BUSY_TIMEOUT_S)

    @contextmanager
    def _tx(self):
        """One BEGIN IMMEDIATE transaction (the write lock is taken up front, so no deadlock)."""
        if self.readonly:
            raise QueueError(f"the job queue {self.path} was opened read-only; nothing was changed")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        try:
            yield self.db
        except sqlite3.DatabaseError as exc:
            self._rollback()
            raise self._error(exc) from None
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self.db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._rollback()
                raise self._error(exc) from None

    def _rollback(self) -> None:
        """ROLLBACK, unless SQLite already rolled back itself (it does on a full disk, and a second
        ROLLBACK fails with "cannot rollback - no transaction is active")."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass

    def close(self) -> None:
        self.db.close()

    # ---- users -------------------------------------------------------------------------------
    def submit(self, name: str, config_toml: str, max_attempts: int = 3, run_dir: Path | None = None,
               unique: bool = False) -> Job:
        """Queue a run: its directory gets config.toml now; a worker runs `resume` on it. If the
        job cannot be recorded (a full disk...), the directory made for it is removed again.
        `run_dir`: this directory (made if missing; it must hold no run yet) instead of a new
        runs/job-NNNNNN. `unique`: if a job of this name exists, return it and queue nothing (the
        look-up and the insert are one transaction: exactly one job per name)."""
        made = None
        try:
            with self._tx() as db:
                if unique:
                    row = db.execute("SELECT id FROM jobs WHERE name = ? ORDER BY id LIMIT 1", (name,)).fetchone()
                    if row is not None:
                        return self.get(row["id"])
                cur = db.execute("INSERT INTO jobs (name, status, run_dir, max_attempts, created_at) "
                                 "VALUES (?, 'queued', '', ?, ?)", (name, max_attempts, time.time()))
                job_id = cur.lastrowid
                if run_dir is None:
                    made = path = _new_dir(self.home / "runs", f"job-{job_id:06d}")
                else:
                    path = Path(run_dir).resolve()
                    made = _own_dir(path)
                    if RunDir(path).holds_run():
                        raise QueueError(f"cannot queue {name}: {path} already holds a run")
                RunDir(path).write_config(config_toml)
                db.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (str(path), job_id))
        except BaseException:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise
        return self.get(job_id)

    def find(self, name: str) -> Job | None:
        """The (first) job of this name, or None."""
        try:
            row = self.db.execute("SELECT * FROM jobs WHERE name = ? ORDER BY id LIMIT 1", (name,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        return Job(**dict(row)) if row else None

    def get(self, job_id: int) -> Job:
        try:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        if row is None:
            raise QueueError(f"no job {job_id} in {self.path}")
        return Job(**dict(row))

    def list(self, status: str | None = None) -> list[Job]:
        try:
            if status:
                rows = self.db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY id", (status,))
            else:
                rows = self.db.execute("SELECT * FROM jobs ORDER BY id")
            return [Job(**dict(r)) for r in rows.fetchall()]
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    def cancel(self, job_id: int) -> Job:
        """Queued: cancelled now. Running: flagged; the worker stops it at the next step boundary."""
        return self._stop(job_id, "cancelled", STOP_CANCEL)

    def prune(self, job_id: int) -> Job:
        """What a tuner's pruner asks: like cancel, but the job ends `pruned` (continuable by
        `retry`). A job that has already ended is left as it is (its result stands)."""
        return self._stop(job_id, "pruned", STOP_PRUNE, done_ok=True)

    def _stop(self, job_id: int, ended: str, request: int, done_ok: bool = False) -> Job:
        with self._tx() as db:
            job = self.get(job_id)
            if job.status == "queued":
                db.execute("UPDATE jobs SET status=?, finished_at=? WHERE id=?", (ended, time.time(), job_id))
            elif job.status == "running":
                db.execute("UPDATE jobs SET cancel=? WHERE id=? AND cancel=0", (request, job_id))
            elif not done_ok:
                done = {"succeeded": "has already succeeded", "failed": "has already failed",
                        "cancelled": "is already cancelled", "pruned": "is already pruned"}[job.status]
                raise QueueError(f"job {job_id} {done}: nothing to cancel")
        return self.get(job_id)

    def retry(self, job_id: int) -> Job:
        with self._tx() as db:
            job = self.get(job_id)
            if job.status not in ("failed", "cancelled", "pruned"):
                raise QueueError(f"job {job_id} is {job.status}: only failed or cancelled jobs, or pruned "
                                 "trials, can be retried")
            if job.status == "pruned" and os.path.isdir(job.run_dir):
                RunDir(job.run_dir).write_gate(None)  # a continued trial: no pruner's rung holds it
            db.execute("UPDATE jobs SET status='queued', attempts=0, cancel=0, error=NULL, worker=NULL, "
                       "lease_until=NULL, finished_at=NULL WHERE id=?", (job_id,))
        return self.get(job_id)

    # ---- workers -----------------------------------------------------------------------------
    def claim(self, worker: str, lease_s: float) -> Job | None:
        """Requeue other workers' expired leases, then take the oldest queued job (or None).
        (A worker's own jobs are never requeued by its claims: a stalled worker that wakes up
        renews them by heartbeat instead of racing itself.)"""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET status='queued', worker=NULL, lease_until=NULL, "
                       "error='lease expired (worker lost)' WHERE status='running' AND lease_until < ? "
                       "AND attempts < max_attempts AND worker IS NOT ?", (now, worker))
            db.execute("UPDATE jobs SET status='failed', finished_at=?, "
                       "error='lease expired (worker lost) on the last allowed attempt' "
                       "WHERE status='running' AND lease_until < ? AND worker IS NOT ?", (now, now, worker))
            row = db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status='running', attempts=attempts+1, worker=?, lease_until=?, "
                       "started_at=COALESCE(started_at, ?) WHERE id=?", (worker, now + lease_s, now, row["id"]))
        return self.get(row["id"])

    def heartbeat(self, job: Job, lease_s: float) -> tuple[bool, int]:
        """Renew the lease: (still ours, the stop request: STOP_NONE, STOP_CANCEL or STOP_PRUNE)."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET lease_until=? WHERE id=? AND worker=? AND attempts=? "
                             "AND status='running'", (time.time() + lease_s, job.id, job.worker, job.attempts))
            row = db.execute("SELECT cancel FROM jobs WHERE id=?", (job.id,)).fetchone()
        return cur.rowcount == 1, int(row["cancel"]) if row else STOP_NONE

    def stop_requests(self, worker: str) -> dict[int, int]:
        """{job id: stop request} of this worker's running jobs that have one (a read: no lock)."""
        try:
            rows = self.db.execute("SELECT id, cancel FROM jobs WHERE worker=? AND status='running' AND cancel!=0",
                                   (worker,)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        return {r["id"]: int(r["cancel"]) for r in rows}

    def finish(self, job: Job, status: str, error: str | None = None, retry: bool = True) -> bool:
        """Record the end of this attempt (fenced). A failure with attempts left goes back to the
        queue, unless `retry=False` (another attempt cannot succeed)."""
        assert status in ("succeeded", "failed", "cancelled", "pruned", "queued")
        with self._tx() as db:
            if status == "failed" and retry and job.attempts < job.max_attempts:
                status = "queued"
            finished = time.time() if status != "queued" else None
            cur = db.execute("UPDATE jobs SET status=?, error=?, finished_at=?, worker=NULL, lease_until=NULL "
                             "WHERE id=? AND worker=? AND attempts=? AND status='running'",
                             (status, error, finished, job.id, job.worker, job.attempts))
        return cur.rowcount == 1

    def release(self, job: Job) -> bool:
        """Give a job back without spending an attempt (graceful drain)."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET status='queued', attempts=attempts-1, worker=NULL, lease_until=NULL "
                             "WHERE id=? AND worker=? AND attempts=? AND status='running'",
                             (job.id, job.worker, job.attempts))
        return cur.rowcount == 1

    def pending(self) -> int:
        try:
            row = self.db.execute("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued','running')").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        return int(row["n"])


def _own_dir(path: Path) -> Path | None:
    """Make `path` (and its parents); the directory if this call made it, else None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        return path
    except FileExistsError:
        return None
    except OSError as exc:
        raise QueueError(f"cannot create the run directory {path}: {describe(exc)}") from None


def _new_dir(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-2, -3... if a directory of that name is left from an old queue."""
    for n in range(1, 10_000):
        path = (parent / (name if n == 1 else f"{name}-{n}")).resolve()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise QueueError(f"cannot create the run directory {path}: {describe(exc)}") from None
    raise QueueError(f"cannot create a run directory for {name} under {parent}")
