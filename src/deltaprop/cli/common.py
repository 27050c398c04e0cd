"""What every command shares: user errors become one paragraph and an exit code."""

import functools
import sys

import typer
from rich.console import Console

# markup off: what is printed holds paths, job names and [section] names that are not markup
# (`--run-dir 'a[/]b'` once raised MarkupError after the work was done); styles go in Text objects
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
console = Console(highlight=False, soft_wrap=True, markup=False)


def print_table(columns, rows, styles: dict | None = None) -> None:
    """Rows of strings under `columns`: a rich table on a terminal (`styles`: column index ->
    {value: style}), whole tab-separated lines when piped (nothing cut to fit a width)."""
    if not console.is_terminal:
        for row in [columns, *rows]:
            print("\t".join(row))
        return
    from rich.table import Table
    from rich.text import Text
    table = Table(*columns)
    for row in rows:
        table.add_row(*[Text(v, style=styles[i].get(v, "")) if styles and i in styles else v
                        for i, v in enumerate(row)])
    console.print(table)


HELP = {"help_option_names": ["-h", "--help"]}  # every command takes -h too
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended


def _error(text: str) -> None:
    from rich.markup import (
        escape,  # messages hold [section] names and lists: not markup
    )
    err_console.print(f"[bold red]error:[/] {escape(text)}", markup=True) if sys.stderr.isatty() \
        else print(f"error: {text}", file=sys.stderr)


def handle_errors(fn):
    """Turn DeltapropError into `error: ...` on stderr and its exit code, and Ctrl-C outside the
    training loop (loading data, compiling kernels) into one line and exit 130; never a traceback.
    (Inside the loop the trainer catches SIGINT itself and checkpoints.)"""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import DeltapropError
        try:
            return fn(*args, **kwargs)
        except DeltapropError as exc:
            _error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error("interrupted (Ctrl-C)")
            raise typer.Exit(INTERRUPTED) from None

    return wrapper
