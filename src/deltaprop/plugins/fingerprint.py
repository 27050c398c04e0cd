"""What a jitted activation function compiles from, for cache keys, and keeping stale code out.

`fingerprint(fn)` is the key `compute/factory.py` names an activation's compiled blocks by.
`uncache_helpers(fn)` turns off Numba's own on-disk cache for a plugin's jitted functions and the
plugin helpers they call: Numba keys that cache by the function's own source file only, so after
an edit of a constant or helper in *another* module of the plugin it would hand back the old
machine code (to the derivative check and to the blocks compiled under the new key alike).
Without it they compile in the process that needs them (tenths of a second); the blocks
themselves stay cached under the fingerprint.
"""

import hashlib
from types import CodeType, FunctionType, ModuleType

import numpy as np

# Code from these packages is pinned by their versions (Numba's is in the hash; the rest is stable).
_PINNED = {"numba", "numpy", "math", "cmath", "builtins", "llvmlite"}
_SCALARS = (bool, int, float, complex, str, bytes, type(None), np.generic)


def fingerprint(fn) -> bytes:
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


def uncache_helpers(fn) -> None:
    """Numba's disk cache off for `fn` and every jitted function it reaches that is not pinned by
    a version (Numba, NumPy, ...) nor deltaprop's own (pinned by deltaprop's version)."""
    from numba.core.caching import NullCache
    for d in _dispatchers(fn, set()):
        module = (d.py_func.__module__ or "").split(".")[0]
        if module not in _PINNED and module != "deltaprop" and hasattr(d, "_cache"):
            d._cache = NullCache()


def _dispatchers(fn, seen: set) -> list:
    py = getattr(fn, "py_func", fn)
    if id(py) in seen:
        return []
    seen.add(id(py))
    found = [fn] if hasattr(fn, "py_func") else []
    names = _names(py.__code__)
    values = [py.__globals__[n] for n in names if n in py.__globals__]
    for cell in py.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:
            pass
    for v in values:
        if isinstance(v, ModuleType):  # helpers.f, read by name
            if v.__name__.split(".")[0] not in _PINNED:
                values += [vars(v)[a] for a in names if a in vars(v) and callable(vars(v)[a])]
        elif hasattr(v, "py_func") or isinstance(v, FunctionType):
            found += _dispatchers(v, seen)
    return found
