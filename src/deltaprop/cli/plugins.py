"""`deltaprop plugins list|check`."""

import json
from typing import Annotated

import typer

from .common import HELP, console, handle_errors

app = typer.Typer(help="Plugins (activations and loggers): list them, check activation derivatives.", no_args_is_help=True,
                  context_settings=HELP)


@app.command("list")
@handle_errors
def list_(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """Every plugin with its source package, version, status, activations (with their derivative
    checks) and loggers."""
    from ..errors import PluginError
    from ..plugins.manager import get_registry
    reg = get_registry()

    def checked(name):  # the derivative check, as training runs it
        try:
            r = reg.check(name)
            return {"ok": r.ok, "worst_error": r.worst_error, "at": r.worst_at}
        except PluginError as exc:
            return {"ok": False, "error": str(exc)}

    rows = [{"name": p.name, "source": p.source, "version": p.version, "status": p.status,
             "reason": p.reason, "activations": p.activations, "loggers": p.loggers,
             "checks": {a: checked(a) for a in p.activations} if p.status == "ok" else {}} for p in reg.plugins]
    if json_:
        print(json.dumps(rows))
        return
    from rich.table import Table
    from rich.text import Text
    table = Table("plugin", "package", "version", "status", "activations, loggers / reason")
    for r in rows:
        failing = [a for a, c in r["checks"].items() if not c["ok"]]
        if r["status"] != "ok":
            status, text = Text("broken", style="red"), r["reason"]
        elif failing:
            status = Text("derivative wrong", style="red")
            text = ", ".join(r["activations"]) + " (" + "; ".join(
                f"{a}: off by {c['worst_error']:.3g} at x = {c['at']:.4g}" if "worst_error" in c else f"{a}: {c['error']}"
                for a in failing for c in [r["checks"][a]]) + "; training refuses it, predict works)"
        else:
            status, text = Text("ok", style="green"), ", ".join(r["activations"])
        if r["status"] == "ok" and r["loggers"]:
            text += ("; " if r["activations"] else "") + "loggers: " + ", ".join(r["loggers"])
        table.add_row(r["name"], r["source"], r["version"], status, text)
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
