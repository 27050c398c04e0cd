"""Activation plugins: the hookspecs, `Activation`, the plugin manager, the builtins and the
numerical derivative check."""
