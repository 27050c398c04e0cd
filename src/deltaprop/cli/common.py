"""What every command shares: user errors become one paragraph and an exit code."""

import functools
import sys

import typer
from rich.console import Console

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False, soft_wrap=True)


def handle_errors(fn):
    """Turn DeltapropError into `error: ...` on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import DeltapropError
        try:
            return fn(*args, **kwargs)
        except DeltapropError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True) if sys.stderr.isatty() \
                else print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper
