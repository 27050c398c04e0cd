"""`deltaprop plugins list|check`."""

import json
from typing import Annotated

import typer

from .common import HELP, console, handle_errors

app = typer.Typer(help="Activation plugins: list them, check their derivatives.", no_args_is_help=True,
                  context_settings=HELP)


@app.command("list")
@handle_errors
def list_(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """Every plugin with its source package, version, status and activations."""
    from ..plugins.manager import get_registry
    reg = get_registry()
    rows = [{"name": p.name, "source": p.source, "version": p.version, "status": p.status,
             "reason": p.reason, "activations": p.activations} for p in reg.plugins]
    if json_:
        print(json.dumps(rows))
        return
    from rich.table import Table
    from rich.text import Text
    table = Table("plugin", "package", "version", "status", "activations / reason")
    for r in rows:
        status = Text("ok", style="green") if r["status"] == "ok" else Text("broken", style="red")
        table.add_row(r["name"], r["source"], r["version"], status,
                      ", ".join(r["activations"]) if r["status"] == "ok" else r["reason"])
    console.print(table)


@app.command()
@handle_errors
def check(name: Annotated[str, typer.Argument(help="Activation name.")]):
    """Check NAME's derivative against central differences; exit 1 on a mismatch."""
    from ..plugins.gradcheck import TOLERANCE
    from ..plugins.manager import get_registry
    reg = get_registry()
    act = reg.get(name)
    result = reg.check(name)
    verdict = "ok" if result.ok else "MISMATCH"
    console.print(f"{name} ({act.source} {act.version}): worst error {result.worst_error:.3g} at "
                  f"x = {result.worst_at:.4g} over {result.points} points (tolerance {TOLERANCE:g}): {verdict}")
    if not result.ok:
        raise typer.Exit(1)
