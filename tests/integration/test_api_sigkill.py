"""A SIGKILL of the API under load loses no accepted rating: a 202 means broker-acknowledged or spooled.

Black-box: a real API server process, the broker, the real aggregator process and PostgreSQL. The
responses are logged to the topic directly (generation is not what is tested), their feedback
tokens signed with the API's (demo) token key; 16 clients post ratings. Midway the broker stalls
(the TCP proxy every client reaches it through is SIGSTOPped: no acknowledgement comes back), and
once 100 more ratings got their 202 the API is SIGKILLed; the broker resumes, the API restarts on
the same data dir and spool, and every rating that got a 202 is counted in SQL. A 202 on hand-over
loses the ratings the stalled broker never acknowledged; a durable 202 has them in the spool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, func, select

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import encode
from rlhf_loop.db import upgrade
from rlhf_loop.settings import DEMO_TOKEN_SECRET, KafkaSettings
from schemas.events import ResponseLogged, SamplingParams, Topics, prompt_hash
from schemas.tables import Feedback, Response
from services.inference.tokens import FeedbackClaims, TokenKeys, issue
from tests.integration.test_inference_outage import Proxy, proxied_broker  # noqa: F401 - the fixture
from tests.support.api import start_api
from tests.support.processes import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATINGS, CLIENTS, STALL_AT, KILL_AFTER = 600, 16, 200, 300


def responses(n: int) -> list[ResponseLogged]:
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        prompt = f"Where is my package for order #{i % 40}?"
        out.append(
            ResponseLogged(
                response_id=f"r-{run}-{i}",
                request_id=f"q{i}",
                app_id="shop-app",
                user_ref=f"u-{run}-{i}",
                prompt=prompt,
                prompt_hash=prompt_hash(prompt),
                response=f"text {i}",
                adapter_id="base",
                base_model="demo",
                sampling=SamplingParams(),
                prompt_tokens=5,
                completion_tokens=5,
                latency_ms=1.0,
            )
        )
    return out


def wait_for(predicate, timeout_s: float) -> bool:  # noqa: ANN001 - a predicate
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_sigkill_under_load_loses_no_accepted_rating(
    tmp_path: Path,
    pg_url: str,
    proxied_broker: tuple[EmbeddedBroker, Proxy],  # noqa: F811 - the imported fixture
    kafka_settings: KafkaSettings,
    demo_model_dir: Path,
    redis_url: str,
) -> None:
    broker, proxy = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.listen}"
    prefix = kafka_settings.topic_prefix
    logged = responses(RATINGS)
    upgrade(pg_url)
    api = start_api(
        tmp_path, pg_url, bootstrap, demo_model_dir, redis_url,
        kafka__topic_prefix=prefix, api__rate_limit="1000000",
    )  # fmt: skip
    aggregator = ServiceProcess(
        ["aggregate"],
        {
            "RLHF_DATABASE__URL": pg_url,
            "RLHF_REDIS__URL": redis_url,
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "RLHF_KAFKA__TOPIC_PREFIX": prefix,
            "RLHF_KAFKA__CONSUMER_GROUP": f"agg-{prefix}",
            "RLHF_KAFKA__MAX_POLL_INTERVAL_MS": "5000",
            "RLHF_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "RLHF_DATA_DIR": str(tmp_path / "agg"),
        },
        tmp_path / "aggregator.log",
    ).start()
    db = create_engine(pg_url)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for r in logged:
            producer.send(prefix + Topics.RESPONSES, encode(r), key=r.prompt_hash.encode())
        producer.flush()
        with db.connect() as conn:
            count = lambda: conn.execute(select(func.count()).select_from(Response)).scalar_one()  # noqa: E731
            assert wait_for(lambda: count() == RATINGS, 90), f"the aggregator stored {count()} of {RATINGS} responses"

        keys = TokenKeys("k1", {"k1": DEMO_TOKEN_SECRET})
        exp = int(time.time()) + 3600
        toks = [
            issue(keys, FeedbackClaims(r.response_id, r.prompt_hash, "base", r.user_ref, exp, app="shop-app"))
            for r in logged
        ]
        accepted: list[str] = []
        refused, stalled = 0, []
        counter = iter(range(RATINGS))

        async def client(http: httpx.AsyncClient) -> None:
            nonlocal refused
            for i in counter:
                if len(accepted) >= STALL_AT and not stalled:
                    stalled.append(True)
                    os.kill(proxy.proc.pid, signal.SIGSTOP)  # the broker stalls: nothing is acknowledged
                if len(accepted) >= KILL_AFTER and api.process.proc.poll() is None:
                    api.process.kill()  # SIGKILL, mid-stream: other clients' requests are in flight
                try:
                    r = await http.post("/v1/feedback", json={"feedback_token": toks[i], "rating": "up"})
                except httpx.TransportError:
                    refused += 1  # in flight at the kill, never answered: not accepted (it may still land, once)
                    return
                assert r.status_code == 202, r.text
                accepted.append(r.json()["event_id"])

        async def load() -> None:
            async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=30) as http:
                await asyncio.gather(*(client(http) for _ in range(CLIENTS)))

        asyncio.run(load())
        os.kill(proxy.proc.pid, signal.SIGCONT)  # the broker is back
        assert KILL_AFTER <= len(accepted) < RATINGS and refused > 0  # the kill landed midway
        api.process.start(ready_url=f"{api.url}/readyz")  # same data dir and spool
        assert wait_for(lambda: httpx.get(f"{api.url}/readyz").json()["spooled_events"] == 0, 60), "spool not drained"
        with db.connect() as conn:
            stored = lambda: conn.execute(select(Feedback.event_id)).scalars().all()  # noqa: E731
            wait_for(lambda: {str(e) for e in stored()} >= set(accepted), 60)  # the aggregator catches up
            rows = conn.execute(select(Feedback.event_id, Feedback.response_id)).all()
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
        producer.close()
        aggregator.kill()  # what it stored is committed; its graceful stop is not under test (and waits a poll)
        api.process.stop()
        db.dispose()
    in_sql = {str(e) for e, _ in rows}
    lost = set(accepted) - in_sql
    print(f"accepted {len(accepted)}, unanswered {refused}, in SQL {len(rows)}, lost {len(lost)}")
    assert not lost
    assert len(rows) == len(in_sql) == len({r for _, r in rows})  # no rating twice
    assert len(rows) <= len(accepted) + refused  # only ratings that were posted
