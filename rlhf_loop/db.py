"""Engines, sessions and migrations. Nothing is created at import.

Storage functions elsewhere take a ``Session`` and never commit; the caller owns
``with session.begin():``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.settings import DatabaseSettings

MIGRATIONS = "schemas:migrations"


def make_engine(cfg: DatabaseSettings) -> Engine:
    """An engine for ``cfg.url``. SQLite gets WAL, foreign keys and a busy timeout; its parent
    directory is created so the embedded default works on a fresh machine."""
    url = make_url(cfg.url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=cfg.echo, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, echo=cfg.echo, pool_size=cfg.pool_size, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API connection
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic config for the checked-in migrations against ``url`` (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    make_engine(DatabaseSettings(url=url)).dispose()  # creates the SQLite directory if needed
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision`` ('base' drops every table)."""
    command.downgrade(alembic_config(url), revision)


def at_head(url: str) -> bool:
    """Whether the database at ``url`` has every migration applied (False while it cannot be reached)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import OperationalError

    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    engine = make_engine(DatabaseSettings(url=url))
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads()) == heads
    except OperationalError:
        return False
    finally:
        engine.dispose()


def wait_for_head(url: str, timeout_s: float, interval_s: float = 2.0) -> bool:
    """Wait until :func:`at_head` (the deployments' init containers wait on the migration Job this way)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not at_head(url):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True
