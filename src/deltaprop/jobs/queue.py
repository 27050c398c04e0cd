"""The durable job queue: one SQLite database under DELTAPROP_HOME (WAL, BEGIN IMMEDIATE).

States: queued -> running -> succeeded | failed | cancelled. A claim takes a lease that the worker
renews by heartbeat; a claim first sends expired leases (killed workers) back to the queue, where
the next attempt resumes from the job's newest checkpoint. Every write a worker makes about a
running job is fenced by (worker id, attempt): a late zombie cannot overwrite a newer attempt.
"""

import os
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .._system import describe, fsync_dir
from .._system import home as default_home
from ..errors import DeltapropError
from ..io.rundir import RunDir

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
    run_dir       TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL DEFAULT 3,
    worker        TEXT,
    lease_until   REAL,
    cancel        INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, id);
"""
COLUMNS = {"id", "name", "status", "run_dir", "attempts", "max_attempts", "worker", "lease_until", "cancel",
           "error", "created_at", "started_at", "finished_at"}
BUSY_TIMEOUT_S = 60.0  # how long a write waits for another process's transaction
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class QueueError(DeltapropError):
    """The queue database is missing, corrupt, locked, or a job does not exist."""


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
            if readonly:
                self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    def _create(self) -> None:
        """A new queue: built complete under a temp name, then linked into place, so queue.db is
        never seen without its tables (an existing file without them is not a queue: refused,
        never overwritten), and of two processes creating it at once one wins."""
        tmp = self.home / f".queue.db.{uuid.uuid4().hex[:12]}.tmp"
        try:
            db = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                db.executescript(SCHEMA)
                db.execute("PRAGMA journal_mode = WAL")
            finally:
                db.close()
            fsync_dir(self.home)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first
        except OSError as exc:
            raise QueueError(f"cannot create the job queue {self.path}: {describe(exc)}") from None
        finally:
            for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                p.unlink(missing_ok=True)

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

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        """mode=ro. In a directory we cannot write, SQLite cannot create the WAL index (-shm) that
        reading a WAL database needs: there, immutable=1 (a snapshot read of the file as it is)."""
        uri = "file:" + quote(str(self.path.resolve())) + "?mode=ro"
        db = self._connect(uri, uri=True)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            if os.access(self.home, os.W_OK):
                raise
        db = self._connect(uri + "&immutable=1", uri=True)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db

    def _error(self, exc: Exception) -> QueueError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            timeout = BUSY_TIMEOUT_S
            if getattr(self, "db", None) is not None:
                timeout = self.db.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
            return QueueError(f"the job queue {self.path} stayed locked for {timeout:g} s by another "
                              "process; nothing was changed, try again")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return QueueError(f"the job queue {self.path} cannot be written ({text}): its file system is "
                              f"read-only, or {self.home} or the file is not writable for you (SQLite also "
                              "writes queue.db-wal and queue.db-shm beside it); nothing was changed")
        if "full" in text:
            return QueueError(f"the job queue {self.path} cannot be written: the disk is full ({text}); "
                              "nothing was changed")
        return QueueError(f"the job queue {self.path} is unreadable ({text}); it was not modified. "
                          "Move it aside to start a new queue.")

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
    def submit(self, name: str, config_toml: str, max_attempts: int = 3) -> Job:
        """Queue a run: its directory gets config.toml now; a worker runs `resume` on it. If the
        job cannot be recorded (a full disk...), the directory made for it is removed again."""
        run_dir = None
        try:
            with self._tx() as db:
                cur = db.execute("INSERT INTO jobs (name, status, run_dir, max_attempts, created_at) "
                                 "VALUES (?, 'queued', '', ?, ?)", (name, max_attempts, time.time()))
                job_id = cur.lastrowid
                run_dir = _new_dir(self.home / "runs", f"job-{job_id:06d}")
                RunDir(run_dir).write_config(config_toml)
                db.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (str(run_dir), job_id))
        except BaseException:
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return self.get(job_id)

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
        with self._tx() as db:
            job = self.get(job_id)
            if job.status == "queued":
                db.execute("UPDATE jobs SET status='cancelled', finished_at=? WHERE id=?", (time.time(), job_id))
            elif job.status == "running":
                db.execute("UPDATE jobs SET cancel=1 WHERE id=?", (job_id,))
            else:
                done = {"succeeded": "has already succeeded", "failed": "has already failed",
                        "cancelled": "is already cancelled"}[job.status]
                raise QueueError(f"job {job_id} {done}: nothing to cancel")
        return self.get(job_id)

    def retry(self, job_id: int) -> Job:
        with self._tx() as db:
            job = self.get(job_id)
            if job.status not in ("failed", "cancelled"):
                raise QueueError(f"job {job_id} is {job.status}: only failed or cancelled jobs can be retried")
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

    def heartbeat(self, job: Job, lease_s: float) -> tuple[bool, bool]:
        """Renew the lease: (still ours, cancel requested)."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET lease_until=? WHERE id=? AND worker=? AND attempts=? "
                             "AND status='running'", (time.time() + lease_s, job.id, job.worker, job.attempts))
            row = db.execute("SELECT cancel FROM jobs WHERE id=?", (job.id,)).fetchone()
        return cur.rowcount == 1, bool(row and row["cancel"])

    def finish(self, job: Job, status: str, error: str | None = None, retry: bool = True) -> bool:
        """Record the end of this attempt (fenced). A failure with attempts left goes back to the
        queue, unless `retry=False` (another attempt cannot succeed)."""
        assert status in ("succeeded", "failed", "cancelled", "queued")
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
