"""Activation plugins: hookspec, `Activation`, the plugin manager, builtins, the derivative check,
and the kernel factory that compiles the network kernels for a set of activations."""
