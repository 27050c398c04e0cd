"""The hooks a deltaprop plugin implements (entry-point group `deltaprop`)."""

import pluggy

hookspec = pluggy.HookspecMarker("deltaprop")
hookimpl = pluggy.HookimplMarker("deltaprop")


@hookspec
def register_activations(register):
    """Register activation functions: call `register(Activation(...))` once per activation."""


@hookspec
def register_loggers(register):
    """Register training loggers: call `register(name, factory)` once per logger, where
    `factory()` returns a `deltaprop.Logger` (see deltaprop/plugins/logger.py)."""
