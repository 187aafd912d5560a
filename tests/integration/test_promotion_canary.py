"""Canary and automatic rollback end to end: a real API (canary for half the users), the Kafka-protocol
broker, a real aggregator writing ratings to PostgreSQL, and simulated users rating what they got.
The canary monitor rolls back a canary the users dislike (and the API stops serving it), and
promotes, never rolls back, one they like."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.settings import KafkaSettings, PromotionSettings
from rlhf_loop.simulator import Simulator
from schemas.tables import Adapter, DeploymentPointer, Feedback, PromotionAudit
from services.promotion.actions import Promotions
from services.promotion.canary import Verdict
from tests.conftest import REDIS_URL
from tests.integration.test_aggregator import aggregator_process, wait_for
from tests.support.adapters import register, taught_adapter
from tests.support.api import Api, start_api
from workers.training.model.synthetic import distinct_prompts

pytestmark = pytest.mark.integration
CANARY = PromotionSettings(
    canary_share=0.5, canary_min_samples=60, canary_min_users=40, canary_alpha=0.01, canary_mixture_sd=0.15
)
"""These adapters differ from the base model by tens of points: a wider mixture decides such differences with
fewer ratings (the sequential test's error rate holds for any mixture)."""
RATINGS = 260
"""Simulated users per round of traffic: enough for each arm to pass canary_min_samples and canary_min_users at
a 50% share."""


@dataclass
class World:
    api: Api
    sessions: sessionmaker
    promotions: Promotions
    adapters: dict[str, Path]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, broker: EmbeddedBroker, demo_model_dir: Path
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("canary")
    kafka = KafkaSettings(topic_prefix=f"canary{random.randrange(10**9)}.")
    (root / "api").mkdir()
    api = start_api(
        root / "api",
        module_pg_url,
        broker.bootstrap_servers,
        demo_model_dir,
        REDIS_URL,
        kafka__topic_prefix=kafka.topic_prefix,
        api__rate_limit="100000",
        promotion__canary_share=str(CANARY.canary_share),
        promotion__poll_interval_s="1",
    )
    aggregator = aggregator_process(module_pg_url, kafka, broker.bootstrap_servers, root / "aggregator.log").start()
    prompts = distinct_prompts(Simulator(7), 32, seed=1)
    adapters = {
        name: taught_adapter(demo_model_dir, root / name, answer, prompts)
        for name, answer in (
            ("rude", "Ugh, not my problem. Deal with it."),
            ("polite", "Thanks for reaching out, I am happy to help. Have a nice day!"),
        )
    }
    engine = create_engine(module_pg_url)
    sessions = sessionmaker(engine)
    yield World(api, sessions, Promotions(sessions, CANARY, REDIS_URL), adapters)
    engine.dispose()
    aggregator.stop()
    api.process.stop()


def simulate_users(world: World, n: int, seed: int) -> dict[str, int]:
    """``n`` simulated users each ask one prompt through the API and rate the answer; returns how many
    responses each adapter served."""
    sim = Simulator(7)
    rng = random.Random(seed)
    asks = [(u, p.text) for u, p in zip(sim.sample_users(n, rng), sim.sample_prompts(n, rng), strict=True)]
    headers = world.api.headers

    def one(ask: tuple) -> str:
        user, prompt = ask
        with httpx.Client(base_url=world.api.url, headers=headers, timeout=60) as http:
            body = {"prompt": prompt, "user_ref": f"{user.ref}-{seed}", "sampling": {"max_new_tokens": 32}}
            r = http.post("/v1/generate", json=body)
            assert r.status_code == 200, r.text
            out = r.json()
            rating = "up" if sim.rate(user, prompt, out["response"]) > 0 else "down"
            f = http.post("/v1/feedback", json={"feedback_token": out["feedback_token"], "rating": rating})
            assert f.status_code == 202, f.text
            return out["adapter_id"]

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(one, asks))
    return {a: served.count(a) for a in set(served)}


def _start_canary(world: World, adapter_id: str) -> None:
    with world.sessions.begin() as session:
        register(session, adapter_id, world.adapters[adapter_id.removeprefix("ad-")], state="awaiting_approval")
    r = httpx.post(
        f"{world.api.url}/v1/promotions/{adapter_id}/approve",
        json={"reason": "canary test"},
        headers={"Authorization": f"Bearer {world.api.approver_key}"},
    )
    assert r.status_code == 200 and r.json()["state"] == "canary", r.text
    assert r.json()["deployment"] == {"active": None, "canary": adapter_id, "canary_share": 0.5}


def _stored(world: World, adapter_id: str) -> int:
    with world.sessions() as session:
        return session.scalar(select(func.count()).select_from(Feedback).where(Feedback.adapter_id == adapter_id))


def judge_until_decided(world: World, adapter_id: str, seed: int, rounds: int = 4) -> Verdict:
    """Rounds of RATINGS simulated users, the canary monitor looking after each one as beat does, until it
    rolls the canary back or promotes it; returns that verdict (or the last 'wait')."""
    stored = 0
    for r in range(rounds):
        served = simulate_users(world, RATINGS, seed=seed + r)
        stored += served.get(adapter_id, 0)
        assert wait_for(lambda n=stored: _stored(world, adapter_id) == n, timeout_s=240), (stored, served)
        verdict = world.promotions.watch_canary()
        assert verdict.canary.ratings == stored, verdict
        if verdict.decision != "wait":
            return verdict
    return verdict


def test_a_canary_the_users_dislike_is_rolled_back_automatically(world: World) -> None:
    _start_canary(world, "ad-rude")
    rollbacks_before = m.ROLLBACKS.labels("auto")._value.get()
    decisions_before = m.CANARY_DECISIONS.labels("rollback")._value.get()

    verdict = judge_until_decided(world, "ad-rude", seed=100)

    assert verdict.decision == "rollback", verdict
    assert verdict.canary.rate > verdict.active.rate and verdict.p_value < CANARY.canary_alpha
    assert m.ROLLBACKS.labels("auto")._value.get() == rollbacks_before + 1
    assert m.CANARY_DECISIONS.labels("rollback")._value.get() == decisions_before + 1
    assert m.CANARY_P_VALUE._value.get() == verdict.p_value
    with world.sessions() as session:
        assert session.get(Adapter, "ad-rude").state == "rolled_back"
        assert session.get(DeploymentPointer, "canary") is None
        audit = session.scalars(
            select(PromotionAudit).where(PromotionAudit.adapter_id == "ad-rude").order_by(PromotionAudit.id.desc())
        ).first()
        assert (audit.to_state, audit.actor, audit.details["trigger"]) == ("rolled_back", "canary-monitor", "auto")
        assert "harm p" in audit.reason
        test = audit.details["canary_test"]
        assert test["p_harm"] < CANARY.canary_alpha and test["canary_users"] == verdict.canary.users
        assert test["difference"] == pytest.approx(verdict.difference, abs=1e-6)
    assert wait_for(lambda: simulate_users(world, 24, seed=2).keys() == {"base"}, timeout_s=5, poll=lambda: None)


def test_a_canary_the_users_like_is_promoted_not_rolled_back(world: World) -> None:
    _start_canary(world, "ad-polite")

    verdict = judge_until_decided(world, "ad-polite", seed=200)

    assert verdict.decision == "promote", verdict
    assert verdict.canary.rate < verdict.active.rate and verdict.p_noninferior < CANARY.canary_alpha
    with world.sessions() as session:
        assert session.get(Adapter, "ad-polite").state == "active"
        audit = session.scalars(
            select(PromotionAudit).where(PromotionAudit.adapter_id == "ad-polite").order_by(PromotionAudit.id.desc())
        ).first()
        assert audit.to_state == "active" and audit.details["canary_test"]["p_noninferior"] < CANARY.canary_alpha
        assert session.get(DeploymentPointer, "active").adapter_id == "ad-polite"
        assert session.get(DeploymentPointer, "canary") is None
