"""The worker: claims jobs from the queue and runs each in its own process (or Ray task).

    Worker(queue, concurrency=2).run(until_empty=True)

Each job runs as `deltaprop resume RUN_DIR` in a child process (its output appended to
RUN_DIR/log.txt), so a crash in a plugin kills one job, not the worker; `resume` starts from the
newest valid checkpoint, or from the beginning when there is none. The machine's cores are divided
among the concurrent jobs (Numba threads per job; BLAS stays single-threaded), so concurrency
never oversubscribes; a concurrency above the core count is capped to it, with a warning. A job
whose run directory is missing is failed, not retried. The worker renews each job's lease by
heartbeat; if a lease is lost (the queue gave the job to someone else) the job is killed.
SIGTERM, SIGINT and SIGHUP drain: running jobs get SIGTERM, checkpoint, and go back to the queue
without spending an attempt.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from .._system import cores
from ..io.rundir import RunDir
from .queue import STOP_CANCEL, STOP_PRUNE, Job, Queue

LEASE_S = 30.0
HEARTBEAT_S = 2.0


def job_command(run_dir: str, threads: int) -> list[str]:
    # --wait-for-lock: a run directory still held by an earlier attempt (its worker stalled past its
    # lease while the job kept training) is not a failure of the job; the attempt waits for it
    return [sys.executable, "-m", "deltaprop.cli.main", "resume", run_dir, "--threads", str(threads),
            "--wait-for-lock"]


def job_env(threads: int) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))  # Numba starts no more threads than that
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Running:
    job: Job
    handle: object  # subprocess.Popen, or a Ray ObjectRef
    cancelled: bool = False
    pruned: bool = False
    lost: bool = False
    draining: bool = False


class LocalExecutor:
    """Each job in a child process on this machine."""

    def cores(self) -> int:
        return cores()

    def start(self, job: Job, threads: int):
        rd = RunDir(job.run_dir)
        header = rd.attempt_header(job.attempts, job.max_attempts, f"{socket.gethostname()} pid {os.getpid()}")
        log = rd.open_log()
        log.write(header.encode())
        log.flush()
        proc = subprocess.Popen(job_command(job.run_dir, threads), stdout=log, stderr=subprocess.STDOUT,
                                env=job_env(threads), start_new_session=True, preexec_fn=_die_with_parent)
        log.close()
        return proc

    def poll(self, handle) -> int | None:
        return handle.poll()

    def stop(self, handle, sig=signal.SIGTERM) -> None:
        try:
            handle.send_signal(sig)
        except ProcessLookupError:
            pass

    def kill(self, handle) -> None:
        self.stop(handle, signal.SIGKILL)

    def close(self) -> None:
        pass


class Worker:
    def __init__(self, queue: Queue, concurrency: int = 1, executor=None, lease_s: float = LEASE_S,
                 heartbeat_s: float = HEARTBEAT_S, log=print):
        self.queue = queue
        self.log = log
        self.concurrency = max(1, concurrency)
        self.executor = executor or LocalExecutor()
        cores = self.executor.cores()
        if isinstance(self.executor, LocalExecutor) and self.concurrency > cores:
            # a job needs at least one thread: more jobs than cores would oversubscribe them
            # (Ray instead queues tasks until their num_cpus are free)
            self.log(f"warning: --concurrency {self.concurrency} is more than the {cores} core(s) available; "
                     f"running {cores} job(s) at a time so they do not oversubscribe the cores")
            self.concurrency = cores
        self.threads = max(1, cores // self.concurrency)
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[int, Running] = {}
        self.draining = False
        if isinstance(self.executor, LocalExecutor):
            others = _register_on_this_machine(self)
            if others:
                self.log(f"warning: {len(others)} other deltaprop worker(s) run on this machine (pid "
                         f"{', '.join(map(str, others))}); each divides all {self.executor.cores()} core(s) among "
                         "its own jobs, so together they oversubscribe them: stop the extra workers and run one "
                         "with --concurrency N instead")

    def _on_signal(self, signum, frame):
        if not self.draining:
            self.log(f"worker {self.id}: {signal.Signals(signum).name}: draining {len(self.running)} running job(s)")
        self.draining = True

    def run(self, until_empty: bool = False, poll_s: float = 0.5) -> None:
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            # SIGHUP too: a worker whose terminal closes drains like one that is told to stop,
            # instead of dying and taking its jobs (uncheckpointed, an attempt spent) with it
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._loop(until_empty, poll_s)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.executor.close()

    def _loop(self, until_empty: bool, poll_s: float) -> None:
        last_beat = 0.0
        while True:
            if self.draining:
                for r in self.running.values():
                    if not r.draining:
                        r.draining = True
                        self.executor.stop(r.handle, signal.SIGTERM)
            if time.monotonic() - last_beat >= self.heartbeat_s:  # renew before claiming anything
                self._heartbeat()
                last_beat = time.monotonic()
            while not self.draining and len(self.running) < self.concurrency:
                job = self.queue.claim(self.id, self.lease_s)
                if job is None:
                    break
                self.log(f"job {job.id} ({job.name}): attempt {job.attempts}/{job.max_attempts}, "
                         f"{self.threads} thread(s)")
                handle = self._start(job)
                if handle is not None:
                    self.running[job.id] = Running(job, handle)
            self._pass_stop_requests()
            self._reap()
            if not self.running and (self.draining or (until_empty and self.queue.pending() == 0)):
                return
            time.sleep(poll_s)

    def _start(self, job: Job):
        """The job's handle, or None when it cannot start: then it is failed and the worker goes on.
        A missing run directory fails the job for good, with no retry: it held the job's config and
        checkpoints, so an empty new one would have nothing to run and would hide what was lost."""
        if not os.path.isdir(job.run_dir):
            error = (f"run directory {job.run_dir} is missing (moved or deleted); it holds the job's config "
                     f"and checkpoints: restore it, then `deltaprop jobs retry {job.id}`")
            self._end(job, "failed", error, retry=False)
            return None
        try:
            return self.executor.start(job, self.threads)
        except OSError as exc:  # the log cannot be opened, no process can be started...
            self._end(job, "failed", f"could not start the job: {exc}")
            return None

    def _end(self, job: Job, status: str, error: str | None, retry: bool = True) -> None:
        if self.queue.finish(job, status, error, retry):
            now = self.queue.get(job.id).status
            self.log(f"job {job.id}: {now if now != 'queued' else 'attempt failed, requeued'}"
                     + (f" ({error})" if error else ""))

    def _heartbeat(self) -> None:
        for r in self.running.values():
            ours, request = self.queue.heartbeat(r.job, self.lease_s)
            if not ours and not r.lost:
                r.lost = True
                self.log(f"job {r.job.id}: lease lost to another worker; stopping attempt {r.job.attempts}")
                self.executor.kill(r.handle)
            elif ours:
                self._stop_request(r, request)

    def _pass_stop_requests(self) -> None:
        """Between heartbeats too (a read, no lock): a tuner's prune reaches the job within a poll."""
        if self.running:
            for job_id, request in self.queue.stop_requests(self.id).items():
                if job_id in self.running:
                    self._stop_request(self.running[job_id], request)

    def _stop_request(self, r: Running, request: int) -> None:
        """Cancel or prune: SIGTERM, so the job checkpoints at its next step boundary and stops."""
        if request not in (STOP_CANCEL, STOP_PRUNE) or r.cancelled or r.pruned:
            return
        r.cancelled, r.pruned = request == STOP_CANCEL, request == STOP_PRUNE
        self.executor.stop(r.handle, signal.SIGTERM)

    def _reap(self) -> None:
        for job_id, r in list(self.running.items()):
            code = self.executor.poll(r.handle)
            if code is None:
                continue
            del self.running[job_id]
            if r.lost:
                continue
            if code == 0:
                status, error = "succeeded", None
            elif r.pruned:
                status, error = "pruned", "pruned by the tuner"
                RunDir(r.job.run_dir).append_log(f"--- job {job_id} pruned by the tuner; `deltaprop tune continue` "
                                                 "(or `deltaprop jobs retry`) continues it from its checkpoint")
            elif r.cancelled:
                status, error = "cancelled", "cancelled by user"
                RunDir(r.job.run_dir).append_log(f"--- job {job_id} cancelled by `deltaprop jobs cancel`; "
                                                 f"`deltaprop jobs retry {job_id}` continues it from its checkpoint")
            elif r.draining:
                self.queue.release(r.job)
                RunDir(r.job.run_dir).append_log("--- returned to the queue (the worker was stopped); the next "
                                                 "attempt continues from the checkpoint")
                self.log(f"job {job_id}: checkpointed and returned to the queue")
                continue
            else:
                status, error = "failed", f"exit code {code}: {RunDir(r.job.run_dir).log_tail()}"
            self._end(r.job, status, error)


def _register_on_this_machine(worker) -> list[int]:
    """Hold a lock file for this worker's life in a per-user directory of this machine; return the
    pids of the other live workers (a lock file whose lock can be taken was left by a dead one)."""
    import fcntl
    import tempfile
    d = os.path.join(tempfile.gettempdir(), f"deltaprop-workers-{os.getuid()}")
    others = []
    try:
        os.makedirs(d, exist_ok=True)
        mine = os.path.join(d, f"{os.getpid()}.lock")
        worker._machine_lock = os.open(mine, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(worker._machine_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for name in os.listdir(d):
            path = os.path.join(d, name)
            if path == mine or not name.endswith(".lock"):
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)  # stale
            except BlockingIOError:
                others.append(int(name.split(".")[0]))
            finally:
                os.close(fd)
    except (OSError, ValueError):
        pass  # a hint only
    return sorted(others)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the worker dies (Linux), so no orphan keeps
    training; and start with no signal blocked or ignored (a blocked mask and ignored signals are
    inherited across exec: a job started from a Ray task thread could otherwise never see the
    SIGTERM that asks it to checkpoint)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the worker died between fork and prctl
        os._exit(1)

