"""Per-user rate limits in Redis: a fixed window per (scope, user).

The counter and its expiry are set atomically by a Lua script, so concurrent API replicas share
one budget per user. Checks are micro-batched: every check that arrives while a Redis round trip
is in flight (or in the same event-loop turn) goes out in the next pipeline, so a busy API pays one
round trip per batch, not per request. When Redis is unreachable the limiter fails open (the
request proceeds and ``rlhf_ratelimit_errors_total`` counts it): losing rate limiting is better
than losing traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rlhf_loop.metrics import RATELIMIT_ERRORS

# KEYS[1] = counter, ARGV[1] = window seconds, ARGV[2] = cost. Returns {count, ttl_ms}.
_SCRIPT = """
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if n == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1] * 1000) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1] * 1000); ttl = ARGV[1] * 1000 end
return {n, ttl}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int


class RateLimiter:
    """``limit`` units per user per ``window_s`` seconds, per scope (e.g. 'generate', 'feedback')."""

    def __init__(self, client: aioredis.Redis, limit: int, window_s: int, prefix: str = "rlhf:rl") -> None:
        self._client = client
        self._limit = limit
        self._window_s = window_s
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)
        self._pending: list[tuple[str, int, asyncio.Future[Decision]]] = []
        self._flushing = False

    def _key(self, scope: str, user_ref: str) -> str:
        # user refs are hashed so raw ids never appear in Redis keys
        return f"{self._prefix}:{scope}:{hashlib.blake2b(user_ref.encode(), digest_size=12).hexdigest()}"

    async def check(self, scope: str, user_ref: str, cost: int = 1) -> Decision:
        """Count ``cost`` units against the user's window; not allowed once over the limit."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending.append((self._key(scope, user_ref), cost, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for key, cost, _ in batch:
                            await self._script(keys=[key], args=[self._window_s, cost], client=pipe)
                        replies = await pipe.execute()
                except RedisError:
                    RATELIMIT_ERRORS.inc(len(batch))
                    replies = [None] * len(batch)
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(self._decide(reply))
        finally:
            self._flushing = False

    def _decide(self, reply: list[int] | None) -> Decision:
        if reply is None:
            return Decision(True, 0)
        count, ttl_ms = reply
        if int(count) > self._limit:
            return Decision(False, max(1, -(-int(ttl_ms) // 1000)))
        return Decision(True, 0)
