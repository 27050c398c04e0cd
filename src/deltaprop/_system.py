"""Facts about this machine and process that every layer needs, with no heavy imports.

    cores()              CPUs this process may run on (its affinity mask, else the CPU count)
    memory_bytes()       physical memory
    home()               DELTAPROP_HOME: the job queue and default run directories (./deltaprop-runs)
    numba_cache_dir()    where Numba caches compiled code (one place for make run, tests and the CLI)
    kernel_cache_dir()   where generated kernel modules live (inside it)
    data_cache_dir()     where decompressed datasets are cached (None: caching off)
    atomic_write(path, data)   the one way a file is replaced (see its docstring)
    catch_signals(on_signal)   SIGINT/SIGTERM as a callback (a run checkpoints, then stops)

The job runner imports this module to count cores; it must never import Numba.
"""

import os
from contextlib import contextmanager
from pathlib import Path


def cores() -> int:
    """CPUs this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_bytes() -> int:
    """Physical memory of this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def home() -> Path:
    """$DELTAPROP_HOME, default ./deltaprop-runs."""
    return Path(os.environ.get("DELTAPROP_HOME", "deltaprop-runs"))


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")) / "deltaprop"


def numba_cache_dir() -> Path:
    """Where Numba caches compiled code: $NUMBA_CACHE_DIR, else ~/.cache/deltaprop/numba (deltaprop
    sets that default when it is imported, so `make run`, `make test` and the CLI share one cache)."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or _user_cache() / "numba")


def kernel_cache_dir() -> Path:
    """The generated kernel modules: inside the Numba cache, so they move with it."""
    return numba_cache_dir() / "deltaprop"


def data_cache_dir() -> Path | None:
    """$DELTAPROP_CACHE_DIR (set but empty: no caching), else ~/.cache/deltaprop."""
    root = os.environ.get("DELTAPROP_CACHE_DIR")
    if root is None:
        return _user_cache()
    return Path(root) if root else None


def atomic_write(path, data, *, error=None) -> None:
    """Replace `path` with `data` (bytes, str, or a callable that writes to a binary file) so that
    a reader sees the old file or the new one, never a mix, even after a crash or a full disk.

    The temp file is created exclusively in the target's directory under a random name
    (O_CREAT | O_EXCL | O_NOFOLLOW: a planted file or symlink is never written through), written,
    fsynced, `os.replace`d onto `path`, and the directory is fsynced. On failure the temp file is
    removed, `path` is untouched, and `error` (default `WriteError`, a DeltapropError) is raised:
    "cannot write PATH: No space left on device (ENOSPC)"."""
    import secrets

    from .errors import WriteError

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    created = False
    try:
        fd = os.open(tmp, flags, 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        created = False
        fsync_dir(path.parent)
    except OSError as exc:
        raise (error or WriteError)(f"cannot write {path}: {describe(exc)}") from None
    finally:
        if created:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def describe(exc: OSError) -> str:
    """'No space left on device (ENOSPC)': an OSError's reason and its errno name."""
    import errno
    code = errno.errorcode.get(exc.errno or 0)
    return (exc.strerror or str(exc)) + (f" ({code})" if code else "")


def fsync_dir(directory) -> None:
    """Make a rename or a new file in `directory` durable (a no-op where directories cannot be opened)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    fd = os.open(directory, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_locked(path) -> bool:
    """Whether some process holds an exclusive flock on directory `path` now (a run being
    trained, a tune controller running); False if the directory does not exist."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@contextmanager
def catch_signals(on_signal):
    """SIGINT and SIGTERM call `on_signal(signum)` instead of stopping the process (main thread
    only: elsewhere signals cannot be handled)."""
    import signal
    import threading
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda s, f: on_signal(s))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
