"""Kernel factory: the network kernels, and each activation's block functions.

Two kinds of compiled code, each written as a source file into the kernel cache directory under a
name that hashes everything the compiled code depends on, and imported from there, so Numba's
on-disk cache works as for any file and an edit is never loaded stale:

- `network_kernels()`: kernels/network.py (forward, backward, run_steps, predict), the same for
  every network: it calls the activations through function pointers (kernels/blocks.py). Its key
  hashes its source, the kernel modules compiled into it, and the deltaprop/Numba/Python versions.
- `activation_blocks(act, dtype)`: one activation's forward and grad blocks as C callbacks for one
  dtype. Its key adds the activation's name, source, version and the bytecode of its functions with
  the helpers and constants they read (`_fingerprint`): editing a plugin changes it.

So a new activation, a plugin's included, compiles only its two small blocks; the network kernels
compile once per dtype. Compilation happens on first use, never at import (a block module compiles
as it is imported, which `Engine` does at its first call). A read-only or broken cache directory
falls back to a private temporary one.
"""

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from types import CodeType, FunctionType, ModuleType

import numpy as np

from .._system import atomic_write, kernel_cache_dir
from ..errors import WriteError
from ..plugins.activation import Activation

_LOADED: dict[str, ModuleType] = {}


# Code from these packages is pinned by their versions (Numba's is in the hash; the rest is stable).
_PINNED = {"numba", "numpy", "math", "cmath", "builtins", "llvmlite"}
_SCALARS = (bool, int, float, complex, str, bytes, type(None), np.generic)


def _fingerprint(fn) -> bytes:
    """Everything a jitted scalar function compiles from: its bytecode, and recursively that of
    the jitted (or plain) functions it calls through module globals or closures, plus the values
    of the module-level constants, tuples and arrays it reads (Numba freezes those into the
    machine code). Without this, editing a plugin's helper or constant would load a stale kernel."""
    out: list = []
    _walk(fn, out, set())
    return repr(out).encode()


def _walk(fn, out: list, seen: set) -> None:
    py = getattr(fn, "py_func", fn)
    if id(py) in seen:  # recursion, or a helper called twice
        out.append(("seen", py.__module__, py.__qualname__))
        return
    seen.add(id(py))
    code = py.__code__
    out.append(("fn", py.__module__, py.__qualname__, _code(code), _const(py.__defaults__)))
    names = _names(code)
    refs = [(n, py.__globals__[n]) for n in names if n in py.__globals__]
    for name, cell in zip(code.co_freevars, py.__closure__ or ()):
        try:
            refs.append((name, cell.cell_contents))
        except ValueError:  # an empty cell
            refs.append((name, None))
    for name, value in refs:
        if isinstance(value, ModuleType):  # helpers.SCALE, helpers.f: attributes read by name
            if value.__name__.split(".")[0] not in _PINNED:
                for attr in names:
                    if attr in vars(value):
                        _value(f"{name}.{attr}", vars(value)[attr], out, seen)
        else:
            _value(name, value, out, seen)


def _value(name: str, value, out: list, seen: set) -> None:
    if hasattr(value, "py_func") or isinstance(value, FunctionType):
        module = getattr(value, "__module__", None) or ""
        if module.split(".")[0] in _PINNED:
            out.append(("ref", name, module, getattr(value, "__qualname__", "")))
        else:
            _walk(value, out, seen)
    elif isinstance(value, np.ndarray):
        out.append(("array", name, value.dtype.str, value.shape, hashlib.sha256(value.tobytes()).hexdigest()))
    else:
        const = _const(value)
        if const is not None:
            out.append(("const", name, const))


def _const(value) -> str | None:
    """repr of a scalar or a (nested) tuple of scalars, else None (not a value Numba freezes)."""
    if isinstance(value, _SCALARS):
        return repr(value)
    if isinstance(value, tuple):
        items = [_const(v) for v in value]
        return None if None in items else "(" + ", ".join(items) + ",)"
    return None


def _code(code: CodeType) -> tuple:
    """Bytecode, constants and names of a code object, nested code objects included (their repr
    would hold a memory address, different in every process)."""
    consts = tuple(_code(c) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.co_code, consts, code.co_names, code.co_freevars


def _names(code: CodeType) -> list[str]:
    names = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, CodeType):
            names += [n for n in _names(c) if n not in names]
    return names


def _block_source(act: Activation, dtype: np.dtype) -> str:
    # Each row is a slice indexed from 0: offset indices keep a negative-index check per access,
    # which stops LLVM from vectorising the loop (see kernels/optim.update_range).
    dz = "_d(_f(z))" if act.derivative_of == "output" else "_d(z)"
    return f"""\"\"\"{act.name} ({act.source} {act.version}), {dtype.name}: generated by deltaprop.compute.factory.\"\"\"
import numba
from numba import carray

from deltaprop.kernels._config import CJIT
from deltaprop.kernels.blocks import forward_signature, grad_signature


@numba.cfunc(forward_signature(numba.{dtype.name}), **CJIT)
def forward_block(zp, ap, off, r0, r1, ncols, c0, c1, tp, boff):
    Z, A = carray(zp, off + r1 * ncols), carray(ap, off + r1 * ncols)
    b_ = carray(tp, boff + c1)[boff + c0:boff + c1]
    for r in range(r0, r1):
        z_, a_ = Z[off + r * ncols + c0:off + r * ncols + c1], A[off + r * ncols + c0:off + r * ncols + c1]
        for j in range(z_.size):
            z = z_[j] + b_[j]
            z_[j] = z
            a_[j] = _f(z)


@numba.cfunc(grad_signature(numba.{dtype.name}), **CJIT)
def grad_block(zp, dp, off, r0, r1, ncols, c0, c1):
    Z, D = carray(zp, off + r1 * ncols), carray(dp, off + r1 * ncols)
    for r in range(r0, r1):
        z_, d_ = Z[off + r * ncols + c0:off + r * ncols + c1], D[off + r * ncols + c0:off + r * ncols + c1]
        for j in range(z_.size):
            z = z_[j]
            d_[j] *= {dz}
"""


def _versions(h) -> None:
    import numba

    from .. import __version__
    from ..kernels import network
    for dep in sorted(Path(network.__file__).parent.glob("*.py")):  # compiled into the kernels:
        h.update(dep.read_bytes())  # Numba's cache would not notice their edits on its own
    h.update(f"{__version__}|{numba.__version__}|{sys.version}".encode())


def network_kernels() -> ModuleType:
    """The compiled-on-first-use network module (run_steps, predict, ...), one for every network."""
    from ..kernels import network
    source = Path(network.__file__).read_text()
    h = hashlib.sha256(source.encode())
    _versions(h)
    return _load(f"deltaprop_net_{h.hexdigest()[:20]}", source, {})


def activation_blocks(act: Activation, dtype) -> ModuleType:
    """The module holding `act`'s `forward_block` and `grad_block` C callbacks for `dtype`,
    compiled (or loaded from the cache) as it is imported; see kernels/blocks.py."""
    dtype = np.dtype(dtype)
    source = _block_source(act, dtype)
    h = hashlib.sha256(source.encode())
    _versions(h)
    h.update(f"{act.name}|{act.source}|{act.version}|{act.derivative_of}".encode())
    h.update(_fingerprint(act.forward) + _fingerprint(act.derivative))
    return _load(f"deltaprop_act_{h.hexdigest()[:20]}", source, {"_f": act.forward, "_d": act.derivative})


def _load(name: str, source: str, names: dict) -> ModuleType:
    if name in _LOADED:
        return _LOADED[name]
    path = _write(name, source)
    module = ModuleType(name)
    module.__file__ = str(path)
    module.__dict__.update(names)
    sys.modules[name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    _LOADED[name] = module
    return module


def _write(name: str, source: str) -> Path:
    for directory in (kernel_cache_dir(), Path(tempfile.gettempdir()) / f"deltaprop-kernels-{os.getuid()}"):
        path = directory / f"{name}.py"
        try:
            if path.is_file() and path.read_text() == source:
                return path
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, source)  # a concurrent process sees the old or the new file
            return path
        except (OSError, WriteError):
            continue
    raise OSError("no writable directory for deltaprop's generated kernels")
