"""The queue's SQLite file: creating it whole, connecting (read-write or read-only), and turning
SQLite's errors into one clear QueueError. Used by queue.py only."""

import os
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import quote

from .._system import describe, fsync_dir
from ..errors import DeltapropError


class QueueError(DeltapropError):
    """The queue database is missing, corrupt, locked, or a job does not exist."""


def create(home: Path, path: Path, schema: str) -> None:
    """A new queue: built complete under a temp name, then linked into place, so queue.db is
    never seen without its tables (an existing file without them is not a queue: refused,
    never overwritten), and of two processes creating it at once one wins."""
    tmp = home / f".queue.db.{uuid.uuid4().hex[:12]}.tmp"
    try:
        db = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            db.executescript(schema)
            db.execute("PRAGMA journal_mode = WAL")
        finally:
            db.close()
        fsync_dir(home)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first
    except OSError as exc:
        raise QueueError(f"cannot create the job queue {path}: {describe(exc)}") from None
    finally:
        for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            p.unlink(missing_ok=True)


def connect(target: str, timeout: float, uri: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(target, timeout=timeout, isolation_level=None, uri=uri)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return db


def connect_readonly(path: Path, home: Path, timeout: float) -> sqlite3.Connection:
    """mode=ro. In a directory we cannot write, SQLite cannot create the WAL index (-shm) that
    reading a WAL database needs: there, immutable=1 (a snapshot read of the file as it is)."""
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    db = connect(uri, timeout, uri=True)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
        if os.access(home, os.W_OK):
            raise
    db = connect(uri + "&immutable=1", timeout, uri=True)
    db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    return db


def error(exc: Exception, path: Path, home: Path, db: sqlite3.Connection | None, timeout: float) -> QueueError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        if db is not None:
            timeout = db.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
        return QueueError(f"the job queue {path} stayed locked for {timeout:g} s by another "
                          "process; nothing was changed, try again")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return QueueError(f"the job queue {path} cannot be written ({text}): its file system is "
                          f"read-only, or {home} or the file is not writable for you (SQLite also "
                          "writes queue.db-wal and queue.db-shm beside it); nothing was changed")
    if "full" in text:
        return QueueError(f"the job queue {path} cannot be written: the disk is full ({text}); "
                          "nothing was changed")
    return QueueError(f"the job queue {path} is unreadable ({text}); it was not modified. "
                      "Move it aside to start a new queue.")
