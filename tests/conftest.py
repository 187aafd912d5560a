"""Shared fixtures: settings built in the test, a PostgreSQL schema per test, Redis, and a guard
that fails any test whose code logged an internal error."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlhf_loop.settings import DatabaseSettings, RedisSettings, Settings, SpoolSettings

PG_ADMIN_URL = os.environ.get("RLHF_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RLHF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
OUR_LOGGERS = ("rlhf_loop", "schemas", "services", "workers")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_error_logs: the test expects our code to log errors")


@pytest.fixture(autouse=True)
def _fail_on_internal_error_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    if request.node.get_closest_marker("allow_error_logs"):
        return
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.name.startswith(OUR_LOGGERS)]
    assert not errors, "internal errors were logged:\n" + "\n".join(f"{r.name}: {r.getMessage()}" for r in errors)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo model, built once into the same cache ``rlhf-loop demo`` uses (var/models/demo)."""
    from rlhf_loop.models.demo_kit import build_demo_model

    return build_demo_model(ROOT / "var" / "models" / "demo", progress=False)


@pytest.fixture(scope="session")
def llama_model_dir() -> Path:
    """The Llama-shaped demo model (the shape vLLM serves with LoRA), cached in var/models/demo-llama."""
    from rlhf_loop.models.demo_kit import build_demo_model, llama_config

    return build_demo_model(ROOT / "var" / "models" / "demo-llama", cfg=llama_config(), progress=False)


@contextmanager
def pg_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped on exit."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test."""
    with pg_schema() as url:
        yield url


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema shared by one test module (for long-lived server processes)."""
    with pg_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'rlhf.sqlite3'}"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 15, emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings rooted in the test's temporary directory."""
    return Settings(
        data_dir=tmp_path,
        artifacts_dir=tmp_path / "artifacts",
        database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'rlhf.sqlite3'}"),
        spool=SpoolSettings(path=tmp_path / "spool.sqlite3"),
        redis=RedisSettings(url=REDIS_URL),
    )
