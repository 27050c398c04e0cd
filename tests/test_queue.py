"""The durable job queue (jobs/queue.py), its CLI (`jobs ...`, `submit`, `sweep`) and the sweep
helpers (jobs/sweep.py). Fast and in-process: no training runs here (the worker's real
processes are in test_worker.py), except the contention test, which uses real processes
(multiprocessing, spawn) claiming and finishing no-op jobs on one database.
"""

import ctypes
import functools
import json
import multiprocessing as mp
import os
import queue as stdlib_queue
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from fixtures.cli import DELTAPROP, assert_exit, cli
from fixtures.data import write_classification, write_config

from deltaprop.errors import ConfigError
from deltaprop.jobs import sweep
from deltaprop.jobs.queue import Queue, QueueError

TOML = "[training]\nepochs = 1\n"


@pytest.fixture(autouse=True)
def _home(monkeypatch, tmp_path):
    monkeypatch.setenv("DELTAPROP_HOME", str(tmp_path / "home"))


@pytest.fixture
def q(tmp_path):
    queue = Queue(tmp_path / "home")
    yield queue
    queue.close()


def _row(q: Queue, job_id: int) -> dict:
    """Every column of a job, straight from the database."""
    return dict(q.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def _expire(q: Queue, job_id: int) -> None:
    """Put a running job's lease in the past (what time does to a dead worker's lease)."""
    q.db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (time.time() - 1.0, job_id))


# ---- users: submit, get, list -----------------------------------------------------------------
def test_submit_get_list_and_status_filter(q, tmp_path):
    jobs = [q.submit(f"job{i}", f"# config {i}\n" + TOML) for i in range(3)]
    assert [j.id for j in jobs] == [1, 2, 3]
    for i, j in enumerate(jobs):
        assert j.name == f"job{i}" and j.status == "queued" and j.attempts == 0 and j.max_attempts == 3
        assert j.worker is None and j.lease_until is None and j.error is None and j.cancel == 0
        assert j.started_at is None and j.finished_at is None and j.created_at <= time.time()
        run_dir = Path(j.run_dir)
        assert run_dir.is_absolute() and run_dir.parent == (tmp_path / "home" / "runs").resolve()
        assert (run_dir / "config.toml").read_text() == f"# config {i}\n" + TOML
        assert not (run_dir / ".config.toml.tmp").exists()
        assert q.get(j.id) == j
    assert q.path == tmp_path / "home" / "queue.db"
    assert q.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [j.id for j in q.list()] == [1, 2, 3]
    claimed = q.claim("w", 60)
    assert [j.id for j in q.list("queued")] == [2, 3]
    assert [j.id for j in q.list("running")] == [claimed.id] == [1]
    assert q.list("succeeded") == []
    assert q.pending() == 3
    with pytest.raises(QueueError, match=r"no job 99 in .*queue\.db"):
        q.get(99)


def test_queue_is_durable_across_connections(tmp_path):
    first = Queue(tmp_path / "home")
    job = first.submit("kept", TOML, max_attempts=5)
    first.close()
    again = Queue(tmp_path / "home")
    assert again.get(job.id) == job and again.get(job.id).max_attempts == 5
    again.close()


def test_open_without_create_names_the_missing_queue(tmp_path):
    with pytest.raises(QueueError, match="no job queue at .*queue.db"):
        Queue(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()


# ---- workers: claim, lease, heartbeat ------------------------------------------------------------
def test_claim_takes_the_oldest_with_a_lease(q):
    for i in range(3):
        q.submit(f"j{i}", TOML)
    t0 = time.time()
    a = q.claim("worker-a", 30.0)
    b = q.claim("worker-b", 30.0)
    assert (a.id, b.id) == (1, 2)
    assert a.status == "running" and a.attempts == 1 and a.worker == "worker-a"
    assert t0 + 30.0 <= a.lease_until <= time.time() + 30.0
    assert t0 <= a.started_at <= time.time()
    c = q.claim("worker-a", 30.0)
    assert c.id == 3
    assert q.claim("worker-c", 30.0) is None
    assert q.pending() == 3


def test_heartbeat_renews_the_lease(q):
    q.submit("j", TOML)
    job = q.claim("w", 5.0)
    first = q.get(job.id).lease_until
    time.sleep(0.05)
    assert q.heartbeat(job, 100.0) == (True, False)
    renewed = q.get(job.id).lease_until
    assert renewed > first + 90.0
    # a renewed lease is not expired: another claim leaves the job alone
    assert q.claim("other", 5.0) is None
    assert q.get(job.id).worker == "w" and q.get(job.id).status == "running"


def test_expired_lease_is_requeued_by_the_next_claim(q):
    q.submit("j", TOML)
    job = q.claim("dead-worker", 30.0)
    _expire(q, job.id)
    again = q.claim("new-worker", 30.0)  # requeues the expired job, then claims it
    assert again.id == job.id and again.attempts == 2 and again.worker == "new-worker"
    assert again.status == "running" and again.error == "lease expired (worker lost)"
    assert again.started_at == job.started_at  # the first start is kept


def test_expired_lease_on_the_last_attempt_fails_the_job(q):
    q.submit("j", TOML, max_attempts=2)
    for attempt in (1, 2):
        job = q.claim(f"w{attempt}", 30.0)
        assert job.attempts == attempt
        _expire(q, job.id)
    assert q.claim("w3", 30.0) is None
    job = q.get(job.id)
    assert job.status == "failed" and job.attempts == 2 and job.finished_at is not None
    assert "lease expired" in job.error and "last allowed attempt" in job.error
    assert q.pending() == 0


def test_expired_lease_requeue_keeps_order(q):
    q.submit("first", TOML)
    q.submit("second", TOML)
    first = q.claim("dead", 30.0)
    _expire(q, first.id)
    assert q.claim("w", 30.0).id == first.id  # requeued, and the oldest again
    assert q.claim("w", 30.0).id == 2


# ---- fencing ------------------------------------------------------------------------------------
def test_a_zombie_attempt_cannot_write(q):
    """Worker A's lease expires and worker B takes the job: A's finish/heartbeat/release are refused
    and change nothing, B's are accepted."""
    q.submit("j", TOML)
    zombie = q.claim("A", 30.0)
    _expire(q, zombie.id)
    current = q.claim("B", 30.0)
    assert current.attempts == 2
    before = _row(q, zombie.id)
    assert q.finish(zombie, "succeeded") is False
    assert q.finish(zombie, "failed", "late crash") is False
    assert q.finish(zombie, "cancelled") is False
    assert q.release(zombie) is False
    ours, _ = q.heartbeat(zombie, 1000.0)
    assert ours is False
    assert _row(q, zombie.id) == before
    assert q.heartbeat(current, 60.0)[0] is True
    assert q.finish(current, "succeeded") is True
    done = q.get(zombie.id)
    assert done.status == "succeeded" and done.worker is None and done.lease_until is None
    assert done.finished_at is not None and done.attempts == 2
    # and nothing can write to a finished job, not even its own last attempt
    finished = _row(q, zombie.id)
    assert q.finish(current, "failed", "twice") is False and q.release(current) is False
    assert q.heartbeat(current, 60.0)[0] is False
    assert _row(q, zombie.id) == finished


def test_a_stalled_worker_does_not_reclaim_its_own_job(q):
    """Regression: a worker that stalled past its lease used to requeue and re-claim its own
    running job on its next claim, failing the new attempt on the run-dir lock."""
    q.submit("j", TOML)
    job = q.claim("W", 30.0)
    _expire(q, job.id)
    assert q.claim("W", 30.0) is None  # its own expired lease is left alone...
    assert q.heartbeat(job, 30.0) == (True, False)  # ...and renewed by its heartbeat
    assert q.get(job.id).status == "running" and q.get(job.id).attempts == 1
    _expire(q, job.id)
    other = q.claim("V", 30.0)  # another worker does take it over, as attempt 2
    assert (other.worker, other.attempts) == ("V", 2)
    before = _row(q, job.id)
    assert q.finish(job, "succeeded") is False and q.heartbeat(job, 100.0)[0] is False
    assert _row(q, job.id) == before


# ---- finish, cancel, retry, release ----------------------------------------------------------------
def test_failure_with_attempts_left_goes_back_to_the_queue(q):
    q.submit("j", TOML, max_attempts=2)
    job = q.claim("w", 30.0)
    assert q.finish(job, "failed", "exit code 1: boom") is True
    job = q.get(job.id)
    assert job.status == "queued" and job.error == "exit code 1: boom" and job.finished_at is None
    assert job.worker is None and job.lease_until is None and job.attempts == 1
    job = q.claim("w", 30.0)
    assert job.attempts == 2
    assert q.finish(job, "failed", "exit code 1: boom again") is True
    job = q.get(job.id)
    assert job.status == "failed" and job.error == "exit code 1: boom again" and job.finished_at is not None
    assert q.claim("w", 30.0) is None


def test_failure_without_retry_fails_at_once(q):
    q.submit("j", TOML)
    job = q.claim("w", 30.0)
    assert q.finish(job, "failed", "run directory gone", retry=False) is True
    job = q.get(job.id)
    assert (job.status, job.attempts, job.error) == ("failed", 1, "run directory gone")
    assert job.finished_at is not None and q.claim("w", 30.0) is None


def test_cancel_a_queued_job(q):
    q.submit("a", TOML)
    q.submit("b", TOML)
    job = q.cancel(1)
    assert job.status == "cancelled" and job.finished_at is not None
    assert q.claim("w", 30.0).id == 2  # a cancelled job is never claimed
    with pytest.raises(QueueError, match="job 1 is already cancelled"):
        q.cancel(1)
    with pytest.raises(QueueError, match="no job 7"):
        q.cancel(7)


def test_cancel_a_running_job_is_seen_by_the_heartbeat(q):
    q.submit("j", TOML)
    job = q.claim("w", 30.0)
    assert q.heartbeat(job, 30.0) == (True, False)
    flagged = q.cancel(job.id)
    assert flagged.status == "running" and flagged.cancel == 1
    assert q.heartbeat(job, 30.0) == (True, True)
    assert q.finish(job, "cancelled", "cancelled by user") is True
    done = q.get(job.id)
    assert done.status == "cancelled" and done.error == "cancelled by user"
    with pytest.raises(QueueError, match="already cancelled"):
        q.cancel(job.id)


def test_retry_requeues_failed_and_cancelled_jobs_only(q):
    q.submit("fails", TOML, max_attempts=1)
    q.submit("cancelled", TOML)
    q.submit("succeeds", TOML)
    job = q.claim("w", 30.0)
    q.finish(job, "failed", "exit code 1")
    q.cancel(2)
    ok = q.claim("w", 30.0)
    with pytest.raises(QueueError, match="job 3 is running: only failed or cancelled"):
        q.retry(3)
    q.finish(ok, "succeeded")
    with pytest.raises(QueueError, match="job 3 is succeeded"):
        q.retry(3)
    for job_id in (1, 2):
        job = q.retry(job_id)
        assert job.status == "queued" and job.attempts == 0 and job.error is None and job.cancel == 0
        assert job.finished_at is None and job.worker is None
    assert [q.claim("w", 30.0).id for _ in range(2)] == [1, 2]
    with pytest.raises(QueueError, match="job 1 is running"):
        q.retry(1)


def test_retry_clears_the_cancel_flag(q):
    q.submit("j", TOML)
    job = q.claim("w", 30.0)
    q.cancel(job.id)
    q.finish(job, "cancelled", "cancelled by user")
    q.retry(job.id)
    job = q.claim("w", 30.0)
    assert q.heartbeat(job, 30.0) == (True, False)


def test_release_does_not_spend_an_attempt(q):
    q.submit("j", TOML, max_attempts=1)
    for _ in range(3):  # drained three times, still its only attempt left
        job = q.claim("w", 30.0)
        assert job.attempts == 1
        assert q.release(job) is True
        job = q.get(job.id)
        assert job.status == "queued" and job.attempts == 0 and job.worker is None and job.lease_until is None
    job = q.claim("w", 30.0)
    assert q.finish(job, "succeeded") is True


# ---- contention: several processes on one database ----------------------------------------------
def _contender(home: str, name: str, start, results) -> None:
    """One worker process: claim, heartbeat and finish no-op jobs until the queue is empty."""
    try:
        queue = Queue(Path(home))
        start.wait(120)  # all processes begin claiming together
        claimed = []
        while True:
            job = queue.claim(name, 60.0)
            if job is None:
                break
            assert queue.heartbeat(job, 60.0) == (True, False)
            assert queue.finish(job, "succeeded") is True
            claimed.append(job.id)
            time.sleep(0.002)  # a real worker does other things between claims
        queue.close()
        results.put((name, claimed, None))
    except BaseException as exc:  # report everything, including "database is locked"
        results.put((name, [], f"{type(exc).__name__}: {exc}"))


def test_contention_every_job_claimed_exactly_once(tmp_path):
    home = tmp_path / "home"
    n_jobs, n_procs = 200, 4
    queue = Queue(home)
    for i in range(n_jobs):
        queue.submit(f"noop{i}", TOML)
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(str(home), f"w{i}", start, results)) for i in range(n_procs)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    errors = [(name, err) for name, _, err in outcomes if err]
    assert errors == []
    claimed = [job_id for _, ids, _ in outcomes for job_id in ids]
    assert sorted(claimed) == list(range(1, n_jobs + 1))  # each job once: none lost, none twice
    jobs = queue.list()
    assert len(jobs) == n_jobs and {j.status for j in jobs} == {"succeeded"} and {j.attempts for j in jobs} == {1}
    by_worker = {name: len(ids) for name, ids, _ in outcomes}
    assert sum(by_worker.values()) == n_jobs
    assert sum(n > 0 for n in by_worker.values()) >= 2, by_worker  # they did contend
    assert queue.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    queue.close()


# ---- a corrupt or locked database -------------------------------------------------------------------
def test_corrupt_database_is_a_clear_error_and_left_untouched(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    garbage = b"this is not an SQLite database \x00\xff" * 300
    (home / "queue.db").write_bytes(garbage)
    with pytest.raises(QueueError) as info:
        Queue(home)
    message = str(info.value)
    assert str(home / "queue.db") in message and "unreadable" in message and "not modified" in message
    assert (home / "queue.db").read_bytes() == garbage
    # the CLI says the same, without a traceback, and still changes nothing
    for args in (["jobs", "list"], ["jobs", "show", "1"], ["jobs", "cancel", "1"]):
        result = cli(*args)
        assert_exit(result, 2)
        assert "unreadable" in result.output and "queue.db" in result.output
    assert (home / "queue.db").read_bytes() == garbage
    assert sorted(p.name for p in home.iterdir()) == ["queue.db"]


def test_corrupt_table_page_reads_are_clear_errors(q, tmp_path):
    """A database whose header is fine but whose jobs table is garbage: reading jobs is a
    QueueError naming the file, and the file is not modified."""
    for i in range(40):
        q.submit(f"job{i}" + "x" * 200, TOML)
    q.close()
    db = tmp_path / "home" / "queue.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    con.close()
    raw = bytearray(db.read_bytes())
    raw[(root - 1) * page: root * page] = b"\xab" * page
    db.write_bytes(bytes(raw))
    before = db.read_bytes()
    broken = Queue(tmp_path / "home")
    for read in (broken.list, lambda: broken.get(1)):
        with pytest.raises(QueueError, match=r"queue\.db is unreadable \(database disk image is malformed\)"):
            read()
    broken.close()
    assert db.read_bytes() == before


def test_locked_database_is_a_clear_error_and_damages_nothing(q, tmp_path):
    q.submit("a", TOML)
    q.submit("b", TOML)
    running = q.claim("w", 60.0)
    before = [dict(_row(q, i)) for i in (1, 2)]
    q.db.execute("PRAGMA busy_timeout = 200")
    holder = sqlite3.connect(tmp_path / "home" / "queue.db", isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        for write in (lambda: q.claim("w2", 60.0), lambda: q.submit("c", TOML), lambda: q.cancel(2),
                      lambda: q.heartbeat(running, 60.0), lambda: q.finish(running, "succeeded"),
                      lambda: q.release(running), lambda: q.retry(1)):
            with pytest.raises(QueueError) as info:
                write()
            assert "locked" in str(info.value) and str(q.path) in str(info.value)
            assert "nothing was changed" in str(info.value)
        assert time.monotonic() - t0 < 60  # waited for the busy timeout each time, not forever
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # nothing changed, no run directory for the refused submit, and the queue works again
    assert [dict(_row(q, i)) for i in (1, 2)] == before
    assert len(q.list()) == 2
    assert sorted(p.name for p in (tmp_path / "home" / "runs").iterdir()) == ["job-000001", "job-000002"]
    assert q.finish(running, "succeeded") is True
    assert q.claim("w2", 60.0).id == 2
    assert q.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_read_only_commands_do_not_wait_for_a_writer(q, monkeypatch):
    """jobs list/show/logs open the queue read-only: they answer while another process holds the
    write lock. (Opening for writing would wait out the busy timeout, 0.5 s here, and fail.)"""
    monkeypatch.setattr("deltaprop.jobs.queue.BUSY_TIMEOUT_S", 0.5)
    job = q.submit("j", TOML)
    Path(job.run_dir, "log.txt").write_text("hello from the job\n")
    holder = sqlite3.connect(q.path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE jobs SET name = 'uncommitted' WHERE id = 1")
    try:
        for args, want in ((["jobs", "list", "--json"], '"name": "j"'), (["jobs", "show", "1"], '"status": "queued"'),
                           (["jobs", "logs", "1"], "hello from the job")):
            result = cli(*args)
            assert_exit(result, 0)
            assert want in result.stdout
        result = cli("jobs", "cancel", "1")  # a write does wait for the lock, then says so
        assert_exit(result, 2)
        assert "stayed locked for 0.5 s" in result.output
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert q.get(1) == job


def _without_root_file_powers() -> None:
    """In a child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set,
    so even root obeys file modes (the tests may run as root, who may write anywhere)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_read_only_commands_work_on_a_read_only_copy(q, tmp_path):
    """A copy of the queue in a directory no one may write: list and show work (real processes
    that cannot override file modes), and the file stays byte-identical, with no -wal/-shm."""
    for i in range(3):
        q.submit(f"job{i}", TOML)
    q.claim("w", 60.0)
    q.close()  # the last connection: SQLite folds the WAL into queue.db and removes it
    copy = tmp_path / "read-only"
    copy.mkdir()
    shutil.copy(tmp_path / "home" / "queue.db", copy / "queue.db")
    before = (copy / "queue.db").read_bytes()
    os.chmod(copy / "queue.db", 0o444)
    os.chmod(copy, 0o555)
    try:
        env = dict(os.environ, DELTAPROP_HOME=str(copy))
        run = functools.partial(subprocess.run, env=env, capture_output=True, text=True, timeout=600,
                                preexec_fn=_without_root_file_powers)
        probe = run([sys.executable, "-c", f"open({str(copy / 'x')!r}, 'w')"])
        assert "PermissionError" in probe.stderr, "the directory is writable: the test would prove nothing"
        result = run([str(DELTAPROP), "jobs", "list", "--json"])
        assert result.returncode == 0, result.stderr
        assert [(r["name"], r["status"]) for r in json.loads(result.stdout)] == [
            ("job0", "running"), ("job1", "queued"), ("job2", "queued")]
        result = run([str(DELTAPROP), "jobs", "show", "2"])
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.split("\nlast epoch")[0])["name"] == "job1"
        assert (copy / "queue.db").read_bytes() == before
        assert sorted(p.name for p in copy.iterdir()) == ["queue.db"]
    finally:
        os.chmod(copy, 0o755)


def test_jobs_logs_follow_streams_until_the_job_ends(q):
    """`jobs logs --follow` (a real process) prints lines appended after it started, and the last
    ones written just before the job ended, then exits 0."""
    job = q.submit("j", TOML)
    running = q.claim("w", 600.0)
    log = Path(job.run_dir, "log.txt")
    log.write_text("--- attempt 1 ---\n")
    proc = subprocess.Popen([str(DELTAPROP), "jobs", "logs", str(job.id), "--follow"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    lines: stdlib_queue.Queue = stdlib_queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=600) == "--- attempt 1 ---\n"
        for i in range(3):  # each written while the follower runs, and seen by it
            with open(log, "a") as f:
                f.write(f"epoch {i}\n")
            assert lines.get(timeout=600) == f"epoch {i}\n"
        assert proc.poll() is None  # still following: the job is running
        with open(log, "a") as f:
            f.write("done: the last line\n")
        assert q.finish(running, "succeeded")
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
        reader.join(timeout=600)
        assert lines.get_nowait() == "done: the last line\n"
        assert lines.empty()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- CLI ----------------------------------------------------------------------------------------
def test_jobs_list_without_a_queue_exits_2(tmp_path):
    result = cli("jobs", "list")
    assert_exit(result, 2)
    assert "no job queue at" in result.output and str(tmp_path / "home" / "queue.db") in result.output
    assert not (tmp_path / "home").exists()  # reading never creates a queue


def test_jobs_show_unknown_id_exits_2(q):
    q.submit("j", TOML)
    result = cli("jobs", "show", "999")
    assert_exit(result, 2)
    assert "no job 999" in result.output


def test_jobs_logs_of_a_deleted_run_dir_exits_2(q):
    import shutil
    job = q.submit("j", TOML)
    shutil.rmtree(job.run_dir)
    result = cli("jobs", "logs", str(job.id))
    assert_exit(result, 2)
    assert "run directory" in result.output and job.run_dir in result.output and "missing" in result.output
    assert not Path(job.run_dir).exists()  # not recreated
    assert q.get(job.id) == job


def test_jobs_cli_list_show_logs_cancel_retry(q):
    a = q.submit("alpha", TOML)
    b = q.submit("beta", TOML)
    result = cli("jobs", "list", "--json")
    assert_exit(result, 0)
    rows = json.loads(result.stdout)
    assert [(r["id"], r["name"], r["status"]) for r in rows] == [(1, "alpha", "queued"), (2, "beta", "queued")]
    result = cli("jobs", "list")
    assert_exit(result, 0)
    assert "alpha" in result.output and "queued" in result.output
    result = cli("jobs", "list", "--status", "bogus")
    assert_exit(result, 2)
    assert "--status 'bogus'" in result.output
    result = cli("jobs", "show", "1")
    assert_exit(result, 0)
    assert json.loads(result.stdout.split("\nlast epoch")[0])["run_dir"] == a.run_dir
    Path(a.run_dir, "log.txt").write_text("--- attempt 1 ---\nhello from the job\n")
    result = cli("jobs", "logs", "1")
    assert_exit(result, 0)
    assert result.stdout == "--- attempt 1 ---\nhello from the job\n"
    result = cli("jobs", "cancel", "2")
    assert_exit(result, 0)
    assert "job 2: cancelled" in result.output
    assert q.get(b.id).status == "cancelled"
    result = cli("jobs", "cancel", "2")
    assert_exit(result, 2)
    assert "already cancelled" in result.output
    result = cli("jobs", "retry", "2")
    assert_exit(result, 0)
    assert q.get(b.id).status == "queued"
    result = cli("jobs", "retry", "1")
    assert_exit(result, 2)
    assert "only failed or cancelled" in result.output
    result = cli("jobs", "list", "--json", "--status", "queued")
    assert [r["id"] for r in json.loads(result.stdout)] == [1, 2]


def test_jobs_list_table_shows_names_with_brackets(q, monkeypatch):
    """Sweep job names hold their grid values in brackets: the table prints them, not as markup."""
    monkeypatch.setenv("COLUMNS", "250")
    q.submit("c[optimizer.lr=0.1]", TOML)
    result = cli("jobs", "list")
    assert_exit(result, 0)
    assert "c[optimizer.lr=0.1]" in result.output


def test_jobs_cancel_a_running_job_via_cli(q):
    q.submit("j", TOML)
    job = q.claim("w", 60.0)
    result = cli("jobs", "cancel", str(job.id))
    assert_exit(result, 0)
    assert "cancel requested" in result.output
    assert q.heartbeat(job, 60.0) == (True, True)


def test_worker_concurrency_above_the_core_count_is_capped():
    """`worker --concurrency N` with N > cores: each job needs a thread, so N jobs would
    oversubscribe the cores; the worker says so and runs one job per core."""
    cores = len(os.sched_getaffinity(0))
    result = cli("worker", "--concurrency", cores + 3, "--until-empty")
    assert_exit(result, 0)
    assert f"warning: --concurrency {cores + 3} is more than the {cores} core(s) available" in result.output
    assert f"concurrency {cores}, 1 thread(s) per job" in result.output
    result = cli("worker", "--concurrency", cores, "--until-empty")
    assert_exit(result, 0)
    assert "warning" not in result.output and f"concurrency {cores}, 1 thread(s) per job" in result.output


# ---- sweeps -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, values", [
    ("0.1,0.01", ["0.1", "0.01"]),
    ("0.1", ["0.1"]),
    (" 0.1 , 0.01 ", ["0.1", "0.01"]),
    ("[256],[512,256]", ["[256]", "[512,256]"]),
    ("[256], [512, 256], []", ["[256]", "[512, 256]", "[]"]),
    ("[[1,2],[3]],[4]", ["[[1,2],[3]]", "[4]"]),
    ('"relu","tanh"', ['"relu"', '"tanh"']),
    ('"a,b",\'c,[d\',e', ['"a,b"', "'c,[d'", "e"]),
    ('["relu","tanh"],"relu"', ['["relu","tanh"]', '"relu"']),
])
def test_split_values(text, values):
    assert sweep.split_values(text) == values


@pytest.mark.parametrize("text", ["", "1,,2", "1,", ",1", "[256", "[1,2],[3", '"relu', "'a,b", "[1]]"])
def test_split_values_malformed(text):
    with pytest.raises(ConfigError, match="malformed"):
        sweep.split_values(text)


def test_grid_overrides_cartesian_product():
    points = sweep.grid_overrides(["optimizer.lr=0.1,0.01", " model.hidden =[256],[512,256]"])
    assert points == [
        ["optimizer.lr=0.1", "model.hidden=[256]"],
        ["optimizer.lr=0.1", "model.hidden=[512,256]"],
        ["optimizer.lr=0.01", "model.hidden=[256]"],
        ["optimizer.lr=0.01", "model.hidden=[512,256]"],
    ]
    assert sweep.grid_overrides(['data.train="a=b.npz","c.npz"']) == [['data.train="a=b.npz"'],
                                                                       ['data.train="c.npz"']]
    assert sweep.grid_overrides([]) == [[]]


@pytest.mark.parametrize("grid", [["optimizer.lr"], ["optimizer.lr="], ["model.hidden=[1],[2"]])
def test_grid_overrides_malformed(grid):
    with pytest.raises(ConfigError, match="--grid"):
        sweep.grid_overrides(grid)


def test_leaderboard_orders_by_accuracy(q):
    jobs = [q.submit(f"j{i}", TOML) for i in range(3)]
    for job, acc in zip(jobs, (0.5, 0.9)):
        Path(job.run_dir, "metrics.jsonl").write_text(
            json.dumps({"epoch": 1, "val_accuracy": 0.1}) + "\n" + json.dumps({"epoch": 2, "val_accuracy": acc}) + "\n")
    rows = sweep.leaderboard(q.list())
    assert [r["id"] for r in rows] == [2, 1, 3]  # the job without metrics last
    assert rows[0]["val_accuracy"] == 0.9 and rows[0]["epoch"] == 2


@pytest.fixture
def base_config(tmp_path):
    data = write_classification(tmp_path / "train.npz", n=60)
    return write_config(tmp_path / "base.toml", data)


def test_sweep_cli_submits_the_product(q, base_config, tmp_path):
    result = cli("sweep", base_config, "--grid", "optimizer.lr=0.1,0.01",
                 "--grid", "model.hidden=[32],[48,16]", "--set", "training.epochs=2")
    assert_exit(result, 0)
    assert "submitted 4 jobs: 1 2 3 4" in result.output
    jobs = q.list()
    assert len(jobs) == 4 and {j.status for j in jobs} == {"queued"}
    seen = []
    for job in jobs:
        cfg = tomllib.loads(Path(job.run_dir, "config.toml").read_text())
        assert cfg["training"]["epochs"] == 2
        assert cfg["data"]["train"] == str(tmp_path / "train.npz")  # resolved, absolute
        seen.append((cfg["optimizer"]["lr"], cfg["model"]["hidden"]))
        assert job.name.startswith("base[") and f"optimizer.lr={cfg['optimizer']['lr']}" in job.name
    assert seen == [(0.1, [32]), (0.1, [48, 16]), (0.01, [32]), (0.01, [48, 16])]


def test_sweep_with_a_bad_point_submits_nothing(q, base_config):
    result = cli("sweep", base_config, "--grid", "optimizer.lr=0.1,-1", "--grid", "model.hidden=[32],[48]")
    assert_exit(result, 2)
    assert "optimizer.lr" in result.output
    assert q.list() == []
    assert not (Path(q.home) / "runs").exists() or list((Path(q.home) / "runs").iterdir()) == []
    for grid in ("optimizer.lr=0.1,,0.2", "optimizer.lrr=0.1", "nosuchsection.x=1"):
        result = cli("sweep", base_config, "--grid", grid)
        assert_exit(result, 2)
    assert q.list() == []


def test_submit_cli_prints_the_id(q, base_config):
    result = cli("submit", base_config, "--set", "training.epochs=4", "--name", "named")
    assert_exit(result, 0)
    assert result.stdout.strip() == "1"
    job = q.get(1)
    assert job.name == "named"
    assert tomllib.loads(Path(job.run_dir, "config.toml").read_text())["training"]["epochs"] == 4
    result = cli("submit", base_config, "--set", "training.epochs=0")
    assert_exit(result, 2)
    assert len(q.list()) == 1


# ---- never a new queue over an existing file; say what is actually wrong ------------------------------

def _runs(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "runs").iterdir()) if (home / "runs").is_dir() else []


def _refused_everywhere(home: Path, expect: str) -> None:
    before, runs = (home / "queue.db").read_bytes(), _runs(home)
    with pytest.raises(QueueError, match=expect):
        Queue(home)
    for args in (["jobs", "list"], ["jobs", "show", "1"], ["submit", "nope.toml"], ["worker", "--until-empty"]):
        result = cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        if args[0] != "submit":
            assert re.search(expect, result.output), (args, result.output)
    assert (home / "queue.db").read_bytes() == before  # not replaced, not modified
    assert _runs(home) == runs  # no run directory made for a job that was never recorded


def test_an_empty_queue_file_is_refused_not_replaced(tmp_path):
    """An empty queue.db was silently taken for a new queue: ids restarted at 1, run directories
    became job-000001-2."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "queue.db").write_bytes(b"")
    _refused_everywhere(home, r"queue\.db is not a deltaprop job queue \(the file is empty\); it was not modified")


def test_a_truncated_queue_file_is_refused_not_replaced(q, tmp_path):
    for i in range(30):
        q.submit(f"job{i}" + "x" * 300, TOML)
    q.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    q.close()
    db = tmp_path / "home" / "queue.db"
    page = 4096
    db.write_bytes(db.read_bytes()[:page])  # the first page only: a valid header, no table pages
    _refused_everywhere(tmp_path / "home", r"queue\.db (is not a deltaprop job queue|is unreadable)")


def test_a_tampered_schema_is_refused_before_any_job_is_touched(q, tmp_path):
    q.submit("a", TOML)
    q.close()
    con = sqlite3.connect(tmp_path / "home" / "queue.db")
    con.execute("ALTER TABLE jobs RENAME COLUMN lease_until TO lease")
    con.commit()
    con.close()
    _refused_everywhere(tmp_path / "home", r"has a jobs table that is not deltaprop's \(missing lease_until; unknown lease\)")


def test_a_full_disk_is_one_clear_error_and_leaves_no_orphan_run_directory(q, tmp_path):
    """SQLITE_FULL rolls the transaction back by itself; a second ROLLBACK once failed with
    "cannot rollback - no transaction is active", and the run directory made for the job stayed."""
    q.submit("first", TOML)
    pages = q.db.execute("PRAGMA page_count").fetchone()[0]
    q.db.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: as on a full disk
    with pytest.raises(QueueError, match=r"cannot be written: the disk is full \(database or disk is full\)"):
        q.submit("second" + "x" * 200_000, TOML)
    assert [j.name for j in q.list()] == ["first"]
    assert sorted(p.name for p in (tmp_path / "home" / "runs").iterdir()) == ["job-000001"]


def test_read_only_errors_say_read_only(tmp_path):
    q = Queue(tmp_path / "home")
    for text in ("attempt to write a readonly database", "unable to open database file"):
        message = str(q._error(sqlite3.OperationalError(text)))
        assert "cannot be written" in message and "read-only" in message and "unreadable" not in message
    q.close()


def test_processes_creating_the_queue_at_once_share_one(tmp_path):
    home = tmp_path / "fresh"
    code = ("import sys; from deltaprop.jobs.queue import Queue; "
            "print(Queue(sys.argv[1]).submit('j', '[training]\\nepochs = 1\\n').id)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    ids = sorted(int(p.communicate(timeout=120)[0]) for p in procs)
    assert ids == list(range(1, 9))
    assert sorted(p.name for p in home.iterdir()) == ["queue.db", "queue.db-shm", "queue.db-wal", "runs"] or \
        sorted(p.name for p in home.iterdir()) == ["queue.db", "runs"]


def test_sweep_wait_without_a_worker_says_how_to_start_one(tmp_path, monkeypatch):
    """`sweep --wait` with no worker running once waited silently forever."""
    import deltaprop.cli.jobs as cli_jobs
    write_classification(tmp_path / "d.npz")
    config = write_config(tmp_path / "c.toml", tmp_path / "d.npz")
    monkeypatch.setattr(cli_jobs, "NO_WORKER_HINT_S", 0.2)
    hinted, finished = threading.Event(), []

    class Console:  # the sweep's console, which tells the stand-in worker when the hint is out
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def print(self, *args, **kwargs):
            self.real.print(*args, **kwargs)
            if any("waiting for a worker" in str(a) for a in args):
                hinted.set()

    monkeypatch.setattr(cli_jobs, "console", Console(cli_jobs.console))

    def finish_later():  # a stand-in worker that shows up once the hint is out (not after a fixed sleep)
        hinted.wait(timeout=120)  # no hint by then: finish the jobs anyway, so that the sweep returns
        q = Queue(tmp_path / "home")
        while (job := q.claim("w", 60.0)) is not None:
            q.finish(job, "succeeded")
            finished.append(job.id)
        q.close()

    stand_in = threading.Thread(target=finish_later, daemon=True)
    stand_in.start()
    result = cli("sweep", config, "--grid", "optimizer.lr=0.1,0.01", "--wait")
    stand_in.join(timeout=120)
    assert not stand_in.is_alive()
    assert_exit(result, 0)
    assert hinted.is_set() and finished == [1, 2], (finished, result.output)
    assert "waiting for a worker: none has claimed these jobs" in result.output
    assert "deltaprop worker --until-empty" in result.output and "leaderboard" in result.output
