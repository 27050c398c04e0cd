"""Checkpoints and models as crash-safe, checksummed safetensors files (never pickle).

`write_safetensors` stores the tensors plus a JSON `metadata` dict (under `__metadata__["deltaprop"]`,
with `"format": FORMAT` and a sha256 `"checksum"` over that JSON and every tensor's name, dtype,
shape and bytes, so a corrupted metadata header is caught as well as corrupted tensor data).
It writes a dot-prefixed temp file in the target directory, fsyncs it, `os.replace`s it onto the
target and fsyncs the directory, so an existing file is never damaged. `read_safetensors` validates
the whole file by hand (sizes, header, offsets, dtypes, format, checksum) before building arrays, and
every problem raises `CheckpointError` with one sentence naming the file. The files load with
`safetensors.numpy.load_file` / `safetensors.torch.load_file` too.

    path = save_checkpoint(run_dir / "checkpoints", step, tensors, metadata, keep=3)
    path, tensors, metadata, skipped = latest_valid(run_dir / "checkpoints")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from pathlib import Path

import numpy as np

from deltaprop.errors import CheckpointError

FORMAT = "deltaprop/1"
MAX_HEADER = 16 * 1024 * 1024
_DTYPES = {  # safetensors dtype -> little-endian numpy dtype
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_CODES = {np.dtype(v).newbyteorder("<"): k for k, v in _DTYPES.items()}
_NAME_RE = re.compile(r"^step-(\d+)\.safetensors$")


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


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict) -> None:
    """Write `tensors` and JSON `metadata` to `path` atomically (temp file, fsync, replace, fsync dir)."""
    path = Path(path)
    arrays, entries = {}, []
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        code, arrays[name] = _little_endian(name, a)
        entries.append((name, code, arrays[name].shape, arrays[name].tobytes()))
    meta_json = json.dumps(metadata, sort_keys=True)
    meta = {"format": FORMAT, "deltaprop": meta_json, "checksum": _checksum(entries, meta_json)}
    blob = _serialize(entries, meta)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _serialize(entries, meta: dict) -> bytes:
    """The safetensors bytes, deterministically: tensors by name, header keys sorted, padded to 8."""
    header, offset = {"__metadata__": meta}, 0
    for name, code, shape, raw in sorted(entries):
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(raw for _, _, _, raw in sorted(entries))


def _fsync_dir(directory: Path) -> None:
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:  # Windows: directories cannot be opened/fsynced
        return
    fd = os.open(directory, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Validate `path` completely and return (writable native-order arrays, metadata dict)."""
    path = Path(path)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} {what}")

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
            raw = f.read(n)
            data = f.read()
    except FileNotFoundError:
        raise bad("does not exist") from None
    except IsADirectoryError:
        raise bad("is a directory, not a safetensors file") from None
    except OSError as e:
        raise bad(f"cannot be read: {e.strerror or e}") from e
    if len(raw) != n or len(raw) + len(data) + 8 != size:
        raise bad("changed size while being read")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"is not a safetensors file: its header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad(f"is not a safetensors file: its header is a JSON {type(header).__name__}, not an object")

    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("is not a deltaprop file: its header has no __metadata__ string map")
    if meta.get("format") != FORMAT:
        raise bad(f"is not a deltaprop file: format is {meta.get('format')!r}, expected {FORMAT!r}")

    spans = []
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"has a malformed header entry for tensor {name!r}")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in _DTYPES:
            raise bad(f"has tensor {name!r} with unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise bad(f"has tensor {name!r} with invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise bad(f"has tensor {name!r} with invalid data_offsets {offs!r}")
        want = 0 if 0 in shape else np.dtype(_DTYPES[dtype]).itemsize
        for s in shape:  # stop early: a hostile header may hold thousands of huge dimensions
            want *= s
            if want >= 2**64:
                raise bad(f"has tensor {name!r} whose shape needs 2^64 bytes or more")
        if offs[1] - offs[0] != want:
            raise bad(f"has tensor {name!r} whose shape {shape} {dtype} needs {want} bytes "
                      f"but its offsets span {offs[1] - offs[0]}")
        spans.append((offs[0], offs[1], name))
    needed = max((end for _, end, _ in spans), default=0)
    if needed > len(data):
        raise bad(f"is truncated: header says {needed} bytes of tensor data, file has {len(data)}")
    pos = 0
    for begin, end, name in sorted(spans):
        if begin < pos:
            raise bad(f"has overlapping data for tensor {name!r}")
        if begin > pos:
            raise bad(f"has a gap of unowned bytes before tensor {name!r}")
        pos = end
    if pos != len(data):
        raise bad(f"has {len(data) - pos} trailing bytes that belong to no tensor")

    view = memoryview(data)
    entries = [(name, header[name]["dtype"], header[name]["shape"], view[b:e]) for b, e, name in spans]
    checksum, meta_json = meta.get("checksum"), meta.get("deltaprop")
    if not isinstance(checksum, str):
        raise bad("has no checksum in its metadata")
    if not isinstance(meta_json, str):
        raise bad("has no deltaprop metadata")
    if _checksum(entries, meta_json) != checksum:
        raise bad("checksum mismatch: the file is corrupted")
    try:
        metadata = json.loads(meta_json)
    except (ValueError, RecursionError):
        metadata = None
    if not isinstance(metadata, dict):
        raise bad("has unreadable deltaprop metadata: it is not a JSON object")
    tensors = {}
    for name, dtype, shape, buf in entries:
        le = np.dtype(_DTYPES[dtype])
        a = np.frombuffer(buf, dtype=le).astype(le.newbyteorder("="), copy=True)
        try:
            tensors[name] = a.reshape(shape)
        except ValueError as e:  # e.g. more dimensions than numpy supports
            raise bad(f"has tensor {name!r} with a shape numpy cannot represent ({e})") from None
    return tensors, metadata


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint for `step`: `step-0000000042.safetensors`."""
    if not _is_int(step) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return f"step-{step:010d}.safetensors"


def list_checkpoints(directory: Path) -> list[Path]:
    """`step-*.safetensors` files in `directory`, oldest step first (temp files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` (>= 1) checkpoints in `directory`."""
    if not _is_int(keep) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    for p in list_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)


def save_checkpoint(directory: Path, step: int, tensors: dict[str, np.ndarray], metadata: dict,
                    keep: int) -> Path:
    """Write the checkpoint for `step` into `directory` (created if needed), prune, return its path."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {e.strerror or e}") from e
    path = directory / checkpoint_name(step)
    write_safetensors(path, tensors, metadata)
    prune(directory, keep)
    return path


def latest_valid(directory: Path, check=None) -> tuple[Path, dict[str, np.ndarray], dict, list[tuple[Path, str]]]:
    """Newest checkpoint that reads cleanly: (path, tensors, metadata, skipped newer (path, error)).

    `check(path, tensors, metadata)`, if given, validates the contents further (e.g. the trainer's
    restore); a CheckpointError from it skips that checkpoint too."""
    skipped: list[tuple[Path, str]] = []
    for p in reversed(list_checkpoints(directory)):
        try:
            tensors, metadata = read_safetensors(p)
            if check is not None:
                check(p, tensors, metadata)
        except CheckpointError as e:
            skipped.append((p, str(e)))
            continue
        return p, tensors, metadata, skipped
    if not skipped:
        raise CheckpointError(f"no checkpoints (step-*.safetensors) in {directory}")
    problems = "; ".join(msg for _, msg in skipped)
    raise CheckpointError(f"no valid checkpoint in {directory}: {problems}")
