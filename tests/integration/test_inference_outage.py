"""The broker goes away under load and the API goes away with a full spool: no accepted event is lost.

"The broker" the API sees is a TCP proxy in front of Tansu (Tansu advertises the proxy's port):
SIGKILL of the proxy is an outage for the API while Tansu keeps what it acknowledged, so every
202 can be checked against what is on the topic afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlhf_loop.bus.broker import EmbeddedBroker
from schemas.events import Topics
from tests.conftest import REDIS_URL, ROOT
from tests.support.api import Api, start_api
from tests.support.kafka import read_events
from tests.support.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Proxy:
    def __init__(self, listen: int, target: int) -> None:
        self.listen, self.target = listen, target
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.proxy", str(self.listen), str(self.target)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == b"ready"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, Proxy]]:
    proxy_port = free_port()
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log", advertised_port=proxy_port).start()
    proxy = Proxy(proxy_port, broker.port)
    proxy.start()
    yield broker, proxy
    proxy.kill()
    broker.kill()


def wait_spool_empty(api: Api, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = httpx.get(f"{api.url}/readyz").json()
        if ready["spooled_events"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the API's spool did not drain: {ready}\n{api.process.tail()}")


def tokens(api: Api, n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    bodies = [{"prompt": f"Where is my package for order #{1000 + i}?", "user_ref": f"u{i}-{run}"} for i in range(n)]
    return [httpx.post(f"{api.url}/v1/generate", json=b, headers=api.headers).json()["feedback_token"] for b in bodies]


async def post_stream(api: Api, toks: list[str], total: int, on_progress, concurrency: int = 16) -> list[str]:  # noqa: ANN001
    """POST ``total`` ratings; returns the event ids of the accepted (202) ones."""
    accepted: list[str] = []
    counter = iter(range(total))
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=30) as client:

        async def worker() -> None:
            for i in counter:
                await on_progress(i)
                r = await client.post(
                    "/v1/feedback", json={"feedback_token": toks[i % len(toks)], "rating": "up" if i % 3 else "down"}
                )
                assert r.status_code == 202, r.text  # an outage must never fail a request
                accepted.append(r.json()["event_id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted


def test_broker_outage_during_5000_feedback_posts(
    tmp_path: Path, pg_url: str, demo_model_dir: Path, proxied_broker: tuple[EmbeddedBroker, Proxy]
) -> None:
    broker, proxy = proxied_broker
    api = start_api(tmp_path, pg_url, f"127.0.0.1:{proxy.listen}", demo_model_dir, REDIS_URL, api__rate_limit="1000000")
    try:
        toks = tokens(api, 50)

        async def outage_at(i: int) -> None:
            if i == 1500:
                proxy.kill()  # the broker is gone for the API
            if i == 3500:
                await asyncio.sleep(0)  # let in-flight sends fail first: no ordering assumption here
                proxy.start()

        accepted = asyncio.run(post_stream(api, toks, 5000, outage_at))
        assert len(accepted) == 5000
        wait_spool_empty(api)
        on_topic = read_events(broker.bootstrap_servers, Topics.FEEDBACK, expect=5000, timeout_s=60)
    finally:
        api.process.stop()
    got = {str(e.event_id) for e in on_topic}
    missing = set(accepted) - got
    assert not missing, f"{len(missing)} accepted events never reached Kafka"


def test_api_restart_with_a_full_spool_drains_it(
    tmp_path: Path, pg_url: str, demo_model_dir: Path, proxied_broker: tuple[EmbeddedBroker, Proxy]
) -> None:
    broker, proxy = proxied_broker
    api = start_api(tmp_path, pg_url, f"127.0.0.1:{proxy.listen}", demo_model_dir, REDIS_URL, api__rate_limit="1000000")
    try:
        toks = tokens(api, 10)
        proxy.kill()

        async def nothing(i: int) -> None:
            return None

        accepted = asyncio.run(post_stream(api, toks, 300, nothing))
        api.process.stop()  # graceful: in-flight events are spooled on shutdown
        proxy.start()
        api.process.start(ready_url=f"{api.url}/readyz")
        wait_spool_empty(api)
        on_topic = read_events(broker.bootstrap_servers, Topics.FEEDBACK, expect=300, timeout_s=60)
    finally:
        api.process.stop()
    assert set(accepted) <= {str(e.event_id) for e in on_topic}
