"""The key check's bounds on an in-memory SQLite (every SQL statement counted): the shape check reads
nothing, unknown keys never evict valid ones, an address past its failure budget costs no query, expiry
is honoured from the cache; users are scoped by app without collisions."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from schemas.tables import Base
from services.inference.auth import APP_ROLES, AuthError, FailureBudget, KeyCache, create_key
from services.inference.user_scope import scoped_user


@pytest.fixture
def db() -> tuple[sessionmaker, list[str]]:
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    Base.metadata.create_all(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    return sessionmaker(engine), statements


def _require(cache: KeyCache, key: str, address: str = "a") -> object:
    return asyncio.run(cache.require(key, APP_ROLES, address))


def test_unknown_keys_never_evict_valid_ones_and_a_spent_budget_costs_no_query(db) -> None:  # noqa: ANN001
    sessions, statements = db
    with sessions.begin() as s:
        valid = [create_key(s, f"app-{i}", "app") for i in range(2)]
    cache = KeyCache(sessions, ttl_s=60, size=2, failures=FailureBudget(limit=5, window_s=60))
    for key in valid:
        _require(cache, key)
    statements.clear()
    for i in range(200):
        with pytest.raises(AuthError) as refused:
            _require(cache, "rlk_" + secrets.token_urlsafe(32), address="flood")
        assert refused.value.status == (401 if i < 5 else 429)
    for _ in range(200):
        with pytest.raises(AuthError):
            _require(cache, secrets.token_hex(8), address="elsewhere")  # malformed: never read
    assert len(statements) == 5  # the budget, not one query per key
    for key in valid:
        assert _require(cache, key, address="flood").name.startswith("app-")  # cached: served, no query
    assert len(statements) == 5


def test_an_expired_key_is_refused_from_the_cache(db) -> None:  # noqa: ANN001
    sessions, _ = db
    with sessions.begin() as s:
        key = create_key(s, "app-x", "app", expires_at=datetime.now(UTC) + timedelta(seconds=1))
    cache = KeyCache(sessions, ttl_s=3600)
    assert _require(cache, key).name == "app-x"
    time.sleep(1.05)
    with pytest.raises(AuthError) as refused:
        _require(cache, key)
    assert refused.value.status == 401


def test_admin_keys_are_no_app_keys(db) -> None:  # noqa: ANN001
    sessions, _ = db
    with sessions.begin() as s:
        key = create_key(s, "ops", "admin", owner="ops-team")
    with pytest.raises(AuthError) as refused:
        _require(KeyCache(sessions), key)
    assert (refused.value.status, refused.value.code) == (403, "forbidden")


def test_key_names_cannot_carry_the_scope_separator(db) -> None:  # noqa: ANN001
    sessions, _ = db
    with sessions.begin() as s, pytest.raises(ValueError):
        create_key(s, "shop:app", "app")


def test_users_are_scoped_by_app_and_long_ones_hash_without_colliding() -> None:
    assert scoped_user("shop", "u1") == "shop:u1" != scoped_user("blog", "u1")
    long_a, long_b = scoped_user("a" * 64, "u1"), scoped_user("a" * 64, "u2")
    assert len(long_a) <= 64 and "~" in long_a and long_a != long_b
    assert scoped_user("shop", "x" * 59) == "shop:" + "x" * 59  # exactly 64 stays readable


def test_the_failure_budget_refunds_successes_and_resets_per_window() -> None:
    budget = FailureBudget(limit=2, window_s=60)
    assert budget.charge("a") == 0 and budget.charge("a") == 0
    assert budget.charge("a") > 0 and budget.spent("a") > 0 and budget.spent("b") == 0
    budget.refund("a")
    assert budget.charge("a") == 0


def _request(headers: dict[str, str], scheme: str = "http") -> object:
    from starlette.requests import Request

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "scheme": scheme, "path": "/ui/login", "headers": raw, "client": ("10.0.0.5", 1)})


def test_forwarded_headers_count_only_behind_a_trusted_proxy() -> None:
    from services.inference.forwarded import client_address, request_origin

    sent = {"host": "rlhf.example", "x-forwarded-proto": "https", "x-forwarded-for": "6.6.6.6, 203.0.113.9"}
    assert request_origin(_request(sent), trusted_proxy=False) == "http://rlhf.example"
    assert request_origin(_request(sent), trusted_proxy=True) == "https://rlhf.example"
    assert client_address(_request(sent), trusted_proxy=False) == "10.0.0.5"
    assert client_address(_request(sent), trusted_proxy=True) == "203.0.113.9"  # what the proxy appended


def test_a_flood_from_its_address_cannot_lock_a_valid_key_out_after_its_ttl_or_a_revocation(db) -> None:  # noqa: ANN001
    sessions, statements = db
    with sessions.begin() as s:
        key = create_key(s, "app-nat", "app")
    cache = KeyCache(sessions, ttl_s=0.05, failures=FailureBudget(limit=3, window_s=60))
    _require(cache, key, address="nat")
    for _ in range(10):  # another client behind the same address spends its budget
        with pytest.raises(AuthError):
            _require(cache, "rlk_" + secrets.token_urlsafe(32), address="nat")
    time.sleep(0.06)  # the valid key's answer is now stale
    statements.clear()
    assert _require(cache, key, address="nat").name == "app-nat"  # refreshed with one query, not a 429
    assert len(statements) == 1
    cache.evict_all()  # a revocation notice (of another key)
    assert _require(cache, key, address="nat").name == "app-nat"
    assert len(statements) == 2
