"""The Redis rate limiter: one shared budget per user and scope, batched checks, fail-open."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from rlhf_loop.metrics import RATELIMIT_ERRORS
from services.inference.ratelimit import RateLimiter

pytestmark = pytest.mark.integration


def test_limit_per_user_and_scope_with_concurrent_checks(redis_url: str) -> None:
    async def main() -> tuple[list[bool], list[bool], int]:
        client = aioredis.Redis.from_url(redis_url)
        limiter = RateLimiter(client, limit=10, window_s=30)
        burst = await asyncio.gather(*(limiter.check("feedback", "u1") for _ in range(25)))
        other = await asyncio.gather(limiter.check("feedback", "u2"), limiter.check("generate", "u1"))
        over = await limiter.check("feedback", "u1")
        await client.aclose()
        return [d.allowed for d in burst], [d.allowed for d in other], over.retry_after_s

    burst, other, retry_after = asyncio.run(main())
    assert burst.count(True) == 10 and burst.count(False) == 15
    assert other == [True, True]  # other users and other scopes have their own budgets
    assert 1 <= retry_after <= 30


def test_check_many_counts_every_user_of_a_batch_in_one_call(redis_url: str) -> None:
    async def main() -> tuple[dict, dict, list[bool]]:
        client = aioredis.Redis.from_url(redis_url)
        limiter = RateLimiter(client, limit=5, window_s=30)
        first = await limiter.check_many("feedback", {"a": 3, "b": 6, "c": 5})
        # concurrent with single checks: all go out in one script call, each key counted in order
        second, *singles = await asyncio.gather(
            limiter.check_many("feedback", {"a": 2, "c": 1}),
            limiter.check("feedback", "a"),
            limiter.check("feedback", "d"),
        )
        await client.aclose()
        return first, second, [d.allowed for d in singles]

    first, second, singles = asyncio.run(main())
    assert {u: d.allowed for u, d in first.items()} == {"a": True, "b": False, "c": True}
    assert 1 <= first["b"].retry_after_s <= 30
    assert {u: d.allowed for u, d in second.items()} == {"a": True, "c": False}  # a: 3 + 2 = 5; c: 5 + 1 = 6
    assert singles == [False, True]  # a's sixth unit; d is another user


def test_fails_open_when_redis_is_down() -> None:
    async def main() -> bool:
        client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        decision = await RateLimiter(client, limit=1, window_s=30).check("feedback", "u1")
        await client.aclose()
        return decision.allowed

    before = RATELIMIT_ERRORS._value.get()
    assert asyncio.run(main()) is True
    assert RATELIMIT_ERRORS._value.get() == before + 1
