"""A tune search space: a TOML file with one table per config key (quoted, dotted).

    ["optimizer.lr"]            a range: low, high, optional log = true or step
    low = 1e-4
    high = 0.1
    log = true
    ["model.hidden"]            a choice: any TOML values, lists too
    choices = [[128], [256, 128]]

    params = read_space(path, check=validator)    # [Param], every value checked as a --set override

Ranges whose low, high (and step) are integers are integer ranges. Each trial's values become
`--set key=value` overrides of the base config; list choices are kept in Optuna as their TOML text
(Optuna stores only scalars) and turned back here. The keys and values are validated by `check`,
a function from `--set` overrides to a config (the CLI passes deltaprop's config reader, so this
module never imports the trainer).
"""

import difflib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .._values import is_int, is_number
from ..errors import ConfigError

FIELDS = ("low", "high", "log", "step", "choices")
GRID_MAX = 100_000


class SpaceError(ConfigError):
    """The search-space file is missing, not TOML, or a range or choice in it is invalid."""


def toml_value(v) -> str:
    """One value as TOML text on one line, as `--set key=...` takes it: [256, 128], "relu", 0.01."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


@dataclass(frozen=True)
class Param:
    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    @property
    def is_int(self) -> bool:
        return not self.choices and all(is_int(v) for v in (self.low, self.high) + ((self.step,) if self.step else ()))

    def stored(self, value):
        """What Optuna keeps for one choice: scalars as they are, lists and tables as TOML text."""
        return value if isinstance(value, (bool, int, float, str)) else toml_value(value)

    def value(self, stored):
        """The config value of what Optuna keeps."""
        for c in self.choices:
            if self.stored(c) == stored:
                return c
        return stored

    def override(self, stored) -> str:
        return f"{self.key}={toml_value(self.value(stored))}"

    def grid(self) -> list | None:
        """Every value a grid takes (choices, or a range with a step), else None."""
        if self.choices:
            return [self.stored(c) for c in self.choices]
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        if n > GRID_MAX:
            return None
        if self.is_int:
            return [int(self.low + i * self.step) for i in range(n)]
        return [float(round(self.low + i * self.step, 12)) for i in range(n)]

    def describe(self) -> str:
        if self.choices:
            return "choices " + ", ".join(toml_value(c) for c in self.choices)
        return f"{self.low}..{self.high}" + (" log" if self.log else "") + (f" step {self.step}" if self.step else "")


def _plain(v) -> bool:
    """A value a config key can take and study.json can hold (no dates, no tables)."""
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    return isinstance(v, (bool, int, float, str)) and not (isinstance(v, float) and not math.isfinite(v))


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_space(raw: dict, source: str) -> list[Param]:
    """The Params of a parsed space file; SpaceError naming the key and field on any mistake."""
    if not raw:
        raise SpaceError(f"{source}: the search space is empty; add a table per config key, e.g. "
                         '["optimizer.lr"] with low = 1e-4, high = 0.1, log = true')
    params = []
    for key, table in raw.items():
        where = f'{source}: ["{key}"]'
        if not isinstance(table, dict):
            raise SpaceError(f"{where} must be a table with low/high or choices, got {toml_value(table)}")
        if key.count(".") != 1 or not all(key.split(".")):
            inner = next(iter(table), "KEY")
            raise SpaceError(f'{where}: expected a config key "section.key": name each table by its quoted, '
                             f'dotted key, e.g. ["{key}.{inner}"] (without quotes TOML reads [{key}.{inner}] '
                             "as nested tables)" if "." not in key else
                             f'{where}: expected a config key "section.key", e.g. "optimizer.lr"')
        unknown = [f for f in table if f not in FIELDS]
        if unknown:
            raise SpaceError(f"{where}: unknown field {unknown[0]!r}{_suggest(unknown[0], FIELDS)}; a range has "
                             "low, high and optionally log or step; a choice has choices")
        if "choices" in table:
            extra = [f for f in table if f != "choices"]
            if extra:
                raise SpaceError(f"{where}: choices cannot be combined with {', '.join(extra)}")
            choices = table["choices"]
            if not isinstance(choices, list):
                raise SpaceError(f"{where}: choices must be a list, got {toml_value(choices)}")
            if not choices:
                raise SpaceError(f"{where}: choices is empty; give at least one value")
            bad = [c for c in choices if not _plain(c)]
            if bad:
                raise SpaceError(f"{where}: choice {toml_value(bad[0])} is not a number, string, boolean or a "
                                 "list of them")
            stored = [Param(key).stored(c) for c in choices]
            if len(set(map(repr, stored))) != len(stored):
                raise SpaceError(f"{where}: choices has a value twice")
            params.append(Param(key, choices=tuple(choices)))
            continue
        missing = [f for f in ("low", "high") if f not in table]
        if missing:
            raise SpaceError(f"{where}: missing {' and '.join(missing)} (a range needs low and high; "
                             "or give choices = [...])")
        for f in ("low", "high", "step"):
            if f in table and not is_number(table[f]):
                raise SpaceError(f"{where}: {f} must be a number, got {toml_value(table[f])}")
        low, high, step, log = table["low"], table["high"], table.get("step"), table.get("log", False)
        if not isinstance(log, bool):
            raise SpaceError(f"{where}: log must be true or false, got {toml_value(log)}")
        if not all(math.isfinite(v) for v in (low, high) + ((step,) if step is not None else ())):
            raise SpaceError(f"{where}: low, high and step must be finite numbers")
        if low > high:
            raise SpaceError(f"{where}: low = {low} is greater than high = {high}")
        if log and low <= 0:
            raise SpaceError(f"{where}: log = true needs low > 0, got low = {low}")
        if step is not None:
            if step <= 0:
                raise SpaceError(f"{where}: step must be > 0, got {step}")
            if log:
                raise SpaceError(f"{where}: log and step cannot be combined (Optuna samples a log range "
                                 "continuously); drop one")
        params.append(Param(key, low, high, log, step))
    return params


def read_space(path, check=None) -> list[Param]:
    """Read and validate a space file; `check(overrides)` validates values against the config
    (its ConfigError is reported with the space file and key)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"search space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"cannot read search space file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{path} is not valid TOML: {exc}") from None
    params = parse_space(raw, str(path))
    if check is not None:
        check_values(params, check, str(path))
    return params


def check_values(params: list[Param], check, source: str) -> None:
    """Each key, with each end of its range and each choice, through the config's validation."""
    for p in params:
        samples = list(p.choices) if p.choices else [p.low, p.high]
        for v in samples:
            try:
                check([f"{p.key}={toml_value(v)}"])
            except ConfigError as exc:
                text = re.sub(r"^--set '[^']*': ", "", str(exc))
                text = re.sub(r"^config: ", "", text)
                raise SpaceError(f'{source}: ["{p.key}"] = {toml_value(v)}: {text}') from None
