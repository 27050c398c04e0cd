"""The `deltaprop` command: joins the command modules. Heavy imports happen inside commands."""

from typing import Annotated

import typer

from . import evaluate, export, jobs, plugins, runs, train, tune
from .common import HELP

app = typer.Typer(help="deltaprop: fast, reproducible MLP training on CPUs.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, context_settings=HELP)


def _version(value: bool) -> None:
    if value:
        from .. import __version__
        print(f"deltaprop {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """deltaprop: fast, reproducible MLP training on CPUs."""


app.command()(train.train)
app.command()(train.resume)
app.command()(evaluate.evaluate)
app.command()(evaluate.predict)
app.command()(export.export)
app.command()(runs.summary)
app.command()(runs.runs)
app.command()(runs.plot)
app.command()(jobs.submit)
app.command()(jobs.worker)
app.command()(jobs.sweep)
app.add_typer(jobs.app, name="jobs")
app.add_typer(tune.app, name="tune")
app.add_typer(plugins.app, name="plugins")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
