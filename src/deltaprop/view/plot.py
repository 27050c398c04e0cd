"""Training curves as a PNG, with matplotlib (`pip install 'deltaprop[plot]'`, the Agg backend).

    series = plot_curves(records, ["loss", "val_accuracy"], Path("curves.png"))

One panel per metric, one line per run, labelled by its name and the config keys that differ
between the runs. Per epoch (metrics.jsonl) by default; `steps=True` plots the step scalars
(steps.jsonl) against the global step. Returns the plotted series, {metric: {label: (x, y)}}.
"""

from pathlib import Path

from .._system import atomic_write
from ..errors import DeltapropError
from .runlist import RunRecord, differing

PANEL_INCHES, DPI = (4.8, 3.6), 100  # each panel 480 x 360 pixels
DEFAULT_SECOND = ("val_accuracy", "test_accuracy", "val_r2", "val_loss", "test_loss")


class PlotError(DeltapropError):
    """Nothing to plot, an unknown metric, or matplotlib missing."""


def labels(records: list[RunRecord]) -> list[str]:
    keys = [k for k in differing(records) if not k.startswith(("data.", "logging."))] or differing(records)
    out = []
    for r in records:
        parts = [f"{k.split('.', 1)[1]}={r.config.get(k)}" for k in keys[:3]]
        out.append(r.name + (f" ({', '.join(parts)})" if parts else ""))
    return out


def points(record: RunRecord, metric: str, steps: bool):
    rows = record.steps if steps else record.history
    x = "step" if steps else "epoch"
    return [(m[x], m[metric]) for i, m in enumerate(rows) if metric in m and x in m]


def default_metrics(records: list[RunRecord], steps: bool) -> list[str]:
    if steps:
        return ["loss"]
    have = {k for r in records for m in r.history for k in m}
    second = [m for m in DEFAULT_SECOND if m in have][:1]
    return ["loss", *second]


def plot_curves(records: list[RunRecord], metrics: list[str] | None, out: Path, steps: bool = False) -> dict:
    if not records:
        raise PlotError("no runs to plot")
    if steps:
        for r in records:
            r.load_steps()
    metrics = metrics or default_metrics(records, steps)
    have = sorted({k for r in records for m in (r.steps if steps else r.history) for k in m} - {"epoch", "step"})
    for metric in metrics:
        if not any(points(r, metric, steps) for r in records):
            where = "the step records" if steps else "the epoch metrics"
            raise PlotError(f"--metric {metric}: no run has it in {where}; they have: {', '.join(have) or 'nothing yet'}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PlotError("deltaprop plot needs matplotlib: pip install 'deltaprop[plot]'") from None
    names = labels(records)
    fig, axes = plt.subplots(1, len(metrics), figsize=(PANEL_INCHES[0] * len(metrics), PANEL_INCHES[1]),
                             dpi=DPI, squeeze=False)
    series: dict = {}
    for ax, metric in zip(axes[0], metrics):
        series[metric] = {}
        for r, name in zip(records, names):
            pts = points(r, metric, steps)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="" if steps else "o", markersize=3, linewidth=1.5, label=name)
                series[metric][name] = (list(xs), list(ys))
        ax.set_title(metric)
        ax.set_xlabel("step" if steps else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return series
