"""Models and checkpoints as checksummed safetensors files (never pickle).

The bytes are the `safetensors` library's (`safetensors.numpy.save` / `load`), so the files open
with `safetensors.torch.load_file` too. deltaprop adds what the library does not check:

- before parsing: the file's size and a header length within 16 MiB (a hostile length would
  otherwise be allocated), and a header that is UTF-8 JSON with no duplicate keys;
- a JSON `metadata` dict under `__metadata__["deltaprop"]`, with `"format": FORMAT` and a sha256
  `"checksum"` over that JSON and every tensor's name, dtype, shape and bytes, so corrupted
  metadata is caught as well as corrupted tensor data.

Every problem raises `CheckpointError` with one sentence naming the file. Writing goes through
`deltaprop._system.atomic_write`, so an existing file is never damaged.

    write_safetensors(path, tensors, metadata)
    tensors, metadata = read_safetensors(path)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import safetensors.numpy

from .._system import atomic_write
from ..errors import CheckpointError

FORMAT = "deltaprop/1"
MAX_HEADER = 16 * 1024 * 1024
_CODES = {np.dtype(v): k for k, v in {  # little-endian numpy dtype -> safetensors dtype
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}.items()}


def _checksum(entries, meta_json: str) -> str:
    """sha256 over the metadata JSON, then (name, dtype, shape, raw LE bytes) sorted by name."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, meta_json]).encode() + b"\n")
    for name, dtype, shape, data in sorted(entries, key=lambda e: e[0]):
        h.update(json.dumps([name, dtype, list(shape), len(data)]).encode() + b"\n")
        h.update(data)
    return h.hexdigest()


def _little_endian(name: str, a) -> tuple[str, np.ndarray]:
    a = np.asarray(a)
    le = a.dtype.newbyteorder("<")
    code = _CODES.get(le)
    if code is None:
        raise ValueError(f"tensor {name!r} has unsupported dtype {a.dtype}")
    return code, np.asarray(a, dtype=le, order="C")


def _raw(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes as a uint8 view (hashed without a copy)."""
    return a.reshape(-1).view(np.uint8)


def _canonical(blob: bytes) -> bytes:
    """The library's file with its header's keys sorted: it writes `__metadata__` from a hash map
    whose order changes from process to process, and the same run must give the same bytes."""
    n = int.from_bytes(blob[:8], "little")
    text = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict) -> None:
    """Write `tensors` and JSON `metadata` to `path` atomically."""
    arrays, entries = {}, []
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        code, arrays[name] = _little_endian(name, a)
        entries.append((name, code, arrays[name].shape, _raw(arrays[name])))
    meta_json = json.dumps(metadata, sort_keys=True)
    meta = {"format": FORMAT, "deltaprop": meta_json, "checksum": _checksum(entries, meta_json)}
    blob = _canonical(safetensors.numpy.save(arrays, metadata=meta))
    n = int.from_bytes(blob[:8], "little")
    if n > MAX_HEADER:  # never write what read_safetensors would refuse
        raise CheckpointError(f"cannot write {path}: its header would be {n} bytes, over the "
                              f"{MAX_HEADER >> 20} MiB that deltaprop reads back")
    atomic_write(path, blob)


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _read_bytes(path: Path, bad) -> bytes:
    """The whole file, after the checks that must come before anything is allocated for it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise bad(f"is not a safetensors file: it has only {size} bytes")
            n = int.from_bytes(f.read(8), "little")
            if n > MAX_HEADER:
                raise bad(f"has a header length of {n} bytes, over the 16 MiB limit: "
                          "not a deltaprop file, or a hostile one")
            if n > size - 8:
                raise bad(f"is truncated: header length is {n} bytes but only {size - 8} follow")
            f.seek(0)
            blob = f.read()
    except FileNotFoundError:
        raise bad("does not exist") from None
    except IsADirectoryError:
        raise bad("is a directory, not a safetensors file") from None
    except OSError as e:
        raise bad(f"cannot be read: {e.strerror or e}") from e
    if len(blob) != size:
        raise bad("changed size while being read")
    return blob


def _check_size(header: dict, data_len: int, bad) -> None:
    """A file cut short, or with bytes appended, named as such when the offsets are well-formed
    (the library would say "invalid offset"; anything stranger is left to it)."""
    spans = [e.get("data_offsets") if isinstance(e, dict) else None
             for k, e in header.items() if k != "__metadata__"]
    if not spans or not all(isinstance(s, list) and len(s) == 2 and all(type(o) is int for o in s)
                            and 0 <= s[0] <= s[1] for s in spans):
        return
    end = max(s[1] for s in spans)
    if end > data_len:
        raise bad(f"is truncated: header says {end} bytes of tensor data, file has {data_len}")
    if end < data_len:
        raise bad(f"has {data_len - end} trailing bytes that belong to no tensor")


def _header(path: Path, bad) -> tuple[bytes, int, dict]:
    """(the file's bytes, header length, header) after the pre-checks the library lacks."""
    blob = _read_bytes(path, bad)
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"is not a safetensors file: its header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad(f"is not a safetensors file: its header is a JSON {type(header).__name__}, not an object")
    return blob, n, header


def _tensors(blob: bytes, n: int, header: dict, bad) -> dict[str, np.ndarray]:
    """The library's parse (offsets, gaps, overlaps, dtypes, shape/size agreement), as arrays."""
    _check_size(header, len(blob) - 8 - n, bad)
    try:
        return safetensors.numpy.load(blob)
    except Exception as e:  # SafetensorError, or numpy refusing a shape or dtype it was handed
        what = str(e).removeprefix("Error while deserializing: ") or type(e).__name__
        raise bad(f"is not a valid safetensors file: {what}") from None


def _native(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder("="), copy=False)


def is_deltaprop_header(path: Path) -> bool:
    """Whether `path` claims to be a deltaprop file (its metadata names FORMAT); False for a plain
    safetensors file such as `safetensors.torch.save_file` writes. Raises on an unreadable file."""
    path = Path(path)
    _, _, header = _header(path, lambda what: CheckpointError(f"{path} {what}"))
    meta = header.get("__metadata__")
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def read_plain_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of any safetensors file (no deltaprop metadata needed, no checksum), with the
    same pre-checks; for weights a user saved with `safetensors.torch.save_file`."""
    path = Path(path)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} {what}")

    blob, n, header = _header(path, bad)
    return {name: _native(a) for name, a in _tensors(blob, n, header, bad).items()}


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Validate `path` completely and return (writable native-order arrays, metadata dict)."""
    path = Path(path)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} {what}")

    blob, n, header = _header(path, bad)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("is not a deltaprop file: its header has no __metadata__ string map")
    if meta.get("format") != FORMAT:
        raise bad(f"is not a deltaprop file: format is {meta.get('format')!r}, expected {FORMAT!r}")
    checksum, meta_json = meta.get("checksum"), meta.get("deltaprop")
    if not isinstance(checksum, str):
        raise bad("has no checksum in its metadata")
    if not isinstance(meta_json, str):
        raise bad("has no deltaprop metadata")
    entries, tensors = [], {}
    for name, a in _tensors(blob, n, header, bad).items():
        code, le = _little_endian(name, a)
        entries.append((name, code, header[name]["shape"], _raw(le)))
        tensors[name] = _native(a)
    if _checksum(entries, meta_json) != checksum:
        raise bad("checksum mismatch: the file is corrupted")
    try:
        metadata = json.loads(meta_json)
    except (ValueError, RecursionError):
        metadata = None
    if not isinstance(metadata, dict):
        raise bad("has unreadable deltaprop metadata: it is not a JSON object")
    return tensors, metadata
