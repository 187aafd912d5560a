"""App API keys: stored as SHA-256 hashes in SQL, checked against a short in-memory cache.

A key is shown once, when it is created (``rlhf-loop keys create``). Lookups hit the database at
most once per key per ``cache_ttl_s``, so the request path does no SQL in the steady state; a
revoked key stops working within that TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas.tables import ApiKey

Role = Literal["app", "approver", "admin"]
KEY_PREFIX = "rlk_"
APP_ROLES: tuple[Role, ...] = ("app", "admin")
"""Roles that may generate and forward feedback."""


class AuthError(Exception):
    """Missing or unknown key (401) or a role that may not do this (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: Role


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header value, if there is one."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def create_key(session: Session, name: str, role: Role) -> str:
    """Store a new key's hash and return the key itself (the only time it is visible). No commit."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, role=role, key_hash=hash_key(key)))
    return key


class KeyCache:
    """Resolves a presented key to a Principal, caching hits and misses for ``ttl_s``."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float = 30.0) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> Principal | None | bool:
        """The cached answer for ``key``, or False when it must be looked up (:meth:`lookup`)."""
        with self._lock:
            hit = self._cache.get(hash_key(key))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else False

    def lookup(self, key: str) -> Principal | None:
        """The key's principal (None if unknown or revoked), from the cache or the database."""
        hit = self.cached(key)
        if hit is not False:
            return hit  # type: ignore[return-value]
        digest = hash_key(key)
        now = time.monotonic()
        with self._sessions() as session:
            row = session.scalars(
                select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            ).one_or_none()
            principal = Principal(row.id, row.name, row.role) if row else None  # type: ignore[arg-type]
        with self._lock:
            if len(self._cache) > 10_000:  # bounded: guessing keys must not grow memory
                self._cache.clear()
            self._cache[digest] = (now + self._ttl_s, principal)
        return principal

    async def require(self, key: str | None, roles: tuple[Role, ...]) -> Principal:
        """The principal of ``key`` if its role is one of ``roles``; raises AuthError otherwise.
        Only a cache miss leaves the event loop (one SQL query in a worker thread)."""
        if not key:
            raise AuthError(401, "missing_api_key", "send the API key as 'Authorization: Bearer <key>'")
        principal = self.cached(key)
        if principal is False:
            principal = await anyio.to_thread.run_sync(self.lookup, key)
        if principal is None:
            raise AuthError(401, "invalid_api_key", "unknown or revoked API key")
        if principal.role not in roles:
            needs = " or ".join(roles)
            raise AuthError(403, "forbidden", f"role {principal.role!r} may not do this (needs {needs})")
        return principal  # type: ignore[return-value]
