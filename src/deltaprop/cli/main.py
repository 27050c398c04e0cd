"""The `deltaprop` command: joins the command modules. Heavy imports happen inside commands."""

import typer

from . import evaluate, plugins, train

app = typer.Typer(help="deltaprop: fast, reproducible MLP training on CPUs.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.command()(train.train)
app.command()(train.resume)
app.command()(evaluate.evaluate)
app.command()(evaluate.predict)
app.add_typer(plugins.app, name="plugins")


def main() -> None:
    app()
