"""The root command: every command group registered on one Typer app, and ``main(argv) -> int``."""

from __future__ import annotations

import click
import typer

try:  # typer 0.29 and later carry their own copy of click, with its own usage-error classes
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # older typer raises click's own
    _TyperClickException = click.ClickException

from rlhf_loop.cli import adapters, admin, demo, maintenance, model, serving, training

app = typer.Typer(
    help="rlhf-loop: serve a LoRA-adapted LM, turn thumbs-up/down into preference pairs, retrain, gate, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(demo.demo)
app.command()(training.train)
app.command()(training.worker)
app.command("runs")(training.runs_show)
app.command()(serving.serve)
app.command()(serving.aggregate)
app.command()(serving.broker)
app.command()(maintenance.migrate)
app.command("export-schemas")(maintenance.export_schemas)
app.command()(maintenance.config)
app.add_typer(adapters.app, name="adapters")
app.add_typer(admin.users_app, name="users")
app.add_typer(admin.keys_app, name="keys")
app.add_typer(model.app, name="model")
app.add_typer(maintenance.spool_app, name="spool")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        result = app(args=argv, standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as e:
        return e.exit_code
    except (click.ClickException, _TyperClickException) as e:
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, typer.Abort):
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # `python -m rlhf_loop.cli.main ...` as well as `python -m rlhf_loop ...`
    import sys

    sys.exit(main())
