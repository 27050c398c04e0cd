"""The benchmark's compiled peers: JAX (a jitted step, or the whole epoch in one jit) and torch.compile.

Runner factories with the same contract as those in runners.py, `(threads, dtype) -> (run, info)`
with `run(X, y, sizes, batch, epochs, clock) -> last-batch loss per epoch`, and the same job: the
init of `runners.init_layers`, the order of `runners.epoch_perm`, mean cross-entropy over the
batch, SGD lr 0.01. XLA sizes its thread pool from the cores the process may run on, so the
worker's CPU affinity (procinfo.pin_cores, set before jax is imported) is what gives it
`threads` cores; no XLA flag is set.

- `jax_step`: one `jax.jit` call per SGD step; the minibatch is gathered inside the jitted
  function from device arrays (X, y and the epoch's permutation, put on the device untimed).
- `jax_scan`: the whole epoch in one `jax.jit`: `lax.scan` over the full minibatches, gathering
  inside, plus one jitted step for the final partial batch; `block_until_ready` before the clock
  stops.
- `torch_compile`: `torch.compile` (default mode, static shapes) of the same nn.Sequential as
  the PyTorch runner, trained by the same loop; the partial last batch compiles its own graph
  once, in the warm-up epoch.

    import peers                                  # with bench/ on sys.path
    run, info = peers.RUNNERS["jax_scan"](2, "float32")
"""

from runners import epoch_perm, init_layers, torch_epochs, torch_model
from spec import LR


def _jax(dtype: str):
    import jax
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    return jax


def _jax_parts(dtype: str):
    """The jitted pieces both JAX runners use: a step on rows perm[start:start+size]."""
    jax = _jax(dtype)
    import jax.numpy as jnp
    from jax import lax

    def loss_fn(params, x, t):
        h = x
        for i, (W, b) in enumerate(params):
            h = h @ W.T + b                                   # (batch, n_out)
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, t[:, None], axis=1))

    def step(params, X, y, idx):
        # 1) gather  2) loss and gradient  3) SGD update
        x, t = X[idx], y[idx]
        loss, g = jax.value_and_grad(loss_fn)(params, x, t)
        return jax.tree_util.tree_map(lambda p, d: p - LR * d, params, g), loss

    def slice_step(params, X, y, perm, start, size):
        return step(params, X, y, lax.dynamic_slice(perm, (start,), (size,)))

    def scan_epoch(params, X, y, idx):                        # idx: (steps, batch)
        params, losses = lax.scan(lambda p, i: step(p, X, y, i), params, idx)
        return params, losses[-1]

    jit_step = jax.jit(slice_step, static_argnums=5, donate_argnums=0)
    jit_scan = jax.jit(scan_epoch, donate_argnums=0)

    def to_device(X, y, sizes):
        params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in init_layers(sizes, dtype=dtype)]
        return params, jnp.asarray(X), jnp.asarray(y.astype("int32"))

    info = {"threads": "XLA's own (its pool is sized from the affinity)", "dtype": dtype, "jax": jax.__version__,
            "device": str(jax.devices()[0]), "xla_flags": __import__("os").environ.get("XLA_FLAGS", "")}
    return jax, jnp, jit_step, jit_scan, to_device, info


def _jax_step_runner(threads: int, dtype: str):
    jax, jnp, jit_step, _, to_device, info = _jax_parts(dtype)

    def run(X, y, sizes, batch, epochs, clock):
        params, Xd, yd = to_device(X, y, sizes)
        n = len(X)
        losses = []
        for e in range(epochs):
            perm = jnp.asarray(epoch_perm(n, e).astype("int32"))
            perm.block_until_ready()
            clock.start()
            for s in range(0, n, batch):
                params, loss = jit_step(params, Xd, yd, perm, s, min(batch, n - s))
            jax.block_until_ready((params, loss))
            clock.stop()
            losses.append(float(loss))
        return losses

    return run, info


def _jax_scan_runner(threads: int, dtype: str):
    jax, jnp, jit_step, jit_scan, to_device, info = _jax_parts(dtype)

    def run(X, y, sizes, batch, epochs, clock):
        params, Xd, yd = to_device(X, y, sizes)
        n = len(X)
        full = n // batch
        losses = []
        for e in range(epochs):
            p = epoch_perm(n, e).astype("int32")
            perm = jnp.asarray(p)
            idx = jnp.asarray(p[:full * batch].reshape(full, batch))
            jax.block_until_ready((perm, idx))
            clock.start()
            loss = None
            if full:
                params, loss = jit_scan(params, Xd, yd, idx)
            if n > full * batch:
                params, loss = jit_step(params, Xd, yd, perm, full * batch, n - full * batch)
            jax.block_until_ready((params, loss))
            clock.stop()
            losses.append(float(loss))
        return losses

    return run, info


def _torch_compile_runner(threads: int, dtype: str):
    import torch
    import torch._dynamo

    torch.set_num_threads(threads)
    for knob in ("cache_size_limit", "recompile_limit"):  # one entry per batch shape and net
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    info = {"threads": torch.get_num_threads(), "dtype": dtype, "torch": torch.__version__,
            "mode": "default, dynamic=False"}

    def run(X, y, sizes, batch, epochs, clock):
        # dynamic=False: every batch shape gets its own static graph (the full batches never run
        # the dynamic-shape graph that automatic-dynamic would build after the partial batch)
        model = torch.compile(torch_model(sizes, dtype), dynamic=False)
        return torch_epochs(model, X, y, batch, epochs, clock)

    return run, info


RUNNERS = {"jax_step": _jax_step_runner, "jax_scan": _jax_scan_runner, "torch_compile": _torch_compile_runner}
