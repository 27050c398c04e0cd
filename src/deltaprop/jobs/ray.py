"""Run claimed jobs as Ray tasks (`deltaprop worker --executor ray [--address ADDR]`).

The SQLite queue stays the source of truth: the worker claims a job, then runs it as a Ray task
with `num_cpus` = the job's threads (the largest node's CPUs divided by the concurrency, so every
task fits on one node; the attempt line in the job's log records what Ray granted). The task
runs `deltaprop resume RUN_DIR` in a child process (a crash kills the child, not the Ray worker),
so run directories must be on storage every node sees. A Ray worker killed mid-job fails the
task; the job's attempt fails, goes back to the queue, and the next attempt resumes from the
newest checkpoint. Cancel and drain reach the child as SIGTERM (through `ray.cancel`), so it
checkpoints before it stops.
"""

import os
import signal
import socket
import subprocess
from pathlib import Path

from ..errors import DeltapropError
from ..io.rundir import RunDir
from .worker import _die_with_parent, job_command, job_env


def _run_job(run_dir: str, threads: int, attempt: int, max_attempts: int) -> int:
    """Body of the Ray task: the job in a child process; SIGTERM to it if the task is cancelled."""
    import ray
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)  # what Ray granted the task
    rd = RunDir(run_dir)
    header = rd.attempt_header(attempt, max_attempts, f"ray node {socket.gethostname()} pid {os.getpid()}, "
                               f"num_cpus {cpus:g}")
    with rd.open_log() as log:
        log.write(header.encode())
        log.flush()
        proc = subprocess.Popen(job_command(run_dir, threads), stdout=log, stderr=subprocess.STDOUT,
                                env=job_env(threads), preexec_fn=_die_with_parent)
        try:
            while True:  # in slices: ray.cancel's KeyboardInterrupt (interrupt_main) is raised between
                try:     # bytecodes, never inside a blocking waitpid, which would hold it till the end
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    continue
        except KeyboardInterrupt:  # ray.cancel(): let the job checkpoint, then report how it ended
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:  # it ended at that very moment
                pass
            return proc.wait()


def _token_source() -> str | None:
    """Where Ray would read this driver's authentication token from, in Ray's own order."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


class RayExecutor:
    def __init__(self, address: str | None = None):
        source = _token_source()
        if address and source and "RAY_AUTH_MODE" not in os.environ:
            # Ray >= 2.59 starts a cluster with token authentication whenever the machine holds a
            # token (a local ray.init() writes ~/.ray/auth_token), but a driver connecting to an
            # address sends none unless told to; a cluster without authentication ignores it.
            os.environ["RAY_AUTH_MODE"] = "token"
        try:
            import ray
        except ImportError:
            raise DeltapropError("--executor ray needs Ray: pip install 'deltaprop[ray]'") from None
        self.ray = ray
        try:
            if not ray.is_initialized():
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
        except Exception as exc:  # ConnectionError, Ray's AuthenticationError, ValueError...
            if not address:
                raise DeltapropError(f"cannot start a local Ray cluster: {exc}") from None
            sent = (f"it sent the token from {source}" if os.environ.get("RAY_AUTH_MODE") == "token" and source
                    else "it sent no authentication token")
            raise DeltapropError(
                f"cannot connect to the Ray cluster at {address}: {exc}. If the cluster uses token "
                f"authentication (Ray's default since 2.59), {sent}: give this worker the cluster's "
                "token, e.g. RAY_AUTH_TOKEN=<the output of `ray get-auth-token` on the head>."
            ) from None
        self.task = ray.remote(max_retries=0)(_run_job)

    def cores(self) -> int:
        """CPUs of the largest live node: a task's num_cpus must fit on one node, or it never runs."""
        cpus = [node["Resources"].get("CPU", 0) for node in self.ray.nodes() if node.get("Alive")]
        return max(1, int(max(cpus, default=1)))

    def start(self, job, threads: int):
        return self.task.options(num_cpus=threads).remote(job.run_dir, threads, job.attempts, job.max_attempts)

    def poll(self, ref) -> int | None:
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(ref))
        except self.ray.exceptions.TaskCancelledError:
            return -int(signal.SIGTERM)
        except self.ray.exceptions.RayError:  # the Ray worker died (killed, OOM, node lost)
            return -int(signal.SIGKILL)

    def stop(self, ref, sig=signal.SIGTERM) -> None:
        self.ray.cancel(ref, force=False)

    def kill(self, ref) -> None:
        self.ray.cancel(ref, force=True)

    def close(self) -> None:
        self.ray.shutdown()
