"""Kernel factory: the network kernels compiled for one set of activations.

`kernels/network.py` is a template that calls `act_block`/`grad_block`. For a tuple of activations
this module generates those two functions (one loop per activation, the branch on the id hoisted
out of the loops), appends them to the template's source, writes the file into the kernel cache
directory under a name that hashes everything the compiled code depends on (template source,
the other kernel modules it calls, activation bytecode with the helpers and constants it reads,
plugin versions, deltaprop/Numba versions), and imports it. Numba's on-disk
cache then works as for any file; editing a plugin changes the hash, so a stale kernel is never
loaded. Compilation happens on first call, never at import. A read-only or broken cache directory
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


def _act_source(acts: tuple[Activation, ...]) -> str:
    # Each row is a slice indexed from 0: offset indices keep a negative-index check per access,
    # which stops LLVM from vectorising the loop (see kernels/optim.update_range).
    fwd, grad = [], []
    for i, act in enumerate(acts):
        dz = f"_d{i}(_f{i}(z))" if act.derivative_of == "output" else f"_d{i}(z)"
        fwd.append(f"""    if k == {i}:  # {act.name}
        for r in range(r0, r1):
            z_, a_ = Z[off + r * ncols + c0:off + r * ncols + c1], A[off + r * ncols + c0:off + r * ncols + c1]
            for j in range(z_.size):
                z = z_[j] + b_[j]
                z_[j] = z
                a_[j] = _f{i}(z)
        return
""")
        grad.append(f"""    if k == {i}:  # {act.name}
        for r in range(r0, r1):
            z_, d_ = Z[off + r * ncols + c0:off + r * ncols + c1], D[off + r * ncols + c0:off + r * ncols + c1]
            for j in range(z_.size):
                z = z_[j]
                d_[j] *= {dz}
        return
""")
    return ("\n\n# ---- generated by deltaprop.compute.factory ----\n"
            "@numba.njit(**JIT)\n"
            "def act_block(k, Z, A, off, r0, r1, ncols, c0, c1, theta, boff):\n"
            "    b_ = theta[boff + c0:boff + c1]\n" + "".join(fwd) +
            "\n\n@numba.njit(**JIT)\n"
            "def grad_block(k, Z, D, off, r0, r1, ncols, c0, c1):\n" + "".join(grad))


def network_kernels(acts: tuple[Activation, ...]) -> ModuleType:
    """The compiled-on-first-use network module (run_steps, predict, ...) for these activations;
    activation id i in `act` arrays means acts[i]."""
    import numba

    from .. import __version__
    from ..kernels import network
    template = Path(network.__file__).read_text()
    source = template + _act_source(acts)
    h = hashlib.sha256(source.encode())
    for dep in sorted(Path(network.__file__).parent.glob("*.py")):  # compiled into the kernels too:
        h.update(dep.read_bytes())  # Numba's cache would not notice their edits on its own
    h.update(f"{__version__}|{numba.__version__}|{sys.version}".encode())
    for act in acts:
        h.update(f"{act.name}|{act.source}|{act.version}|{act.derivative_of}".encode())
        h.update(_fingerprint(act.forward) + _fingerprint(act.derivative))
    key = h.hexdigest()[:20]
    if key in _LOADED:
        return _LOADED[key]
    name = f"deltaprop_net_{key}"
    path = _write(name, source)
    module = ModuleType(name)
    module.__file__ = str(path)
    for i, act in enumerate(acts):
        module.__dict__[f"_f{i}"] = act.forward
        module.__dict__[f"_d{i}"] = act.derivative
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    _LOADED[key] = module
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
