"""The queue's schema versions (jobs/schema.py): a queue made before the `pruned` state migrates
when opened, losing no job and keeping the id counter; a migration that fails leaves the file as
it was; a queue from a newer deltaprop is refused untouched. And the new state itself: prune
requests, `pruned`, retry, submit-once by name."""

import sqlite3
import time

import pytest

from deltaprop.jobs import schema
from deltaprop.jobs.queue import STOP_PRUNE, Queue, QueueError

TOML = "[training]\nepochs = 1\n"
V0_TABLE = """
CREATE TABLE jobs (
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


def _old_queue(home):
    """A version-0 queue as deltaprop 0.1 wrote it: a job in every state, the highest ids deleted
    (so the AUTOINCREMENT counter is above the largest id left)."""
    home.mkdir(parents=True)
    db = sqlite3.connect(home / "queue.db", isolation_level=None)
    db.executescript(V0_TABLE)
    db.execute("PRAGMA journal_mode = WAL")
    now = time.time()
    for i, status in enumerate(("queued", "running", "succeeded", "failed", "cancelled", "queued", "queued")):
        db.execute("INSERT INTO jobs (name, status, run_dir, attempts, worker, lease_until, cancel, error, created_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (f"job{i}", status, str(home / f"r{i}"), i % 3, "w" if status == "running" else None,
                    now + 60 if status == "running" else None, 1 if i == 1 else 0, "boom" if status == "failed" else None,
                    now + i))
    db.execute("DELETE FROM jobs WHERE id >= 6")
    db.close()
    return home / "queue.db"


def _dump(path):
    db = sqlite3.connect(path)
    try:
        return (db.execute("SELECT * FROM jobs ORDER BY id").fetchall(),
                db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall(),
                db.execute("PRAGMA user_version").fetchone()[0],
                db.execute("SELECT seq FROM sqlite_sequence").fetchall())
    finally:
        db.close()


def test_an_old_queue_migrates_without_losing_a_job(tmp_path):
    path = _old_queue(tmp_path / "home")
    rows, _, version, seq = _dump(path)
    assert version == 0 and len(rows) == 5 and seq == [(7,)]
    q = Queue(tmp_path / "home")
    after_rows, sql, version, _ = _dump(path)
    assert version == schema.VERSION and after_rows == rows
    assert any("'pruned'" in (s or "") for (s,) in sql)
    assert q.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the counter survived: a new job does not reuse the deleted ids 6 and 7
    assert q.submit("new", TOML).id == 8
    # and the new state works on the migrated queue
    job = q.claim("w2", 30.0)
    assert job.id == 1
    assert q.prune(job.id).cancel == STOP_PRUNE
    assert q.finish(job, "pruned", "pruned by the tuner") and q.get(1).status == "pruned"
    q.close()
    assert Queue(tmp_path / "home").get(2).cancel == 1  # opening again: no second migration, rows kept
    assert _dump(path)[2] == schema.VERSION


def test_a_failed_migration_leaves_the_queue_untouched(tmp_path, monkeypatch):
    path = _old_queue(tmp_path / "home")
    before = _dump(path)
    real = schema._steps
    # fail after the old table is dropped and the new one renamed: everything must roll back
    monkeypatch.setattr(schema, "_steps", lambda db: real(db)[:4] + ["INSERT INTO no_such_table VALUES (1)"])
    with pytest.raises(QueueError, match=r"cannot migrate the job queue .*queue\.db to version 1 .*no such table.*"
                                         r"it was not modified"):
        Queue(tmp_path / "home")
    assert _dump(path) == before
    monkeypatch.setattr(schema, "_steps", real)
    assert [j.name for j in Queue(tmp_path / "home").list()] == [f"job{i}" for i in range(5)]


def test_a_queue_from_a_newer_deltaprop_is_refused(tmp_path):
    Queue(tmp_path / "home").submit("a", TOML)
    db = sqlite3.connect(tmp_path / "home" / "queue.db", isolation_level=None)
    db.execute("PRAGMA user_version = 9")
    db.close()
    before = _dump(tmp_path / "home" / "queue.db")
    with pytest.raises(QueueError, match="written by a newer deltaprop .*version 9.*not modified"):
        Queue(tmp_path / "home")
    assert _dump(tmp_path / "home" / "queue.db") == before


def test_read_only_opening_of_an_old_queue_does_not_migrate_it(tmp_path):
    path = _old_queue(tmp_path / "home")
    before = _dump(path)
    assert [j.status for j in Queue(tmp_path / "home", readonly=True).list()][:2] == ["queued", "running"]
    assert _dump(path) == before


def test_prune_requests_and_the_pruned_state(tmp_path):
    q = Queue(tmp_path / "home")
    a, b = q.submit("a", TOML), q.submit("b", TOML)
    assert q.prune(b.id).status == "pruned"  # queued: pruned at once, never claimed
    running = q.claim("w", 30.0)
    assert running.id == a.id
    assert q.stop_requests("w") == {}
    q.prune(a.id)
    assert q.stop_requests("w") == {a.id: STOP_PRUNE} and q.stop_requests("other") == {}
    assert q.heartbeat(running, 30.0) == (True, STOP_PRUNE)
    assert q.cancel(a.id).cancel == STOP_PRUNE  # a later cancel does not overwrite the prune request
    assert q.finish(running, "pruned", "pruned by the tuner")
    assert q.prune(a.id).status == "pruned"  # an ended job is left as it is
    with pytest.raises(QueueError, match="is already pruned"):
        q.cancel(a.id)
    again = q.retry(a.id)
    assert (again.status, again.cancel, again.attempts) == ("queued", 0, 0)
    assert q.claim("w", 30.0).id == a.id and q.pending() == 1


def test_submit_unique_queues_one_job_per_name_into_the_given_directory(tmp_path):
    q = Queue(tmp_path / "home")
    run_dir = tmp_path / "study" / "trial-0"
    first = q.submit("tune-1-trial-0", TOML, run_dir=run_dir, unique=True)
    assert first.run_dir == str(run_dir.resolve()) and (run_dir / "config.toml").read_text() == TOML
    again = q.submit("tune-1-trial-0", "[training]\nepochs = 2\n", run_dir=run_dir, unique=True)
    assert again.id == first.id and len(q.list()) == 1
    assert (run_dir / "config.toml").read_text() == TOML  # the existing job's config is kept
    assert q.find("tune-1-trial-0").id == first.id and q.find("nope") is None
    # a directory left by a killed submit (config.toml, no job) is reused; one holding a run is not
    left = tmp_path / "study" / "trial-1"
    left.mkdir()
    (left / "config.toml").write_text("stale")
    assert q.submit("tune-1-trial-1", TOML, run_dir=left, unique=True).run_dir == str(left.resolve())
    held = tmp_path / "study" / "trial-2"
    (held / "checkpoints").mkdir(parents=True)
    with pytest.raises(QueueError, match="already holds a run"):
        q.submit("tune-1-trial-2", TOML, run_dir=held, unique=True)
    assert q.find("tune-1-trial-2") is None and (held / "checkpoints").is_dir()
