"""``rlhf-loop users`` and ``keys``: end users' data and API keys, straight on the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import click
import typer

from rlhf_loop.cli.options import load_settings

users_app = typer.Typer(help="End users' data.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for apps, approvers and admins.", no_args_is_help=True)


@users_app.command("forget")
def users_forget(
    user_ref: Annotated[str, typer.Argument(help="The app's pseudonymous user reference.")],
    app: Annotated[
        str | None,
        typer.Option(help="The app (its key's name) whose user this is; without it USER_REF is the stored id."),
    ] = None,
) -> None:
    """Delete one app's user's ratings and responses, re-derive the preference pairs they contributed to, rewrite
    the dataset snapshots holding them and publish their tombstone (a replay then skips them). Safe to rerun."""
    from kafka.errors import KafkaError

    from rlhf_loop.db import make_engine, make_sessionmaker
    from services.inference.user_scope import scoped_user
    from workers.aggregator.forget import forget_user, publish_tombstone
    from workers.aggregator.main import rules
    from workers.training.forget import forget_in_snapshots

    settings = load_settings()
    stored = scoped_user(app, user_ref) if app else user_ref
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    try:
        gone = forget_user(sessions, stored, rules(settings))
        snapshots = forget_in_snapshots(sessions, stored, gone.groups, gone.responses, gone.rated)
    finally:
        engine.dispose()
    typer.echo(
        f"forgot {user_ref}{f' of {app}' if app else ''}; re-derived the pairs of {len(gone.groups)} prompt "
        f"group(s); rewrote {len(snapshots)} dataset snapshot(s)"
    )
    if not settings.kafka.bootstrap_servers:
        typer.echo("no Kafka bootstrap servers set: no tombstone published (the forgotten-users table still applies)")
        return
    try:
        publish_tombstone(settings.kafka.bootstrap_servers, settings.kafka, stored)
    except KafkaError as e:
        raise click.ClickException(f"the tombstone of {stored} was not published ({e}); run this again") from e
    typer.echo(f"published the tombstone of {stored} on {settings.kafka.topic_prefix}rlhf.forgotten.v1")


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Argument(help="Who the key is for: an app id (app keys scope their users by it), a label.")
    ],
    role: Annotated[str, typer.Option(help="app | approver | admin")] = "app",
    owner: Annotated[
        str | None, typer.Option(help="The person or team answerable for it; required for approver and admin keys.")
    ] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Refuse the key after this many days.")] = None,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from rlhf_loop.db import make_engine, make_sessionmaker
    from services.inference.auth import create_key

    if role not in ("app", "approver", "admin"):
        raise click.BadParameter("role must be app, approver or admin", param_hint="--role")
    if role != "app" and not owner:
        raise click.BadParameter(
            "approver and admin keys need an owner: two approvals need two owners", param_hint="--owner"
        )
    if expires_in_days is not None and expires_in_days <= 0:
        raise click.BadParameter("must be positive", param_hint="--expires-in-days")
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    engine = make_engine(load_settings().database)
    try:
        with make_sessionmaker(engine).begin() as session:
            key = create_key(session, name, role, owner, expires)  # type: ignore[arg-type]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from e
    finally:
        engine.dispose()
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, name, role, owner, created, expires, revoked (never the key)."""
    from sqlalchemy import select

    from rlhf_loop.db import make_engine, make_sessionmaker
    from schemas.tables import ApiKey

    def when(at: datetime | None) -> str:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else "-"

    engine = make_engine(load_settings().database)
    with make_sessionmaker(engine)() as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
        typer.echo("id\tname\trole\towner\tcreated\texpires\trevoked")
        for k in rows:
            typer.echo(
                f"{k.id}\t{k.name}\t{k.role}\t{k.owner}\t{when(k.created_at)}\t{when(k.expires_at)}\t{when(k.revoked_at)}"
            )
    engine.dispose()


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (rlhf-loop keys list).")]) -> None:
    """Revoke a key: every API replica refuses it as soon as the notice on Redis arrives."""
    from rlhf_loop.db import make_engine, make_sessionmaker
    from services.inference.auth import revoke_key
    from services.inference.key_revocations import announce_revocation

    settings = load_settings()
    engine = make_engine(settings.database)
    with make_sessionmaker(engine).begin() as session:
        revoked = revoke_key(session, key_id)
    engine.dispose()
    if not revoked:
        typer.echo(f"no unrevoked key {key_id}", err=True)
        raise typer.Exit(1)
    told = announce_revocation(settings.redis.url, key_id)
    later = "" if told else f" (Redis unreachable: replicas refuse it within {settings.api.key_cache_ttl_s:.0f} s)"
    typer.echo(f"revoked key {key_id}{later}")
