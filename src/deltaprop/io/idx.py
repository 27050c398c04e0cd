"""IDX files (the MNIST format): read gzipped or raw, validate the header, cache decompressed arrays.

`read_idx(path)` returns the array with its header's shape and a native-endian dtype. A gzipped
file is decompressed once and cached as .npy in `$DELTAPROP_CACHE_DIR` (default
`$XDG_CACHE_HOME/deltaprop` or `~/.cache/deltaprop`; set it empty to turn caching off), keyed by
the source's path, size and mtime. The cache is best-effort: unwritable or corrupt means re-read.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from .._system import atomic_write, data_cache_dir
from ..errors import DataError, WriteError

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_idx(path: Path) -> Path | None:
    """`path` as given, else with `.gz` added or removed; None if neither exists."""
    alt = path.with_name(path.name[:-3]) if path.name.endswith(".gz") else path.with_name(path.name + ".gz")
    return next((p for p in (path, alt) if p.is_file()), None)


def read_idx(path: Path, cache: bool) -> np.ndarray:
    """Read an IDX file (gzipped or raw, detected by magic bytes), validating header vs size.

    Raises DataError naming the file on a bad magic number, a truncated header, or a payload
    whose size differs from the header's shape (truncated or trailing bytes).
    """
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or head[3] == 0:
                raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'}; "
                                "expected 0000 + type code + dimension count).")
            dims_raw = f.read(4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                raise DataError(f"{path}: truncated IDX header ({head[3]} dimensions declared).")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            cpath = _cache_path(path, dims, dtype) if cache and gz else None
            cached = _cache_load(cpath, dims, dtype)
            if cached is not None:
                return cached
            if 0 in dims:
                raise DataError(f"{path}: the IDX header declares shape {dims}: no data.")
            nbytes = math.prod(dims) * dtype.itemsize  # Python ints: 2^32-1 dims overflow int64
            size = path.stat().st_size - (0 if gz else 4 + 4 * len(dims))
            if nbytes > (1100 * size + (1 << 20) if gz else size):  # gzip inflates at most ~1032x
                raise DataError(f"{path}: IDX size mismatch: header declares shape {dims} ({nbytes} data "
                                f"bytes) but the file is too small for that (truncated or corrupt).")
            buf = np.empty(nbytes, dtype=np.uint8)
            got = _read_into(f, memoryview(buf))
            extra = len(f.read(1))
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # unreadable, bad or truncated gzip stream
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}).") from e
    if got != nbytes or extra:
        raise DataError(f"{path}: IDX size mismatch: header declares shape {dims} ({nbytes} data bytes) "
                        f"but the file has {got}{' and more' if extra else ''} (truncated or corrupt).")
    arr = buf.view(dtype).astype(dtype.newbyteorder("="), copy=False).reshape(dims)
    if cpath is not None:
        _cache_store(cpath, arr)
    return arr


def _read_into(f, view: memoryview) -> int:
    got = 0
    while got < len(view) and (n := f.readinto(view[got:])):
        got += n
    return got


def _cache_path(path: Path, dims: tuple[int, ...], dtype: np.dtype) -> Path | None:
    """Cache file for a decompressed IDX array, keyed by source path, size and mtime; None: off."""
    root = data_cache_dir()
    if root is None:
        return None
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dims}|{dtype.str}"
    return Path(root) / f"{path.name.split('.')[0]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def _cache_load(cpath: Path | None, dims: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    try:
        arr = np.load(cpath, allow_pickle=False) if cpath is not None and cpath.is_file() else None
    except Exception:  # corrupt entry: re-read the source and overwrite it
        return None
    return arr if arr is not None and arr.shape == dims and arr.dtype == dtype.newbyteorder("=") else None


def _cache_store(cpath: Path, arr: np.ndarray) -> None:
    """Write atomically; silently give up if the directory is not writable (a cache, nothing more)."""
    try:
        cpath.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cpath, lambda f: np.save(f, arr))
    except (OSError, WriteError):
        pass
