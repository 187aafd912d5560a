"""A Redis outage does not stop the aggregator: Redis sits behind a real TCP proxy that is frozen
(SIGSTOP: connections open, no reply, so only the client's timeouts end a call), then killed
(connection refused), then restored, while events keep coming. Every event reaches SQL exactly
once, the pairs equal the pure reference, the consumer never raises, and after recovery the
negative-feedback window in Redis equals what SQL says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, select

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.db import make_engine, make_sessionmaker
from rlhf_loop.preferences.pairs import PairRules
from rlhf_loop.settings import KafkaSettings, PairSettings, RedisSettings
from schemas.events import FeedbackGiven, ResponseLogged, Topics
from schemas.tables import Feedback, Response
from tests.conftest import REDIS_URL, ROOT
from tests.integration.test_aggregator import (
    mixed_stream,
    produce,
    reference_pairs,
    settings_for,
    stored_pairs,
    wait_for,
    world,
)
from tests.support.processes import free_port
from workers.aggregator.hot_state import HotState
from workers.aggregator.main import build

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class RedisProxy:
    """``tests.support.proxy`` in front of the test Redis; its URL keeps the test's database."""

    def __init__(self) -> None:
        target = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs
        self.target_port, self.db = target.get("port", 6379), target.get("db", 0)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/{self.db}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.proxy", str(self.port), str(self.target_port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == b"ready"

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_proxy() -> Iterator[RedisProxy]:
    proxy = RedisProxy()
    proxy.start()
    yield proxy
    proxy.kill()


def recent(feedback: list, now: datetime) -> list:
    """The ratings moved inside the negative-feedback window, so the window has something to count."""
    return [f.model_copy(update={"created_at": now - timedelta(seconds=i % 600)}) for i, f in enumerate(feedback)]


def stored_ids(db_url: str) -> tuple[list[str], list[str]]:
    engine = create_engine(db_url)
    with engine.connect() as c:
        responses = [str(x) for x in c.scalars(select(Response.event_id))]
        feedback = [str(x) for x in c.scalars(select(Feedback.event_id))]
    engine.dispose()
    return responses, feedback


def latest_ids(feedback: list) -> set[str]:
    latest: dict = {}
    for e in feedback:
        k = (e.response_id, e.user_ref)
        if k not in latest or (e.created_at, str(e.event_id)) > (latest[k].created_at, str(latest[k].event_id)):
            latest[k] = e
    return {str(e.event_id) for e in latest.values()}


def test_a_redis_outage_mid_stream_loses_nothing_and_the_window_recovers(
    pg_url: str, broker: EmbeddedBroker, kafka_settings: KafkaSettings, redis_url: str, redis_proxy: RedisProxy
) -> None:
    settings = settings_for(pg_url, kafka_settings, broker.bootstrap_servers).model_copy(
        update={
            "redis": RedisSettings(url=redis_proxy.url, connect_timeout_s=0.3, socket_timeout_s=0.3),
            "pairs": PairSettings(hot_state_retry_s=0.5),
        }
    )
    now = datetime.now(UTC)
    worlds = [world(seed=20 + i, n_responses=60, n_ratings=300) for i in range(3)]
    phases = [mixed_stream(responses, recent(feedback, now), seed=i) for i, (responses, feedback) in enumerate(worlds)]
    sent_responses: list[ResponseLogged] = []
    sent_ratings: list[FeedbackGiven] = []
    errors_before = REGISTRY.get_sample_value("rlhf_aggregator_redis_errors_total") or 0.0
    consumer = build(settings)

    def deliver(items: list) -> None:
        """Produce ``items`` and poll (the consumer must not raise) until SQL holds every event sent so far."""
        sent_responses.extend(e for _, e in items if isinstance(e, ResponseLogged))
        sent_ratings.extend(e for _, e in items if isinstance(e, FeedbackGiven))
        produce(broker.bootstrap_servers, kafka_settings.topic_prefix, items)
        want = ({str(e.event_id) for e in sent_responses}, latest_ids(sent_ratings))
        got = lambda: tuple(set(ids) for ids in stored_ids(pg_url)) == want  # noqa: E731
        assert wait_for(got, 60, poll=consumer.poll_once), "SQL is missing events"

    try:
        deliver(phases[0])  # Redis up
        redis_proxy.freeze()  # connections hang: only the client's timeouts end the calls
        deliver(phases[1])
        assert (REGISTRY.get_sample_value("rlhf_aggregator_redis_errors_total") or 0.0) > errors_before
        redis_proxy.kill()  # connection refused
        deliver(phases[2])
        redis_proxy.start()  # back, holding a window that missed the ratings of the outage
        time.sleep(settings.pairs.hot_state_retry_s)  # the away spell ends: the next batch reaches Redis
        late = [  # fresh, distinct ratings only: after its rebuild the window counts each once
            FeedbackGiven(
                response_id=r.response_id,
                prompt_hash=r.prompt_hash,
                adapter_id="base",
                user_ref=f"late-{i}",
                rating=1 if i % 3 else -1,
                created_at=now - timedelta(seconds=i),
            )
            for i, r in enumerate(sent_responses[:30])
        ]
        deliver([(Topics.FEEDBACK, f) for f in late])
    finally:
        consumer.close()

    responses, feedback = stored_ids(pg_url)
    assert len(responses) == len(set(responses)) == len({e.event_id for e in sent_responses})  # each once
    assert len(feedback) == len(set(feedback)) == len(latest_ids(sent_ratings))  # each current rating once
    assert stored_pairs(pg_url) == reference_pairs(sent_responses, sent_ratings, PairRules())

    direct = HotState(redis.Redis.from_url(REDIS_URL), make_sessionmaker(make_engine(settings.database)))
    window = direct.rates()  # what the aggregator left in Redis
    current = {str(f.event_id): f for f in sent_ratings if str(f.event_id) in set(feedback)}.values()
    down = sum(f.rating < 0 for f in current) / len(current)
    assert window.keys() == {"base"} and abs(window["base"] - down) < 1e-9
