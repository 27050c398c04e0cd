"""A model's summary, after Keras' `model.summary()`: layers, parameters, FLOPs and memory.

    print(summary_text(model_summary(model, optimizer="adam")))

    layer  weight (out x in)  activation                 parameters
    1      256 x 784          relu                          200,960
    2      128 x 256          relu                           32,896
    3      10 x 128           softmax (cross-entropy)         1,290
    input: 784 features (scale: unit); float32
    parameters: 235,146 (918.5 KiB); 470,016 FLOPs per sample forward, about 3x that to train
    training memory: weights 918.5 KiB + gradient 918.5 KiB + optimizer state (adam) 1.8 MiB

FLOPs count the matrix products (a multiply and an add per weight); the activations and the
bias add are a few per unit, left out (under 1 % for these nets). Training is forward plus a
backward pass of two products per layer, the usual 3x.
"""

OPTIMIZER_SLOTS = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}  # state vectors per parameter
ITEMSIZE = {"float32": 4, "float64": 8}


def model_summary(model, optimizer: str | None = None, momentum: float = 0.0) -> dict:
    """The summary of `model` (a training.model.Model) as plain data; with `optimizer`, the
    optimizer state's memory too."""
    sizes, acts = model.sizes, model.activations
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        act = acts[i]
        if i == len(sizes) - 2 and model.loss == "cross_entropy":
            act = "softmax (cross-entropy)"
        layers.append({"layer": i + 1, "in": n_in, "out": n_out, "activation": act,
                       "parameters": n_in * n_out + n_out})
    params = sum(layer["parameters"] for layer in layers)
    item = ITEMSIZE[model.dtype]
    out = {"layers": layers, "inputs": sizes[0], "outputs": sizes[-1], "scale": model.scale,
           "dtype": model.dtype, "loss": model.loss, "parameters": params,
           "flops_per_sample": sum(2 * layer["in"] * layer["out"] for layer in layers),
           "weights_bytes": params * item}
    if optimizer is not None:
        slots = OPTIMIZER_SLOTS["sgd_momentum" if optimizer == "sgd" and momentum else optimizer]
        out |= {"optimizer": optimizer, "gradient_bytes": params * item, "optimizer_bytes": slots * params * item}
    if model.classes is not None:
        out["classes"] = list(model.classes)
    return out


def size(n: float) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def summary_text(s: dict) -> str:
    rows = [("layer", "weight (out x in)", "activation", "parameters")]
    rows += [(str(la["layer"]), f"{la['out']} x {la['in']}", la["activation"], f"{la['parameters']:,}")
             for la in s["layers"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) if i < 3 else r[i].rjust(widths[i]) for i in range(4)).rstrip()
             for r in rows]
    lines.append(f"input: {s['inputs']} features (scale: {s['scale']}); {s['dtype']}")
    lines.append(f"parameters: {s['parameters']:,} ({size(s['weights_bytes'])}); "
                 f"{s['flops_per_sample']:,} FLOPs per sample forward, about 3x that to train")
    if "optimizer" in s:
        lines.append(f"training memory: weights {size(s['weights_bytes'])} + gradient "
                     f"{size(s['gradient_bytes'])} + optimizer state ({s['optimizer']}) {size(s['optimizer_bytes'])}")
    return "\n".join(lines)
