"""An exception in the API's background loops (spool replayer, delivery poller) restarts them: the
restart is counted, /healthz stays truthful, and the spooled events still reach the broker.

The faults are injected into a real server process by tests/support/faults/sitecustomize.py; the
broker outage is a killed TCP proxy in front of Tansu (test_inference_outage.py)."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.settings import DEMO_TOKEN_SECRET
from schemas.events import Topics
from services.inference.tokens import FeedbackClaims, TokenKeys, issue
from tests.conftest import ROOT
from tests.integration.test_inference_outage import Proxy, proxied_broker, wait_spool_empty  # noqa: F401 - fixture
from tests.support.api import start_api
from tests.support.kafka import read_events

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.allow_error_logs]


def restarts(api_url: str) -> dict[str, float]:
    text = httpx.get(f"{api_url}/metrics").text
    return {t: float(v) for t, v in re.findall(r'rlhf_thread_restarts_total\{thread="([\w-]+)"\} ([\d.]+)', text)}


def rate(client: httpx.Client, token: str) -> str:
    r = client.post("/v1/feedback", json={"feedback_token": token, "rating": "down"})
    assert r.status_code == 202, r.text
    return r.json()["event_id"]


def test_replayer_and_poller_faults_restart_the_loops_and_lose_nothing(
    tmp_path: Path,
    pg_url: str,
    demo_model_dir: Path,
    redis_url: str,
    proxied_broker: tuple[EmbeddedBroker, Proxy],  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker, proxy = proxied_broker
    faults = ROOT / "tests" / "support" / "faults"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(faults), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RLHF_TEST_FAULTS", "replayer,poller")
    api = start_api(tmp_path, pg_url, f"127.0.0.1:{proxy.listen}", demo_model_dir, redis_url, api__rate_limit="100000")
    keys, run, exp = TokenKeys("k1", {"k1": DEMO_TOKEN_SECRET}), uuid.uuid4().hex[:8], int(time.time()) + 3600
    toks = [
        issue(keys, FeedbackClaims(f"r-{run}-{i}", "0" * 32, "base", f"shop-app:u-{run}-{i}", exp, app="shop-app"))
        for i in range(150)
    ]
    try:
        with httpx.Client(base_url=api.url, headers=api.headers, timeout=30) as client:
            accepted = [rate(client, t) for t in toks[:50]]  # the poller fails on its 20th poll meanwhile
            deadline = time.monotonic() + 30
            while restarts(api.url).get("kafka-delivery", 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            accepted += [rate(client, t) for t in toks[50:70]]  # acknowledged through the restarted poller
            proxy.kill()  # an outage: the next ratings are spooled, and the replayer's round raises
            accepted += [rate(client, t) for t in toks[70:150]]
            assert httpx.get(f"{api.url}/readyz").json()["spooled_events"] > 0
            while restarts(api.url).get("spool-replayer", 0) < 1 and time.monotonic() < deadline + 30:
                time.sleep(0.1)
            proxy.start()
            wait_spool_empty(api)
            health = httpx.get(f"{api.url}/healthz")
            counted = restarts(api.url)
        on_topic = read_events(broker.bootstrap_servers, Topics.FEEDBACK, expect=150, timeout_s=60)
    finally:
        api.process.stop()
    assert counted["kafka-delivery"] >= 1 and counted["spool-replayer"] >= 1, counted
    assert health.status_code == 200 and all(health.json()["loops"].values()), health.text
    missing = set(accepted) - {str(e.event_id) for e in on_topic}
    assert len(accepted) == 150 and not missing, f"{len(missing)} accepted events never reached the broker"
    log = api.process.log_path.read_text()
    assert "injected fault in the spool replayer" in log and "injected fault in the delivery poller" in log
