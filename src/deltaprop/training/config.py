"""The run configuration: one frozen dataclass per TOML section, every key validated.

Each field carries its own type (the annotation) and its range or choices (`option`, see
training/options.py), so what a key accepts is written once, next to the key. `load_config(path,
overrides)` reads TOML, applies `--set section.key=value` overrides, and returns a `Config`.
Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the key (and the
closest valid key for a misspelling). `Config.to_toml()` writes the resolved config into the run
directory; `config_from_dict` reads it back.
"""

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import ConfigError
from .options import build_section, option, rule_of, suggest

# early_stopping.monitor values that exist for one loss only
MONITOR_LOSS = {"val_accuracy": "cross_entropy", "train_accuracy": "cross_entropy", "val_r2": "mse"}
# optimizer.weight_decay when not given: a sentinel, since TOML has no null and config.toml must
# round-trip; any other negative value is an error
WEIGHT_DECAY_UNSET = -1.0
# model.init values that name a rule (anything else is a path to a .safetensors file)
INIT_RULES = ("auto", "he", "xavier", "glorot_sklearn")


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (256, 128)
    activation: str | tuple[str, ...] = "relu"  # one name, or one per hidden layer
    output_activation: str = "identity"  # mse only; cross-entropy's output is linear + softmax
    init: str = "auto"  # auto | he | xavier | glorot_sklearn | path to a .safetensors model
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
    test: str = "fashion-mnist:test"  # "" for none; left out: the named dataset's test split, else none
    validation_fraction: float = option(0.0, ge=0.0, lt=1.0)
    scale: str = option("auto", choices=("auto", "none", "unit", "standardize"))
    label_column: str = "label"  # for .csv
    # sample weights: a .csv column (name or 0-based index) or .npz array; "": a .npz's array w if any
    weight_column: str | int = ""


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = option(10, ge=1)
    batch_size: int = option(128, ge=1)
    loss: str = option("cross_entropy", choices=("cross_entropy", "mse"))
    shuffle: bool = True
    shuffle_block: int = option(0, ge=0)  # >0: shuffle blocks of this many rows, then rows within each block
    seed: int = option(0, ge=0, le=2**63 - 1)  # numpy's generators and the int64 dropout hash
    dtype: str = option("float32", choices=("float32", "float64"))
    threads: int = option(0, ge=0)  # 0: all cores this process may use
    clip_grad_norm: float = option(0.0, ge=0.0)  # 0: off


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = option("adam", choices=("sgd", "adam", "adamw"))
    lr: float = option(0.001, gt=0.0)
    momentum: float = option(0.0, ge=0.0)
    dampening: float = option(0.0, ge=0.0, le=1.0)
    nesterov: bool = False
    weight_decay: float = WEIGHT_DECAY_UNSET  # torch's default (0 for sgd/adam, 0.01 for adamw)
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = option(1e-8, gt=0.0)

    def resolved_weight_decay(self) -> float:
        if self.weight_decay >= 0:
            return self.weight_decay
        return 0.01 if self.name == "adamw" else 0.0


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = option("constant", choices=("constant", "step", "exponential", "cosine"))
    warmup_epochs: float = option(0.0, ge=0.0)  # linear warm-up from 0 over this many epochs (may be fractional)
    step_epochs: int = option(10, ge=1)  # step: multiply by gamma every step_epochs
    gamma: float = option(0.1, gt=0.0)  # step / exponential (per epoch) factor
    min_lr: float = option(0.0, ge=0.0)  # cosine floor


@dataclass(frozen=True)
class EarlyStoppingConfig:
    patience: int = option(0, ge=0)  # epochs without improvement before stopping; 0: off
    monitor: str = option("val_loss", choices=("val_loss", "val_accuracy", "val_r2", "train_loss", "train_accuracy"))
    min_delta: float = option(0.0, ge=0.0)
    restore_best: bool = True
    # improved: the best value moves only on an improvement > min_delta (Keras);
    # running: the best is the running best, and an epoch less than min_delta better than it still
    # counts as no improvement (scikit-learn's tol / n_iter_no_change rule)
    best: str = option("improved", choices=("improved", "running"))


@dataclass(frozen=True)
class CheckpointConfig:
    every_epochs: int = option(1, ge=0)  # 0: off
    every_steps: int = option(0, ge=0)  # 0: off
    keep: int = option(3, ge=1)


@dataclass(frozen=True)
class LoggingConfig:
    # jsonl (metrics.jsonl, steps.jsonl) is always on; others: tensorboard, mlflow, or a plugin's
    loggers: tuple[str, ...] = ("jsonl",)
    every_steps: int = option(50, ge=1)  # step scalars at every multiple of this global step
    mlflow_tracking_uri: str = ""  # "": $MLFLOW_TRACKING_URI, else sqlite:///$DELTAPROP_HOME/mlflow.db
    mlflow_experiment: str = "deltaprop"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        """Every key's value; optimizer.weight_decay resolved (torch's default for the optimizer)."""
        d = {f.name: {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in asdict(getattr(self, f.name)).items()} for f in fields(self)}
        d["optimizer"]["weight_decay"] = self.optimizer.resolved_weight_decay()
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = {f.name: f.default_factory for f in fields(Config)}


def toml_value(v) -> str:
    """One value as TOML (for --set style overrides)."""
    return tomli_w.dumps({"v": list(v) if isinstance(v, tuple) else v}).split("=", 1)[1].strip()


def config_from_dict(raw: dict, source: str = "config") -> Config:
    """Validate a parsed TOML document into a Config."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a TOML table")
    sections = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]{suggest(section, SECTIONS)}; "
                              f"valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section} must be a table ([{section}])")
        sections[section] = build_section(SECTIONS[section], values, source, section)
    data = sections.get("data")
    if data is not None and "test" not in raw["data"] and not data.train.startswith("fashion-mnist:"):
        sections["data"] = replace(data, test="")  # the user's own file: no test set unless named
    config = Config(**sections)
    _check_whole(config, source)
    return config


def _check_whole(c: Config, source: str) -> None:
    """Rules about list items and about several keys together."""
    for i, h in enumerate(c.model.hidden):
        if h < 1:
            raise ConfigError(f"{source}: model.hidden[{i}] = {h} must be >= 1")
    c.model.hidden_activations()
    if isinstance(c.data.weight_column, int) and c.data.weight_column < 0:
        raise ConfigError(f"{source}: data.weight_column = {c.data.weight_column} is out of range: a column "
                          "index must be >= 0 (or name the column)")
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
        valid = [m for m in rule_of(EarlyStoppingConfig, "monitor").choices if MONITOR_LOSS.get(m, loss) == loss]
        raise ConfigError(f"{source}: early_stopping.monitor = {monitor!r} needs training.loss = "
                          f"{MONITOR_LOSS[monitor]!r}; with {loss} use one of {', '.join(valid)}")
    seen = set()
    for i, name in enumerate(c.logging.loggers):
        if name in seen:
            raise ConfigError(f"{source}: logging.loggers[{i}] = {name!r} is listed twice")
        seen.add(name)
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
    except RecursionError:
        raise ConfigError(f"--set {dotted.strip()}=...: the value nests too deeply") from None
    return section, key, value


def merge_overrides(raw: dict, overrides) -> dict:
    merged = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items()}
    for text in overrides or ():
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"--set {text!r}: unknown section [{section}]{suggest(section, SECTIONS)}; "
                              f"valid sections: {', '.join(SECTIONS)}")
        keys = [f.name for f in fields(SECTIONS[section])]
        if key not in keys:
            raise ConfigError(f"--set {text!r}: unknown key {section}.{key}{suggest(key, keys)}; "
                              f"valid keys in [{section}]: {', '.join(keys)}")
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
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nest too deeply to be a config") from None
    return config_from_dict(merge_overrides(raw, overrides), str(path))


def read_run_config(rundir) -> Config:
    """The resolved config of a run directory (`rundir`: an io.rundir.RunDir)."""
    text = rundir.read_config_text()
    try:
        return config_from_dict(tomllib.loads(text), str(rundir.config_path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{rundir.config_path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{rundir.config_path}: arrays or tables nest too deeply to be a config") from None
