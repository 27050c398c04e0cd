"""The run configuration: one frozen dataclass per TOML section, every key validated.

`load_config(path, overrides)` reads TOML, applies `--set section.key=value` overrides, and
returns a `Config`. Unknown keys, wrong types and out-of-range values raise `ConfigError` naming
the key (and the closest valid key for a misspelling). `Config.to_toml()` writes the resolved
config into the run directory; `config_from_dict` reads it back.
"""

import difflib
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (256, 128)
    activation: str | tuple[str, ...] = "relu"  # one name, or one per hidden layer
    output_activation: str = "identity"  # mse only; cross-entropy's output is linear + softmax
    init: str = "auto"  # auto | he | xavier | path to a .safetensors model
    dropout: float | tuple[float, ...] = 0.0  # per hidden layer

    def hidden_activations(self) -> list[str]:
        acts = [self.activation] * len(self.hidden) if isinstance(self.activation, str) else list(self.activation)
        if len(acts) != len(self.hidden):
            raise ConfigError(f"model.activation lists {len(acts)} activations for {len(self.hidden)} "
                              f"hidden layers (model.hidden = {list(self.hidden)})")
        return acts

    def dropout_rates(self) -> list[float]:
        rates = [self.dropout] * len(self.hidden) if isinstance(self.dropout, (int, float)) else list(self.dropout)
        if len(rates) != len(self.hidden):
            raise ConfigError(f"model.dropout lists {len(rates)} rates for {len(self.hidden)} hidden layers")
        return [float(r) for r in rates]


@dataclass(frozen=True)
class DataConfig:
    train: str = "fashion-mnist:train"
    test: str = "fashion-mnist:test"  # "" for none
    validation_fraction: float = 0.0
    scale: str = "auto"  # auto | none | unit | standardize
    label_column: str = "label"  # for .csv


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 128
    loss: str = "cross_entropy"  # or mse
    shuffle: bool = True
    shuffle_block: int = 0  # >0: shuffle blocks of this many rows, then rows within each block
    seed: int = 0
    dtype: str = "float32"
    threads: int = 0  # 0: all cores this process may use
    clip_grad_norm: float = 0.0  # 0: off


# optimizer.weight_decay when not given: a sentinel, since TOML has no null and config.toml must
# round-trip; any other negative value is an error
WEIGHT_DECAY_UNSET = -1.0


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"  # sgd | adam | adamw
    lr: float = 0.001
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = WEIGHT_DECAY_UNSET  # torch's default (0 for sgd/adam, 0.01 for adamw)
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8

    def resolved_weight_decay(self) -> float:
        if self.weight_decay >= 0:
            return self.weight_decay
        return 0.01 if self.name == "adamw" else 0.0


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "constant"  # constant | step | exponential | cosine
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (may be fractional)
    step_epochs: int = 10  # step: multiply by gamma every step_epochs
    gamma: float = 0.1  # step / exponential (per epoch) factor
    min_lr: float = 0.0  # cosine floor


@dataclass(frozen=True)
class EarlyStoppingConfig:
    patience: int = 0  # epochs without improvement before stopping; 0: off
    monitor: str = "val_loss"  # val_loss | val_accuracy | val_r2 | train_loss | train_accuracy
    min_delta: float = 0.0
    restore_best: bool = True
    # improved: the best value moves only on an improvement > min_delta (Keras);
    # running: the best is the running best, and an epoch less than min_delta better than it still
    # counts as no improvement (scikit-learn's tol / n_iter_no_change rule)
    best: str = "improved"


@dataclass(frozen=True)
class CheckpointConfig:
    every_epochs: int = 1  # 0: off
    every_steps: int = 0  # 0: off
    keep: int = 3


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        return {f.name: {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in asdict(getattr(self, f.name)).items()} for f in fields(self)}

    def to_toml(self) -> str:
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)


SECTIONS = {f.name: f.default_factory for f in fields(Config)}

CHOICES = {
    ("data", "scale"): ("auto", "none", "unit", "standardize"),
    ("training", "loss"): ("cross_entropy", "mse"),
    ("training", "dtype"): ("float32", "float64"),
    ("optimizer", "name"): ("sgd", "adam", "adamw"),
    ("schedule", "name"): ("constant", "step", "exponential", "cosine"),
    ("early_stopping", "monitor"): ("val_loss", "val_accuracy", "val_r2", "train_loss", "train_accuracy"),
    ("early_stopping", "best"): ("improved", "running"),
}
# early_stopping.monitor values that exist for one loss only
MONITOR_LOSS = {"val_accuracy": "cross_entropy", "train_accuracy": "cross_entropy", "val_r2": "mse"}
# (minimum, maximum, min inclusive, max inclusive)
RANGES = {
    ("data", "validation_fraction"): (0.0, 1.0, True, False),
    ("training", "epochs"): (1, None, True, True),
    ("training", "batch_size"): (1, None, True, True),
    ("training", "threads"): (0, None, True, True),
    ("training", "shuffle_block"): (0, None, True, True),
    ("training", "seed"): (0, 2**63 - 1, True, True),  # numpy's generators and the int64 dropout hash
    ("training", "clip_grad_norm"): (0.0, None, True, True),
    ("optimizer", "lr"): (0.0, None, False, True),
    ("optimizer", "momentum"): (0.0, None, True, True),
    ("optimizer", "dampening"): (0.0, 1.0, True, True),
    ("optimizer", "eps"): (0.0, None, False, True),
    ("schedule", "warmup_epochs"): (0.0, None, True, True),
    ("schedule", "step_epochs"): (1, None, True, True),
    ("schedule", "gamma"): (0.0, None, False, True),
    ("schedule", "min_lr"): (0.0, None, True, True),
    ("early_stopping", "patience"): (0, None, True, True),
    ("early_stopping", "min_delta"): (0.0, None, True, True),
    ("checkpoint", "every_epochs"): (0, None, True, True),
    ("checkpoint", "every_steps"): (0, None, True, True),
    ("checkpoint", "keep"): (1, None, True, True),
}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(where: str, value: Any, tp) -> Any:
    """Check `value` against the annotation `tp` (int, float, str, bool, tuples, unions)."""
    if get_origin(tp) is not None and type(None) not in get_args(tp) and get_origin(tp) is not tuple:
        errors = []
        for alt in get_args(tp):  # a union such as str | tuple[str, ...]
            try:
                return _coerce(where, value, alt)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where} must be " + " or ".join(
            _type_name(a) if get_origin(a) is None else f"a list of {_type_name(get_args(a)[0])}s"
            for a in get_args(tp)) + f", got {value!r}")
    if get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(f"{where}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value))
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
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(tp)


def _check_value(source: str, section: str, key: str, value: Any) -> None:
    where = f"{source}: {section}.{key}"
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(choices)}{_suggest(str(value), choices)}")
    bounds = RANGES.get((section, key))
    if bounds:
        lo, hi, lo_inc, hi_inc = bounds
        if (lo is not None and (value < lo or (value == lo and not lo_inc))) or \
           (hi is not None and (value > hi or (value == hi and not hi_inc))):
            lo_s = "" if lo is None else f"{'>=' if lo_inc else '>'} {lo}"
            hi_s = "" if hi is None else f"{'<=' if hi_inc else '<'} {hi}"
            raise ConfigError(f"{where} = {value!r} is out of range: must be {' and '.join(s for s in (lo_s, hi_s) if s)}")


def config_from_dict(raw: dict, source: str = "config") -> Config:
    """Validate a parsed TOML document into a Config."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a TOML table")
    sections = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]{_suggest(section, SECTIONS)}; "
                              f"valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section} must be a table ([{section}])")
        cls = SECTIONS[section]
        types = {f.name: f.type for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{source}: unknown key {section}.{key}{_suggest(key, types)}; "
                                  f"valid keys in [{section}]: {', '.join(types)}")
            kwargs[key] = _coerce(f"{source}: {section}.{key}", value, types[key])
            _check_value(source, section, key, kwargs[key])
        sections[section] = cls(**kwargs)
    config = Config(**sections)
    _check_whole(config, source)
    return config


def _check_whole(c: Config, source: str) -> None:
    for i, h in enumerate(c.model.hidden):
        if h < 1:
            raise ConfigError(f"{source}: model.hidden[{i}] = {h} must be >= 1")
    c.model.hidden_activations()
    for i, r in enumerate(c.model.dropout_rates()):
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"{source}: model.dropout[{i}] = {r} must be in [0, 1)")
    if c.optimizer.nesterov and (c.optimizer.momentum <= 0 or c.optimizer.dampening != 0):
        raise ConfigError(f"{source}: optimizer.nesterov = true needs optimizer.momentum > 0 and dampening = 0")
    if len(c.optimizer.betas) != 2 or not all(0.0 <= b < 1.0 for b in c.optimizer.betas):
        raise ConfigError(f"{source}: optimizer.betas must be two numbers in [0, 1), got {list(c.optimizer.betas)}")
    if c.training.loss == "cross_entropy" and c.model.output_activation != "identity":
        raise ConfigError(f"{source}: model.output_activation = {c.model.output_activation!r} needs "
                          "training.loss = \"mse\"; cross_entropy's output layer is linear (softmax is in the loss)")
    wd = c.optimizer.weight_decay
    if wd < 0 and wd != WEIGHT_DECAY_UNSET:
        raise ConfigError(f"{source}: optimizer.weight_decay = {wd!r} is out of range: must be >= 0.0 "
                          "(leave it out for the optimizer's default)")
    monitor, loss = c.early_stopping.monitor, c.training.loss
    if MONITOR_LOSS.get(monitor, loss) != loss:
        valid = [m for m in CHOICES[("early_stopping", "monitor")] if MONITOR_LOSS.get(m, loss) == loss]
        raise ConfigError(f"{source}: early_stopping.monitor = {monitor!r} needs training.loss = "
                          f"{MONITOR_LOSS[monitor]!r}; with {loss} use one of {', '.join(valid)}")
    if c.early_stopping.patience and c.early_stopping.monitor.startswith("val_") and c.data.validation_fraction == 0:
        raise ConfigError(f"{source}: early_stopping.monitor = {c.early_stopping.monitor!r} needs "
                          "data.validation_fraction > 0 (or monitor = \"train_loss\")")


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, value); value parsed as TOML, else a plain string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. optimizer.lr=0.01")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def merge_overrides(raw: dict, overrides) -> dict:
    merged = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items()}
    for text in overrides or ():
        section, key, value = parse_override(text)
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"--set {text!r}: {section} is not a section")
        merged[section][key] = value
    return merged


def load_config(path, overrides=()) -> Config:
    """Read, override and validate a TOML config file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return config_from_dict(merge_overrides(raw, overrides), str(path))


def read_run_config(rundir) -> Config:
    """The resolved config of a run directory (`rundir`: an io.rundir.RunDir)."""
    text = rundir.read_config_text()
    try:
        return config_from_dict(tomllib.loads(text), str(rundir.config_path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{rundir.config_path} is not valid TOML: {exc}") from None
