"""``rlhf-loop users`` and ``keys``: end users' data and API keys, straight on the database."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from rlhf_loop.cli.options import load_settings

users_app = typer.Typer(help="End users' data.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for apps, approvers and admins.", no_args_is_help=True)


@users_app.command("forget")
def users_forget(user_ref: Annotated[str, typer.Argument(help="The pseudonymous user reference.")]) -> None:
    """Delete a user's ratings and responses, re-derive the preference pairs they contributed to, rewrite the
    dataset snapshots holding them and publish their tombstone (a replay then skips them). Safe to rerun."""
    from kafka.errors import KafkaError

    from rlhf_loop.db import make_engine, make_sessionmaker
    from workers.aggregator.forget import forget_user, publish_tombstone
    from workers.aggregator.main import rules
    from workers.training.forget import forget_in_snapshots

    settings = load_settings()
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    try:
        gone = forget_user(sessions, user_ref, rules(settings))
        snapshots = forget_in_snapshots(sessions, user_ref, gone.groups, gone.responses, gone.rated)
    finally:
        engine.dispose()
    typer.echo(
        f"forgot {user_ref}; re-derived the pairs of {len(gone.groups)} prompt group(s); "
        f"rewrote {len(snapshots)} dataset snapshot(s)"
    )
    if not settings.kafka.bootstrap_servers:
        typer.echo("no Kafka bootstrap servers set: no tombstone published (the forgotten-users table still applies)")
        return
    try:
        publish_tombstone(settings.kafka.bootstrap_servers, settings.kafka, user_ref)
    except KafkaError as e:
        raise click.ClickException(f"the tombstone of {user_ref} was not published ({e}); run this again") from e
    typer.echo(f"published the tombstone of {user_ref} on {settings.kafka.topic_prefix}rlhf.forgotten.v1")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for (an app id, a person).")],
    role: Annotated[str, typer.Option(help="app | approver | admin")] = "app",
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from rlhf_loop.db import make_engine, make_sessionmaker
    from services.inference.auth import create_key

    if role not in ("app", "approver", "admin"):
        raise click.BadParameter("role must be app, approver or admin", param_hint="--role")
    engine = make_engine(load_settings().database)
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, name, role)  # type: ignore[arg-type]
    engine.dispose()
    typer.echo(key)
