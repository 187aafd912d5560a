"""Per-user rate limits in Redis: a fixed window per (scope, user).

The counters and their expiry are set atomically by a Lua script, so concurrent API replicas share
one budget per user. Checks are micro-batched: every check that arrives while a Redis round trip
is in flight (or in the same event-loop turn) goes out in the next script call, which counts all
of their keys at once, so a busy API pays one round trip and one command per batch, not per
request. A batch request counts all of its users with one :meth:`RateLimiter.check_many`. When
Redis is unreachable the limiter fails open (the request proceeds and
``rlhf_ratelimit_errors_total`` counts it): losing rate limiting is better than losing traffic.

One script call touches several keys, so on a Redis Cluster they would have to share a hash slot;
the API talks to one Redis (``redis.url``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rlhf_loop.metrics import RATELIMIT_ERRORS

# KEYS = counters, ARGV[1] = window seconds, ARGV[2] = limit, ARGV[2 + i] = cost for KEYS[i].
# Returns one string, a comma-separated entry per key: 0 when allowed, else the seconds until its window
# ends (at least 1). A key listed twice is counted twice, in order. One bulk reply parses cheaply.
_SCRIPT = """
local window_ms = tonumber(ARGV[1]) * 1000
local limit = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[i + 2])
  local n = redis.call('INCRBY', key, cost)
  local ttl = -1
  if n ~= cost then ttl = redis.call('PTTL', key) end
  if ttl < 0 then redis.call('PEXPIRE', key, window_ms); ttl = window_ms end
  if n > limit then out[i] = math.max(1, math.ceil(ttl / 1000)) else out[i] = 0 end
end
return table.concat(out, ',')
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int


ALLOWED = Decision(True, 0)


@dataclass
class _Pending:
    keys: list[str]
    costs: list[int]
    future: asyncio.Future[list[Decision]]


class RateLimiter:
    """``limit`` units per user per ``window_s`` seconds, per scope (e.g. 'generate', 'feedback')."""

    def __init__(self, client: aioredis.Redis, limit: int, window_s: int, prefix: str = "rlhf:rl") -> None:
        self._limit = limit
        self._window_s = window_s
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)
        self._pending: list[_Pending] = []
        self._flushing = False

    def _key(self, scope: str, user_ref: str) -> str:
        # user refs are hashed so raw ids never appear in Redis keys
        return f"{self._prefix}:{scope}:{hashlib.blake2b(user_ref.encode(), digest_size=12).hexdigest()}"

    async def check(self, scope: str, user_ref: str, cost: int = 1) -> Decision:
        """Count ``cost`` units against the user's window; not allowed once over the limit."""
        return (await self._enqueue([self._key(scope, user_ref)], [cost]))[0]

    async def check_many(self, scope: str, costs: Mapping[str, int]) -> dict[str, Decision]:
        """:meth:`check` for several users (user_ref -> cost) in one round trip."""
        users = list(costs)
        if not users:
            return {}
        decisions = await self._enqueue([self._key(scope, u) for u in users], [costs[u] for u in users])
        return dict(zip(users, decisions, strict=True))

    def _enqueue(self, keys: list[str], costs: list[int]) -> asyncio.Future[list[Decision]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Decision]] = loop.create_future()
        self._pending.append(_Pending(keys, costs, future))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                keys = [k for p in batch for k in p.keys]
                costs = [c for p in batch for c in p.costs]
                try:
                    reply = await self._script(keys=keys, args=[self._window_s, self._limit, *costs])
                    entries = (reply.decode() if isinstance(reply, bytes) else reply).split(",")
                except RedisError:
                    RATELIMIT_ERRORS.inc(len(keys))
                    entries = None
                except BaseException as e:  # cancelled at shutdown, or a bug: never leave a request hanging
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(e)
                    raise
                at = 0
                for p in batch:
                    n = len(p.keys)
                    decisions = [ALLOWED] * n if entries is None else [_decide(e) for e in entries[at : at + n]]
                    at += n
                    if not p.future.done():
                        p.future.set_result(decisions)
        finally:
            self._flushing = False


def _decide(entry: str) -> Decision:
    retry_after_s = int(entry)
    return Decision(False, retry_after_s) if retry_after_s else ALLOWED
