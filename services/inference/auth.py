"""API keys: stored as SHA-256 hashes in SQL, checked against a bounded in-memory cache.

A key is shown once, when it is created (``rlhf-loop keys create``). It has a role, an owner (the person or
team answerable for it: two approvals need two owners) and optionally an expiry. The request path does no
SQL in the steady state, and a flood of made-up keys cannot make it do more:
- a key that is not shaped like one this service issues (prefix, length, charset) is refused unread;
- valid keys live in an LRU of ``api.key_cache_size`` entries that unknown keys never enter, so guessing
  cannot evict them; unknown keys have a bounded negative cache of their own; a valid key past its TTL is
  looked up again without being charged to its address (below), so a flood cannot lock it out;
- a lookup that may fail is charged to the client address first (:class:`FailureBudget`): past
  ``api.auth_failure_limit`` failures per window the address gets 429 without a lookup, so at most that
  many SQL queries per address and window, however many requests race.
An expired key is refused at once (its expiry is cached with it); a revoked one as soon as the revocation
notice on Redis arrives (:mod:`services.inference.key_revocations`), at the latest after ``key_cache_ttl_s``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop import metrics as m
from schemas.tables import ApiKey

Role = Literal["app", "approver", "admin"]
KEY_PREFIX = "rlk_"
KEY_SHAPE = re.compile(r"rlk_[A-Za-z0-9_-]{43}")
"""What ``create_key`` issues: the prefix and 32 random bytes in unpadded base64url."""
APP_ROLES: tuple[Role, ...] = ("app",)
"""Roles that may generate and forward feedback: only apps (an admin key is no app)."""
APPROVER_ROLES: tuple[Role, ...] = ("approver", "admin")
NAME_SHAPE = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""Key names: an app key's name is its app id, which scopes its users (``app:user``), so no ':'."""


class AuthError(Exception):
    """Missing, unknown or expired key (401), a role that may not do this (403), too many failures (429)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: Role
    owner: str
    expires_at: float | None = None
    """Unix time after which the key is refused (None: never)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header value, if there is one."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def create_key(
    session: Session, name: str, role: Role, owner: str | None = None, expires_at: datetime | None = None
) -> str:
    """Store a new key's hash and return the key itself (the only time it is visible). No commit.
    ``owner`` defaults to ``name`` (an app answers for its own key)."""
    if not NAME_SHAPE.fullmatch(name):
        raise ValueError("a key name is 1-64 letters, digits, '.', '_' or '-'")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, role=role, owner=owner or name, key_hash=hash_key(key), expires_at=expires_at))
    return key


def revoke_key(session: Session, key_id: int) -> bool:
    """Mark a key revoked; False when there is no such unrevoked key. No commit."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = datetime.now(UTC)
    return True


def _principal(row: ApiKey | None) -> Principal | None:
    if row is None or row.revoked_at is not None:
        return None
    expires = row.expires_at.timestamp() if row.expires_at is not None else None
    return Principal(row.id, row.name, row.role, row.owner, expires)  # type: ignore[arg-type]


class FailureBudget:
    """Failed key checks per client address in fixed windows, in memory (per API process). Bounded: when
    more addresses than ``max_addresses`` are tracked, the oldest window's entries go first."""

    def __init__(self, limit: int, window_s: int, max_addresses: int = 100_000) -> None:
        self._limit, self._window_s, self._max = limit, window_s, max_addresses
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def charge(self, address: str) -> int:
        """Count one possible failure; returns 0 when allowed, else the seconds until the window ends."""
        now = time.monotonic()
        with self._lock:
            ends, n = self._counts.get(address, (0.0, 0))
            if ends <= now:
                ends, n = now + self._window_s, 0
            if n >= self._limit:
                return max(1, int(ends - now + 0.999))
            self._counts[address] = (ends, n + 1)
            self._counts.move_to_end(address)
            while len(self._counts) > self._max:
                self._counts.popitem(last=False)
        return 0

    def spent(self, address: str) -> int:
        """The seconds until ``address`` may fail again (0: it may), without charging it."""
        now = time.monotonic()
        with self._lock:
            ends, n = self._counts.get(address, (0.0, 0))
        return max(1, int(ends - now + 0.999)) if ends > now and n >= self._limit else 0

    def refund(self, address: str) -> None:
        """Undo a charge whose check succeeded."""
        with self._lock:
            hit = self._counts.get(address)
            if hit is not None and hit[1] > 0:
                self._counts[address] = (hit[0], hit[1] - 1)


class KeyCache:
    """Resolves a presented key to a Principal: valid keys in an LRU, unknown ones in a negative cache,
    both for ``ttl_s`` and bounded by ``size``; SQL only on a miss, charged to the caller's address."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ttl_s: float = 30.0,
        size: int = 10_000,
        failures: FailureBudget | None = None,
    ) -> None:
        self._sessions, self._ttl_s, self._size = sessions, ttl_s, size
        self._valid: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self.failures = failures or FailureBudget(20, 60)

    def evict_all(self) -> None:
        """Distrust every cached answer (a key was revoked somewhere): valid keys are looked up again on their
        next use, without charging the address (they were valid), unknown ones forgotten."""
        with self._lock:
            for digest, (_, principal) in self._valid.items():
                self._valid[digest] = (0.0, principal)
            self._unknown.clear()

    def known_valid(self, key: str) -> bool:
        """Whether ``key`` was valid when last looked up (its answer may be due for a refresh). No SQL."""
        if not KEY_SHAPE.fullmatch(key):
            return False
        with self._lock:
            return hash_key(key) in self._valid

    def _cached(self, digest: str) -> Principal | None | Literal[False, "stale"]:
        """The cached answer; "stale" for a valid key past its TTL, False when nothing is known."""
        now = time.monotonic()
        with self._lock:
            hit = self._valid.get(digest)
            if hit is not None:
                self._valid.move_to_end(digest)
                return hit[1] if hit[0] > now else "stale"
            unknown = self._unknown.get(digest)
            if unknown is not None and unknown > now:
                return None
        return False

    def lookup(self, digest: str) -> Principal | None:
        """One SQL query: the principal of the key with this hash, None if unknown or revoked; cached."""
        with self._sessions() as session:
            principal = _principal(session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none())
        m.API_KEY_LOOKUPS.labels("found" if principal else "unknown").inc()
        deadline = time.monotonic() + self._ttl_s
        with self._lock:
            if principal is not None:
                self._valid[digest] = (deadline, principal)
                self._valid.move_to_end(digest)
                self._unknown.pop(digest, None)
                while len(self._valid) > self._size:
                    self._valid.popitem(last=False)
            else:
                self._valid.pop(digest, None)
                self._unknown[digest] = deadline
                self._unknown.move_to_end(digest)
                while len(self._unknown) > self._size:
                    self._unknown.popitem(last=False)
        return principal

    async def resolve(self, digest: str, address: str) -> Principal | None:
        """The live principal of a key hash (None: unknown, revoked or expired); raises AuthError(429) when
        ``address`` has spent its failure budget and the answer is not cached."""
        principal = self._cached(digest)
        if principal == "stale":  # valid when last seen: refreshed without charging the address, so a flood
            principal = await anyio.to_thread.run_sync(self.lookup, digest)  # from its address cannot lock it out
        elif principal is False:
            retry_after = self.failures.charge(address)
            if retry_after:
                m.AUTH_REFUSALS.labels("throttled").inc()
                raise AuthError(429, "auth_throttled", "too many failed key checks from this address", retry_after)
            principal = await anyio.to_thread.run_sync(self.lookup, digest)
            if principal is not None:
                self.failures.refund(address)
        elif principal is None:
            self.failures.charge(address)
        if principal is not None and principal.expires_at is not None and principal.expires_at <= time.time():
            return None
        return principal

    async def require(self, key: str | None, roles: tuple[Role, ...], address: str = "") -> Principal:
        """The principal of ``key`` if it is live and its role is one of ``roles``; raises AuthError otherwise.
        Only a cache miss leaves the event loop (one SQL query in a worker thread)."""
        if not key:
            raise AuthError(401, "missing_api_key", "send the API key as 'Authorization: Bearer <key>'")
        if not KEY_SHAPE.fullmatch(key):
            self.failures.charge(address)
            m.AUTH_REFUSALS.labels("malformed").inc()
            raise AuthError(401, "invalid_api_key", "unknown, revoked or expired API key")
        principal = await self.resolve(hash_key(key), address)
        if principal is None:
            m.AUTH_REFUSALS.labels("unknown").inc()
            raise AuthError(401, "invalid_api_key", "unknown, revoked or expired API key")
        if principal.role not in roles:
            m.AUTH_REFUSALS.labels("forbidden").inc()
            needs = " or ".join(roles)
            raise AuthError(403, "forbidden", f"role {principal.role!r} may not do this (needs {needs})")
        return principal
