"""The hooks a deltaprop plugin implements (entry-point group `deltaprop`)."""

import pluggy

hookspec = pluggy.HookspecMarker("deltaprop")
hookimpl = pluggy.HookimplMarker("deltaprop")


@hookspec
def register_activations(register):
    """Register activation functions: call `register(Activation(...))` once per activation."""
