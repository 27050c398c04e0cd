"""Exceptions the CLI turns into one clear paragraph and an exit code (never a traceback).

Every error a user can cause (bad config, bad data, bad checkpoint, broken plugin) is a
`DeltapropError`; its message names what is wrong and where (file, row, column, key).
"""


class DeltapropError(Exception):
    """A user-facing error: bad input or usage. Exit code 2."""

    exit_code = 2


class ConfigError(DeltapropError):
    """The TOML config or a --set override is invalid."""


class DataError(DeltapropError):
    """A dataset cannot be read or fails validation."""


class CheckpointError(DeltapropError):
    """A checkpoint or model file is missing, truncated, corrupted or hostile."""


class PluginError(DeltapropError):
    """An activation plugin is missing, broken or fails its derivative check."""


class ExportError(DeltapropError):
    """A model cannot be exported: the `onnx` package is missing, an activation has no ONNX form,
    or the opset or output asked for is not supported."""


class TrainingFailed(DeltapropError):
    """A run started but failed (divergence, crash). Exit code 1."""

    exit_code = 1


class WriteError(DeltapropError):
    """A file could not be written (full disk, read-only mount, permissions). Nothing was replaced."""
