"""What a benchmark worker process is allowed to use, and what it really used.

`pin_cores(n)` restricts this process (and every thread it starts afterwards) to the first `n`
cores of its allowed set with `os.sched_setaffinity`, before any library is imported: a library
that sizes its thread pool from the cores it sees (XLA's Eigen pool, OpenBLAS, OpenMP) then sees
`n`, and one that starts more threads still cannot run them on more than `n` cores.
`EpochClock` times the epochs a runner runs, and for the timed ones (every epoch after the
warm-up) also reads each OS thread's CPU time from /proc/self/task/*/stat before and after, so
the report can say how many threads really ran and how many cores' worth of CPU they used
(/proc/self/task/*/schedstat's nanoseconds on a CPU when the kernel has it, else stat's
utime + stime in clock ticks, too coarse for epochs much shorter than a second).

    import procinfo                                    # with bench/ on sys.path
    affinity = procinfo.pin_cores(2)                   # -> [0, 1]
    clock = procinfo.EpochClock()
    clock.start(); ...; clock.stop()                   # around each epoch, warm-up first
    clock.times, clock.threads_info()
"""

import os
import time


def pin_cores(n: int) -> list[int]:
    """Restrict this process to the first `n` of its allowed cores; returns the new set."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:max(1, n)])
    return sorted(os.sched_getaffinity(0))


HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def task_cpu() -> dict[str, tuple[float, str]]:
    """{thread id: (CPU seconds so far, thread name)} of every thread of this process."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                s = f.read()
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    cpu = int(f.read().split()[0]) / 1e9          # ns on a CPU
            except (OSError, ValueError, IndexError):
                fields = s[s.rfind(")") + 2:].split()  # fields[0] is field 3 (state); utime 14, stime 15
                cpu = (int(fields[11]) + int(fields[12])) / HZ
        except OSError:  # the thread ended between listdir and open
            continue
        out[tid] = (cpu, s[s.find("(") + 1:s.rfind(")")])
    return out


class EpochClock:
    """Wall time of every epoch; CPU time per OS thread summed over the timed epochs (all but
    the first, the warm-up)."""

    def __init__(self):
        self.times: list[float] = []
        self.busy: dict[str, list] = {}   # tid -> [CPU seconds during timed epochs, name]
        self.timed_wall = 0.0
        self.n_threads = 0
        self.all_names: dict[str, int] = {}
        self._t0 = None
        self._cpu0 = None

    def start(self):
        if self.times:  # a timed epoch
            self._cpu0 = task_cpu()
        self._t0 = time.perf_counter()

    def stop(self):
        dt = time.perf_counter() - self._t0
        if self.times:
            cpu1 = task_cpu()
            if len(cpu1) >= self.n_threads:
                self.n_threads = len(cpu1)
                self.all_names = {}
                for _, name in cpu1.values():
                    self.all_names[name] = self.all_names.get(name, 0) + 1
            for tid, (cpu, name) in cpu1.items():
                d = cpu - self._cpu0.get(tid, (0.0, name))[0]
                if d > 1e-5:  # 10 us: a thread that only woke up to go back to sleep did not run
                    self.busy.setdefault(tid, [0, name])[0] += d
            self.timed_wall += dt
        self.times.append(dt)

    def threads_info(self) -> dict:
        """Threads that accumulated CPU time in the timed epochs, their names, and the CPU
        seconds / wall seconds ratio (cores' worth used; > the pinned cores is impossible)."""
        cpu_s = sum(t for t, _ in self.busy.values())
        names = {}
        for _, name in self.busy.values():
            names[name] = names.get(name, 0) + 1
        return {"threads_total": self.n_threads, "all_names": dict(sorted(self.all_names.items())),
                "threads_busy": len(self.busy),
                "busy_names": dict(sorted(names.items())),
                "busy_cpu_seconds": sorted((round(t, 4) for t, _ in self.busy.values()), reverse=True),
                "cpu_seconds": cpu_s, "wall_seconds": self.timed_wall,
                "cores_used": cpu_s / self.timed_wall if self.timed_wall else None}
