"""The queue database's schema, its version (`PRAGMA user_version`) and the migration of older queues.

    version 0  (deltaprop <= 0.1 before tuning): states queued, running, succeeded, failed, cancelled
    version 1  adds the state `pruned` (a tune trial its pruner stopped, continuable)

SQLite cannot change a CHECK constraint in place, so a migration rebuilds the jobs table: a new
table, every row copied, the old one dropped, the new one renamed, the AUTOINCREMENT counter kept,
the version set, all in one BEGIN IMMEDIATE transaction. It either commits whole or leaves the
file as it was (a crash or an error mid-way rolls back; SQLite's DDL is transactional).
"""

import sqlite3

VERSION = 1
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "pruned")
# what the `cancel` column holds: the stop request a worker passes on to a running job as SIGTERM
STOP_NONE, STOP_CANCEL, STOP_PRUNE = 0, 1, 2


def table_sql(name: str = "jobs") -> str:
    states = ",".join(f"'{s}'" for s in STATES)
    return f"""
CREATE TABLE {name} (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ({states})),
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
);"""


INDEXES = "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, id);\n" \
          "CREATE INDEX IF NOT EXISTS jobs_name ON jobs (name);"
SCHEMA = table_sql() + "\n" + INDEXES + f"\nPRAGMA user_version = {VERSION};\n"
COLUMNS = {"id", "name", "status", "run_dir", "attempts", "max_attempts", "worker", "lease_until", "cancel",
           "error", "created_at", "started_at", "finished_at"}
_ORDER = "id, name, status, run_dir, attempts, max_attempts, worker, lease_until, cancel, error, created_at, " \
         "started_at, finished_at"


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, steps=None) -> bool:
    """Bring an open queue (autocommit connection) to VERSION; True if it was migrated. Raises
    sqlite3.DatabaseError with nothing changed if any step fails (`steps`: for tests)."""
    if version(db) >= VERSION:
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        if version(db) >= VERSION:  # another process migrated it while we waited for the lock
            db.execute("ROLLBACK")
            return False
        for sql in steps if steps is not None else _steps(db):
            db.execute(sql)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return True


def _steps(db: sqlite3.Connection) -> list[str]:
    """0 -> 1: the jobs table rebuilt with the new CHECK, rows and the id counter copied."""
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='jobs'").fetchone()
    steps = [table_sql("jobs_v1"),
             f"INSERT INTO jobs_v1 ({_ORDER}) SELECT {_ORDER} FROM jobs",
             "DROP TABLE jobs",
             "ALTER TABLE jobs_v1 RENAME TO jobs",
             *[s.strip() for s in INDEXES.split(";") if s.strip()]]
    if seq is not None:
        steps.append(f"UPDATE sqlite_sequence SET seq = MAX(seq, {int(seq[0])}) WHERE name='jobs'")
    steps.append(f"PRAGMA user_version = {VERSION}")
    return steps
