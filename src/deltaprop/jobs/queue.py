"""The durable job queue: one SQLite database under DELTAPROP_HOME (WAL, BEGIN IMMEDIATE).

States: queued -> running -> succeeded | failed | cancelled. A claim takes a lease that the worker
renews by heartbeat; a claim first sends expired leases (killed workers) back to the queue, where
the next attempt resumes from the job's newest checkpoint. Every write a worker makes about a
running job is fenced by (worker id, attempt): a late zombie cannot overwrite a newer attempt.
"""

import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

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
                self.home.mkdir(parents=True, exist_ok=True)
                self.db = self._connect(str(self.path))
                if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")
                if not self._has_schema():  # the write lock only to create the tables, once
                    with self._tx():
                        for statement in SCHEMA.split(";"):
                            if statement.strip():
                                self.db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

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

    def _has_schema(self) -> bool:
        return self.db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'jobs'").fetchone()[0] == 1

    def _error(self, exc: Exception) -> QueueError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            timeout = BUSY_TIMEOUT_S
            if getattr(self, "db", None) is not None:
                timeout = self.db.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
            return QueueError(f"the job queue {self.path} stayed locked for {timeout:g} s by another "
                              "process; nothing was changed, try again")
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
            self.db.execute("ROLLBACK")
            raise self._error(exc) from None
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            try:
                self.db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self.db.execute("ROLLBACK")
                raise self._error(exc) from None

    def close(self) -> None:
        self.db.close()

    # ---- users -------------------------------------------------------------------------------
    def submit(self, name: str, config_toml: str, max_attempts: int = 3) -> Job:
        """Queue a run: its directory gets config.toml now; a worker runs `resume` on it."""
        with self._tx() as db:
            cur = db.execute("INSERT INTO jobs (name, status, run_dir, max_attempts, created_at) "
                             "VALUES (?, 'queued', '', ?, ?)", (name, max_attempts, time.time()))
            job_id = cur.lastrowid
            run_dir = _new_dir(self.home / "runs", f"job-{job_id:06d}")
            RunDir(run_dir).write_config(config_toml)
            db.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (str(run_dir), job_id))
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
                raise QueueError(f"job {job_id} is already {job.status}")
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
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = (parent / (name if n == 1 else f"{name}-{n}")).resolve()
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise QueueError(f"cannot create a run directory for {name} under {parent}")
