"""Migrations up and down on SQLite and PostgreSQL; the migrated schema equals the table models."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from rlhf_loop.db import downgrade, make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.pairs import text_key
from rlhf_loop.settings import DatabaseSettings
from schemas.tables import Base, ComparisonChoice, Feedback, PreferencePair, Response

pytestmark = pytest.mark.integration

TABLES = {
    "responses",
    "feedback",
    "preference_pairs",
    "dataset_snapshots",
    "training_runs",
    "adapters",
    "deployment_pointers",
    "promotion_audit",
    "api_keys",
    "comparison_choices",
    "forgotten_users",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def _tables(url: str) -> set[str]:
    engine = make_engine(DatabaseSettings(url=url))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    upgrade(db_url)
    assert _tables(db_url) == TABLES
    downgrade(db_url, "base")
    assert _tables(db_url) == set()
    upgrade(db_url)
    assert _tables(db_url) == TABLES


def test_migrated_schema_matches_models(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(DatabaseSettings(url=db_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_response_text_keys_are_backfilled(db_url: str) -> None:
    """Responses stored before 0003 get the digest the aggregator writes for new ones."""
    upgrade(db_url, "0002")
    engine = make_engine(DatabaseSettings(url=db_url))
    texts = ["a kind answer", "a rude one", ""]
    with engine.begin() as conn:  # the columns of 0002 only: a core insert names just these
        conn.execute(
            sa.insert(Response.__table__),
            [
                dict(
                    event_id=uuid.uuid4(),
                    response_id=f"r{i}",
                    request_id="q",
                    app_id="app",
                    user_ref="u",
                    prompt="p",
                    prompt_hash="0" * 32,
                    response=text,
                    adapter_id="base",
                    base_model="demo",
                    sampling={},
                    prompt_tokens=1,
                    completion_tokens=1,
                    latency_ms=1.0,
                    created_at=datetime.now(UTC),
                )
                for i, text in enumerate(texts)
            ],
        )
    upgrade(db_url)
    with make_sessionmaker(engine)() as session:
        keys = dict(session.execute(sa.select(Response.response, Response.text_key)).all())
    engine.dispose()
    assert keys == {text: text_key(text) for text in texts}


def test_constraints_make_writes_idempotent(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(DatabaseSettings(url=db_url))
    sessions = make_sessionmaker(engine)
    row = dict(
        response_id="r1", prompt_hash="0" * 32, adapter_id="base", user_ref="u1", rating=1, created_at=datetime.now(UTC)
    )
    with sessions.begin() as s:
        s.add(Feedback(event_id=uuid.uuid4(), **row))
    with pytest.raises(IntegrityError), sessions.begin() as s:  # same user, same response
        s.add(Feedback(event_id=uuid.uuid4(), **row))
    with pytest.raises(IntegrityError), sessions.begin() as s:  # rating outside {1, -1}
        s.add(Feedback(event_id=uuid.uuid4(), **{**row, "user_ref": "u2", "rating": 3}))
    engine.dispose()


def test_pairs_stored_before_0004_came_from_their_prompt_group(db_url: str) -> None:
    upgrade(db_url, "0003")
    engine = make_engine(DatabaseSettings(url=db_url))
    pair = dict(pair_key="k1", prompt_hash="0" * 32, chosen_response_id="a", rejected_response_id="b", weight=1.0)
    with engine.begin() as conn:  # the columns of 0003 only
        conn.execute(sa.insert(PreferencePair.__table__), [{**pair, "margin": 1}])
    upgrade(db_url)
    with make_sessionmaker(engine)() as session:
        assert session.scalars(sa.select(PreferencePair.source)).all() == ["prompt_group"]
    with pytest.raises(IntegrityError), make_sessionmaker(engine).begin() as session:
        session.add(PreferencePair(**{**pair, "pair_key": "k2", "margin": 1, "source": "hearsay"}))
    engine.dispose()


def test_one_choice_per_user_and_comparison(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(DatabaseSettings(url=db_url))
    sessions = make_sessionmaker(engine)
    row = dict(
        comparison_id="c1",
        prompt_hash="0" * 32,
        user_ref="u1",
        chosen_response_id="a",
        candidate_response_ids=["a", "b"],
        created_at=datetime.now(UTC),
    )
    with sessions.begin() as s:
        s.add(ComparisonChoice(event_id=uuid.uuid4(), **row))
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.add(ComparisonChoice(event_id=uuid.uuid4(), **{**row, "chosen_response_id": "b"}))
    engine.dispose()


def _response_row(i: int, text: str) -> dict:
    return dict(
        event_id=uuid.uuid4(),
        response_id=f"r{i}",
        request_id="q",
        app_id="app",
        user_ref="u",
        prompt="p",
        prompt_hash="0" * 32,
        response=text,
        adapter_id="base",
        base_model="demo",
        sampling={},
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1.0,
        created_at=datetime.now(UTC),
    )


def test_a_writer_is_not_blocked_by_the_whole_text_key_backfill(pg_url: str) -> None:
    """0003 commits its column before the backfill and backfills in short transactions: while the backfill
    of 3,000 rows is held up (its UPDATE waits on an advisory lock the test holds, through a trigger), a
    concurrent insert into responses still commits."""
    import threading

    upgrade(pg_url, "0002")
    engine = make_engine(DatabaseSettings(url=pg_url))
    columns = [sa.column(c.name, c.type) for c in Response.__table__.columns if c.name != "text_key"]
    table_0002 = sa.table("responses", *columns)  # an insert from code that predates 0003
    with engine.begin() as conn:
        conn.execute(sa.insert(Response.__table__), [_response_row(i, f"answer {i}") for i in range(3000)])
        conn.execute(
            sa.text(
                "CREATE FUNCTION hold_updates() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text("CREATE TRIGGER hold BEFORE UPDATE ON responses FOR EACH STATEMENT EXECUTE FUNCTION hold_updates()")
        )
    holder = engine.connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(4242)"))  # every backfill UPDATE waits until it lets go
    failures: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade(pg_url)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            failures.append(e)

    migration = threading.Thread(target=migrate)
    migration.start()
    try:
        with engine.connect() as probe:  # the ALTER is committed before the backfill starts
            probe.execute(sa.text("SET statement_timeout = '20s'"))  # a probe blocked on the ALTER fails
            probe.commit()
            deadline = datetime.now(UTC).timestamp() + 60
            while "text_key" not in {c["name"] for c in inspect(probe).get_columns("responses")}:
                assert datetime.now(UTC).timestamp() < deadline and not failures, f"no committed column: {failures}"
                probe.rollback()
                time.sleep(0.05)
        with engine.begin() as writer:
            writer.execute(sa.text("SET LOCAL lock_timeout = '30s'"))  # fails instead of hanging on a long lock
            writer.execute(sa.insert(table_0002), [_response_row(3000, "late")])
        inserted_during_backfill = migration.is_alive()
        with engine.connect() as conn:
            pending = conn.execute(sa.select(sa.func.count()).where(Response.text_key == "")).scalar_one()
    finally:
        holder.execute(sa.text("SELECT pg_advisory_unlock(4242)"))
        holder.close()
        migration.join(120)
    with make_sessionmaker(engine)() as session:
        keys = dict(session.execute(sa.select(Response.response, Response.text_key)).all())
    engine.dispose()
    assert not failures, failures
    assert inserted_during_backfill and pending == 3001  # the insert committed while no row was backfilled yet
    assert len(keys) == 3001 and all(v == text_key(k) for k, v in keys.items())  # the late row too


def test_waiting_for_the_migrations_ends_at_head(pg_url: str) -> None:
    """The deployments' init containers (``rlhf-loop migrate --wait-s``) wait until the Job migrated."""
    from rlhf_loop.db import at_head, wait_for_head

    upgrade(pg_url, "0002")
    assert not at_head(pg_url) and not wait_for_head(pg_url, timeout_s=0.3, interval_s=0.1)
    upgrade(pg_url)
    assert wait_for_head(pg_url, timeout_s=5)
