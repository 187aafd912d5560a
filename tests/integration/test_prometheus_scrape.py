"""A real Prometheus server (Debian's ``prometheus``) with the repository's config and rules scrapes a
running API and aggregator while simulated users rate responses: the negative-feedback recording rule
equals the thumbs-down share the users produced, and so does the aggregator's window gauge."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.db import upgrade
from rlhf_loop.settings import KafkaSettings
from rlhf_loop.simulator import Simulator
from tests.support.api import Api, start_api
from tests.support.processes import ServiceProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULE = "adapter:rlhf_negative_feedback:ratio_rate5m"
RUN = uuid.uuid4().hex[:8]


class Prometheus:
    """``prometheus`` on the repository's config, scraping the given targets every second."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: apt-get install prometheus (CI's .ci/run installs it)")
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        config["scrape_configs"] = [
            {**jobs[name], "static_configs": [{"targets": [target]}]} for name, target in targets.items()
        ]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, 30, lambda: (workdir / "prometheus.log").read_text()[-2000:])

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited"
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> dict[str, float]:
        """Instant query -> {'label=value,...' (no __name__): value}."""
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__"): float(r["value"][1])
            for r in body["data"]["result"]
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def wait_until(check: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting: {what()}")


@pytest.fixture
def stack(
    tmp_path: Path,
    pg_url: str,
    broker: EmbeddedBroker,
    kafka_settings: KafkaSettings,
    redis_url: str,
    demo_model_dir: Path,
) -> Iterator[tuple[Api, ServiceProcess, int]]:
    prefix = kafka_settings.topic_prefix
    (tmp_path / "api").mkdir()
    (tmp_path / "prometheus").mkdir()
    api = start_api(
        tmp_path / "api", pg_url, broker.bootstrap_servers, demo_model_dir, redis_url, kafka__topic_prefix=prefix
    )
    upgrade(pg_url)
    port = free_port()
    env = {
        "RLHF_DATABASE__URL": pg_url,
        "RLHF_REDIS__URL": redis_url,
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "RLHF_KAFKA__TOPIC_PREFIX": prefix,
        "RLHF_KAFKA__CONSUMER_GROUP": f"agg-{prefix}",
        "RLHF_KAFKA__MAX_POLL_INTERVAL_MS": "5000",
        "RLHF_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "RLHF_MONITORING__AGGREGATOR_METRICS_PORT": str(port),
        "RLHF_DATA_DIR": str(tmp_path),
    }
    aggregator = ServiceProcess(["aggregate"], env, tmp_path / "aggregator.log").start(
        ready_url=f"http://127.0.0.1:{port}/metrics", timeout_s=60
    )
    yield api, aggregator, port
    aggregator.stop()
    api.process.stop()


def simulated_ratings(api: Api, sim: Simulator, n: int, phase: str) -> list[tuple[str, int]]:
    """``n`` simulated users each get a response to a popular prompt and rate it as their taste says;
    returns (adapter, rating) per accepted rating."""
    rng = random.Random(f"{phase}-{RUN}")
    prompts, users = sim.sample_prompts(n, rng), sim.sample_users(n, rng)

    def one(i: int) -> tuple[str, int]:
        user_ref = f"{users[i].ref}-{phase}-{i}-{RUN}"
        request = {"prompt": prompts[i].text, "user_ref": user_ref, "sampling": {"max_new_tokens": 16, "seed": i}}
        out = httpx.post(f"{api.url}/v1/generate", headers=api.headers, timeout=60, json=request)
        assert out.status_code == 200, out.text
        body = out.json()
        rating = sim.rate(users[i], prompts[i].text, body["response"])
        sent = httpx.post(
            f"{api.url}/v1/feedback",
            headers=api.headers,
            timeout=30,
            json={"feedback_token": body["feedback_token"], "rating": "up" if rating > 0 else "down"},
        )
        assert sent.status_code == 202, sent.text
        return body["adapter_id"], rating

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def down_share(ratings: list[tuple[str, int]], adapter: str) -> float:
    mine = [r for a, r in ratings if a == adapter]
    return sum(r < 0 for r in mine) / len(mine)


def test_negative_feedback_recording_rule_matches_the_simulated_users(stack, tmp_path: Path) -> None:  # noqa: ANN001
    api, aggregator, agg_port = stack
    sim = Simulator(seed=7)
    # Phase 1, before Prometheus: every (adapter, rating) counter exists when its first scrape comes, so
    # the recording rule's rate() sees phase 2 whole and alike on every series.
    first = simulated_ratings(api, sim, 40, "first")
    assert {r for _, r in first} == {1, -1}
    adapters = {a for a, _ in first}
    prom = Prometheus(
        tmp_path / "prometheus",
        {"rlhf-api": api.url.removeprefix("http://"), "rlhf-aggregator": f"127.0.0.1:{agg_port}"},
    )
    try:
        series = 2 * len(adapters)  # up and down per adapter
        wait_until(
            lambda: (
                len(prom.query("rlhf_feedback_events_total")) == series
                and sum(prom.query('up{job=~"rlhf-.*"}').values()) == 2
            ),
            60,
            lambda: f"first scrapes: {prom.query('up')}",
        )
        time.sleep(2)  # a few samples at the phase-1 values

        second = simulated_ratings(api, sim, 80, "second")
        assert {a for a, _ in second} == adapters
        counted = 'sum(rlhf_feedback_events_total{job="rlhf-api"})'
        wait_until(
            lambda: prom.query(counted).get("") == len(first) + len(second),
            90,
            lambda: f"scraped {prom.query(counted)} of {len(first) + len(second)} ratings",
        )

        for adapter in adapters:
            expected = down_share(second, adapter)
            wait_until(
                lambda a=adapter, e=expected: abs(prom.query(RULE).get(f"adapter={a}", -1) - e) < 1e-9,
                45,
                lambda e=expected: f"{RULE} = {prom.query(RULE)}, users produced {e}",
            )
            # The aggregator's window gauge counts both phases (all within its window), from SQL + Redis.
            both = down_share(first + second, adapter)
            gauge = f'rlhf_negative_feedback_rate{{job="rlhf-aggregator",adapter="{adapter}"}}'
            wait_until(
                lambda g=gauge, e=both: abs(sum(prom.query(g).values()) - e) < 1e-9,
                90,
                lambda g=gauge, e=both: f"{prom.query(g)} vs {e}:\n{aggregator.tail()}",
            )
    finally:
        prom.stop()
