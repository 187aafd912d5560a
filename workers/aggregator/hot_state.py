"""Hot state in Redis: the sliding-window count of ratings per adapter behind
``rlhf_negative_feedback_rate``. (Which events are already stored is SQL's to say: the writes
report the rows they changed, so a redelivered event is neither re-derived nor counted again.)

SQL is the source of truth. Redis only answers fast: if it loses its data (a flush, a restart), the
sentinel key is gone, and the next batch rebuilds the window from the feedback table before
counting anything.

Redis being away never stops the aggregator: every call has the client's timeouts, a failed call
counts in ``rlhf_aggregator_redis_errors_total`` and the hot state steps aside for ``retry_s``
(nothing is counted meanwhile). The window missed ratings then, so the first call that reaches
Redis again rebuilds it from SQL.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.metrics import AGGREGATOR_REDIS_ERRORS, NEGATIVE_FEEDBACK_RATE
from schemas.events import FeedbackGiven
from schemas.tables import Feedback

BUCKET_S = 60
log = logging.getLogger(__name__)
T = TypeVar("T")


class HotState:
    def __init__(
        self,
        client: redis.Redis,
        sessions: sessionmaker[Session],
        window_s: int = 900,
        prefix: str = "rlhf:agg",
        retry_s: float = 5.0,
    ) -> None:
        self._r = client
        self._sessions = sessions
        self._window_s = window_s
        self._prefix = prefix
        self._sentinel = f"{prefix}:window-built"
        self._retry_s = retry_s
        self._away_until = 0.0  # time.monotonic() before which Redis is not tried
        self._stale = False  # ratings were stored while Redis was away: rebuild the window first

    def _guarded(self, call: Callable[[], T], fallback: T) -> T:
        """``call()``, or ``fallback`` while Redis is away (a failed call starts an away spell)."""
        if time.monotonic() < self._away_until:
            return fallback
        try:
            return call()
        except redis.RedisError as e:
            AGGREGATOR_REDIS_ERRORS.inc()
            self._away_until = time.monotonic() + self._retry_s
            self._stale = True
            log.warning("Redis unavailable (%s: %s); going on without the hot state", type(e).__name__, e)
            return fallback

    def stored(self, feedback: Sequence[FeedbackGiven]) -> None:
        """After the DB transaction committed: count the ratings it wrote for the first time (or
        that replaced an older rating) into the window and export the rates; two round trips."""
        self._guarded(lambda: self._stored(feedback), None)

    def _stored(self, feedback: Sequence[FeedbackGiven]) -> None:
        if self._stale or not self._r.exists(self._sentinel):
            self.rebuild()  # it reads this batch's ratings from SQL too
        else:
            pipe = self._r.pipeline(transaction=False)
            self._count(pipe, feedback)
            pipe.execute()
        self._rates()

    # --- sliding window --------------------------------------------------------------------------
    def _bucket_key(self, adapter: str, bucket: int) -> str:
        return f"{self._prefix}:fb:{adapter}:{bucket}"

    def _count(self, pipe: redis.client.Pipeline, feedback: Sequence[FeedbackGiven]) -> None:
        """Count new ratings into their minute buckets; ratings older than the window never show in it."""
        oldest = int(time.time()) // BUCKET_S - self._window_s // BUCKET_S
        counts: dict[tuple[str, int, str], int] = defaultdict(int)
        for e in feedback:
            bucket = int(e.created_at.timestamp()) // BUCKET_S
            if bucket >= oldest:
                counts[(e.adapter_id, bucket, "down" if e.rating < 0 else "up")] += 1
        for (adapter, bucket, field), n in counts.items():
            key = self._bucket_key(adapter, bucket)
            pipe.hincrby(key, field, n)
            pipe.expire(key, self._window_s + 2 * BUCKET_S)
        if counts:
            pipe.sadd(f"{self._prefix}:adapters", *{a for a, _, _ in counts})

    def rebuild(self) -> None:
        """Recompute the window from the feedback table (the source of truth)."""
        since = datetime.now(UTC) - timedelta(seconds=self._window_s + BUCKET_S)
        counts: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
        with self._sessions() as session:
            for adapter, rating, at in session.execute(
                select(Feedback.adapter_id, Feedback.rating, Feedback.created_at).where(Feedback.created_at >= since)
            ):
                counts[(adapter, int(at.timestamp()) // BUCKET_S)]["down" if rating < 0 else "up"] += 1
        pipe = self._r.pipeline(transaction=True)
        for (adapter, bucket), c in counts.items():
            key = self._bucket_key(adapter, bucket)
            pipe.delete(key)
            pipe.hset(key, mapping=c)
            pipe.expire(key, self._window_s + 2 * BUCKET_S)
            pipe.sadd(f"{self._prefix}:adapters", adapter)
        pipe.set(self._sentinel, 1)
        pipe.execute()
        self._stale = False

    def rates(self, now: datetime | None = None) -> dict[str, float]:
        """Negative-feedback rate per adapter over the window (empty while Redis is away); also
        exported as a gauge."""
        return self._guarded(lambda: self._rates(now), {})

    def _rates(self, now: datetime | None = None) -> dict[str, float]:
        last = int((now or datetime.now(UTC)).timestamp()) // BUCKET_S
        buckets = range(last - self._window_s // BUCKET_S, last + 1)
        adapters = sorted(a.decode() for a in self._r.smembers(f"{self._prefix}:adapters"))
        pipe = self._r.pipeline(transaction=False)
        for a in adapters:
            for b in buckets:
                pipe.hgetall(self._bucket_key(a, b))
        replies = iter(pipe.execute())
        rates = {}
        for a in adapters:
            up = down = 0
            for _ in buckets:
                h = next(replies)
                up, down = up + int(h.get(b"up", 0)), down + int(h.get(b"down", 0))
            if up + down:
                rates[a] = down / (up + down)
                NEGATIVE_FEEDBACK_RATE.labels(a).set(rates[a])
        return rates
