"""The `deltaprop` command: joins the command modules. Heavy imports happen inside commands."""

import typer

from . import evaluate, jobs, plugins, train

app = typer.Typer(help="deltaprop: fast, reproducible MLP training on CPUs.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.command()(train.train)
app.command()(train.resume)
app.command()(evaluate.evaluate)
app.command()(evaluate.predict)
app.command()(jobs.submit)
app.command()(jobs.worker)
app.command()(jobs.sweep)
app.add_typer(jobs.app, name="jobs")
app.add_typer(plugins.app, name="plugins")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
