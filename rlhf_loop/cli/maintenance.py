"""Housekeeping commands: ``migrate``, ``export-schemas``, ``spool status|drain``, ``config``."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from rlhf_loop.cli.options import load_settings

spool_app = typer.Typer(help="The durable event spool: inspect it, drain it to the broker.", no_args_is_help=True)


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision; 'head' for the newest.")] = "head",
    down: Annotated[bool, typer.Option(help="Downgrade to REVISION instead ('base' drops everything).")] = False,
    wait_s: Annotated[
        float, typer.Option(help="Migrate nothing: wait up to this many seconds for the database to be at head.")
    ] = 0.0,
) -> None:
    """Apply the Alembic migrations to the configured database (or, with --wait-s, wait for them: the
    deployments' init containers wait so on the migration Job)."""
    from rlhf_loop.db import downgrade, upgrade, wait_for_head

    url = load_settings().database.url
    if wait_s > 0:
        if not wait_for_head(url, wait_s):
            typer.echo(f"the database is not at head after {wait_s:.0f} s", err=True)
            raise typer.Exit(1)
        typer.echo("the database is at head")
        return
    (downgrade if down else upgrade)(url, revision)
    typer.echo(f"database {'downgraded' if down else 'upgraded'} to {revision}")


def export_schemas(
    check: Annotated[bool, typer.Option(help="Only check that the checked-in files are current.")] = False,
) -> None:
    """Write the JSON Schema files of the event models to schemas/jsonschema/."""
    from rlhf_loop.schema_export import stale_files, write_all

    if check:
        stale = stale_files()
        if stale:
            raise click.ClickException(f"stale JSON Schema files: {', '.join(stale)}; run rlhf-loop export-schemas")
        typer.echo("JSON Schema files are current")
        return
    for path in write_all():
        typer.echo(f"wrote {path}")


@spool_app.command("status")
def spool_status() -> None:
    """Print how many events wait in the spool, per topic."""
    from rlhf_loop.bus.spool import Spool

    with Spool(load_settings().spool.path) as spool:
        counts = spool.depth_by_topic()
    for topic, n in sorted(counts.items()):
        typer.echo(f"{topic}\t{n}")
    typer.echo(f"total\t{sum(counts.values())}")


@spool_app.command("drain")
def spool_drain(
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 60.0,
) -> None:
    """Produce every spooled event to the broker, oldest first, then exit."""
    from rlhf_loop.bus.drain import drain_spool

    try:
        left = drain_spool(load_settings(), timeout_s=timeout)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if left:
        raise click.ClickException(f"{left} event(s) still spooled after {timeout:.0f} s")
    typer.echo("spool is empty")


def config(
    markdown: Annotated[bool, typer.Option(help="Print the configuration table as Markdown.")] = False,
) -> None:
    """Show every setting with its environment variable, default and meaning."""
    from rlhf_loop.settings_doc import rows, to_markdown

    if markdown:
        typer.echo(to_markdown())
        return
    for env, default, doc in rows():
        typer.echo(f"{env}={default}\t# {doc}")
