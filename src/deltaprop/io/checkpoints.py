"""A directory of step-numbered checkpoints: names, listing, pruning, the newest valid one.

    path = save_checkpoint(run_dir / "checkpoints", step, tensors, metadata, keep=3)
    path, tensors, metadata, skipped = latest_valid(run_dir / "checkpoints")
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .._system import describe
from .._values import is_int
from ..errors import CheckpointError, WriteError
from .safetensors import read_safetensors, write_safetensors

_NAME_RE = re.compile(r"^step-(\d+)\.safetensors$")


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint for `step`: `step-0000000042.safetensors`."""
    if not is_int(step) or step < 0:
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
    if not is_int(keep) or keep < 1:
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
        raise WriteError(f"cannot create checkpoint directory {directory}: {describe(e)}") from None
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
