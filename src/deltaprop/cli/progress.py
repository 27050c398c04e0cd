"""Reporters: a rich progress bar on a terminal, plain lines otherwise."""

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from ..training.run import LineReporter
from .common import console

PlainReporter = LineReporter  # plain lines when not on a terminal


class RichReporter(PlainReporter):
    """A bar per epoch (steps, loss, accuracy, samples/s, ETA) on `out` (the CLI's console)."""

    def __init__(self, out=None):
        super().__init__()
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                                 console=out or console, transient=True)

    def _print(self, text):
        self.progress.console.print(text)

    def start(self, *args):
        self.progress.start()
        super().start(*args)

    # Redrawn on every change (chunks are ~0.25 s apart), not only by the 10 Hz refresh thread: a
    # fast epoch would otherwise never show its stats, and printing re-emits the last drawing.
    def epoch_start(self, epoch, steps, done):
        self.task = self.progress.add_task("", total=steps, completed=done,
                                           epoch=f"{epoch + 1}/{self.epochs}", stats="")
        self.progress.refresh()

    def advance(self, steps, loss, accuracy, samples_per_s):
        stats = f"loss {loss:.4f}" + (f" acc {accuracy:.4f}" if accuracy is not None else "") + \
                f" {samples_per_s:,.0f} samples/s"
        self.progress.update(self.task, advance=steps, stats=stats, refresh=True)

    def epoch_end(self, metrics):
        self.progress.remove_task(self.task)
        self.progress.refresh()
        super().epoch_end(metrics)

    def stop(self):
        self.progress.stop()


def make_reporter():
    return RichReporter() if console.is_terminal else PlainReporter()
