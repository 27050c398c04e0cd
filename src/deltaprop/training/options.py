"""How a config field declares its range and choices, and how a TOML value is checked against
the field (its annotation and its `option`). Messages name the key and say what is allowed:

    lr: float = option(0.001, gt=0.0)                      # "... optimizer.lr = -1.0 is out of range: must be > 0.0"
    loss: str = option("cross_entropy", choices=("cross_entropy", "mse"))
"""

import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_origin

from ..errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What a field's value must be, beyond its type."""

    choices: tuple = ()
    lo: float | None = None
    lo_inclusive: bool = True
    hi: float | None = None
    hi_inclusive: bool = True

    def check(self, where: str, value: Any) -> None:
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where} = {value!r} is not one of {', '.join(self.choices)}"
                              f"{suggest(str(value), self.choices)}")
        lo, hi = self.lo, self.hi
        if (lo is not None and (value < lo or (value == lo and not self.lo_inclusive))) or \
           (hi is not None and (value > hi or (value == hi and not self.hi_inclusive))):
            lo_s = "" if lo is None else f"{'>=' if self.lo_inclusive else '>'} {lo}"
            hi_s = "" if hi is None else f"{'<=' if self.hi_inclusive else '<'} {hi}"
            raise ConfigError(f"{where} = {value!r} is out of range: must be "
                              f"{' and '.join(s for s in (lo_s, hi_s) if s)}")


def option(default, *, choices=(), ge=None, gt=None, le=None, lt=None):
    """A dataclass field with its default and its rule (at most one lower and one upper bound)."""
    rule = Rule(tuple(choices), ge if ge is not None else gt, gt is None, le if le is not None else lt, lt is None)
    return field(default=default, metadata={"rule": rule})


def rule_of(cls, name: str) -> Rule:
    return next(f.metadata.get("rule", Rule()) for f in fields(cls) if f.name == name)


def suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(where: str, value: Any, tp) -> Any:
    """Check `value` against the annotation `tp` (int, float, str, bool, tuples, unions)."""
    if get_origin(tp) is not None and type(None) not in get_args(tp) and get_origin(tp) is not tuple:
        for alt in get_args(tp):  # a union such as str | tuple[str, ...]
            try:
                return coerce(where, value, alt)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be " + " or ".join(
            _type_name(a) if get_origin(a) is None else f"a list of {_type_name(get_args(a)[0])}s"
            for a in get_args(tp)) + f", got {value!r}")
    if get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(coerce(f"{where}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value) or abs(value) > 1.7e308:
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(tp)


def _fits_64_bits(where: str, value) -> None:
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _fits_64_bits(f"{where}[{i}]", v)
    elif isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise ConfigError(f"{where} = {value} does not fit in 64 bits")


def build_section(cls, values: dict, source: str, section: str):
    """A section dataclass from its TOML table, every key checked (unknown keys named)."""
    types = {f.name: f.type for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"{source}: unknown key {section}.{key}{suggest(key, types)}; "
                              f"valid keys in [{section}]: {', '.join(types)}")
        where = f"{source}: {section}.{key}"
        kwargs[key] = coerce(where, value, types[key])
        rule_of(cls, key).check(where, kwargs[key])
        _fits_64_bits(where, kwargs[key])
    return cls(**kwargs)
