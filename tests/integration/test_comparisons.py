"""Comparisons end to end: the real API server, the Kafka-protocol broker, the aggregator, PostgreSQL
and Redis. Side-by-side candidates, regenerations and choices go in over HTTP; the pairs they make
come out in SQL with their weight and source. Refusals store nothing; forgetting a user removes their
comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import decode
from rlhf_loop.bus.consumer import BatchConsumer
from rlhf_loop.settings import DatabaseSettings, KafkaSettings, RedisSettings, Settings
from schemas.events import Topics, model_input, prompt_hash
from schemas.tables import ComparisonChoice as C
from schemas.tables import PreferencePair as P
from schemas.tables import Response as R
from services.inference.tokens import ComparisonClaims, TokenKeys, issue_comparison
from services.inference.user_scope import scoped_user
from tests.conftest import REDIS_URL
from tests.support.api import Api, start_api
from workers.aggregator.main import build

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUN = uuid.uuid4().hex[:8]
PREFIX = f"t{RUN}."


def user(name: str) -> str:
    return f"{name}-{RUN}"


def stored_id(name: str) -> str:
    """How the API stores ``user(name)`` of the test's app (scoped by app)."""
    return scoped_user("shop-app", user(name))


class Loop:
    """The API, one in-process aggregator consuming what it logs, and the database both write to."""

    def __init__(self, api: Api, consumer: BatchConsumer, db: Engine) -> None:
        self.api, self.consumer, self.db = api, consumer, db

    def post(self, path: str, body: dict, **headers: str) -> httpx.Response:
        return httpx.post(f"{self.api.url}{path}", json=body, headers={**self.api.headers, **headers}, timeout=60)

    def generate(self, user_ref: str, prompt: str, **fields: object) -> dict:
        r = self.post("/v1/generate", {"prompt": prompt, "user_ref": user_ref, **fields})
        assert r.status_code == 200, r.text
        return r.json()

    def rows(self, statement) -> list:  # noqa: ANN001 - a select
        with self.db.connect() as c:
            return [tuple(row) for row in c.execute(statement)]

    def until(self, condition: Callable[[], bool], timeout_s: float = 90) -> bool:
        """Run the aggregator until ``condition`` holds or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            self.consumer.poll_once()
        return condition()


@pytest.fixture(scope="module")
def loop(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, broker: EmbeddedBroker, demo_model_dir: Path
) -> Iterator[Loop]:
    api = start_api(
        tmp_path_factory.mktemp("api"),
        module_pg_url,
        broker.bootstrap_servers,
        demo_model_dir,
        REDIS_URL,
        api__rate_limit="1000",
        kafka__topic_prefix=PREFIX,
    )
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=PREFIX,
        consumer_group=f"aggregator-{PREFIX}",
        max_poll_interval_ms=5000,
        session_timeout_ms=6000,
        partitions=3,
    )
    settings = Settings(database=DatabaseSettings(url=module_pg_url), redis=RedisSettings(url=REDIS_URL), kafka=kafka)
    consumer = build(settings)
    db = create_engine(module_pg_url)
    yield Loop(api, consumer, db)
    consumer.close()
    db.dispose()
    api.process.stop()


def pairs_of(loop: Loop, response_ids: list[str]) -> set[tuple[str, str, float, str]]:
    rows = loop.rows(
        select(P.chosen_response_id, P.rejected_response_id, P.weight, P.source).where(
            P.chosen_response_id.in_(response_ids) | P.rejected_response_id.in_(response_ids)
        )
    )
    return {(c, r, round(w, 9), s) for c, r, w, s in rows}


def stored_responses(loop: Loop, **where: str) -> list[tuple]:
    condition = [getattr(R, k) == v for k, v in where.items()]
    return loop.rows(select(R.response_id, R.prompt, R.prompt_hash, R.comparison_id).where(*condition))


def test_side_by_side_then_a_choice_makes_full_weight_pairs_and_a_repeat_replaces_it(loop: Loop) -> None:
    out = loop.generate(user("ann"), "Write a haiku about refunds.", n=3)
    ids = [c["response_id"] for c in out["candidates"]]
    assert len(set(ids)) == 3 and out["response_id"] == ids[0] and out["feedback_token"]
    assert all(c["feedback_token"] and c["response"] for c in out["candidates"])
    first = loop.post("/v1/feedback/choice", {"comparison_token": out["comparison_token"], "chosen": ids[1]})
    assert first.status_code == 202, first.text
    assert loop.until(lambda: pairs_of(loop, ids) == {(ids[1], ids[0], 1.0, "choice"), (ids[1], ids[2], 1.0, "choice")})
    again = loop.post(
        "/v1/feedback/choice", {"comparison_token": out["comparison_token"], "chosen": ids[2], "comment": "funnier"}
    )
    assert again.status_code == 202
    expected = {(ids[2], ids[0], 1.0, "choice"), (ids[2], ids[1], 1.0, "choice")}
    assert loop.until(lambda: pairs_of(loop, ids) == expected)
    assert loop.rows(
        select(C.comparison_id, C.chosen_response_id, C.comment).where(C.user_ref == stored_id("ann"))
    ) == [(out["comparison_id"], ids[2], "funnier")]
    assert {row[3] for row in stored_responses(loop, user_ref=stored_id("ann"))} == {out["comparison_id"]}


def test_a_regeneration_joins_the_group_and_opposite_thumbs_pair_at_full_weight(loop: Loop) -> None:
    context, prompt = "Order #4821 shipped on Monday.", "Where is my order?"
    original = loop.generate(user("ben"), prompt, context=context)
    again = loop.generate(
        user("ben"),
        prompt,
        context=context,
        regenerate_of=original["response_id"],
        comparison_token=original["comparison_token"],
    )
    assert again["comparison_id"] == original["comparison_id"]
    ids = [original["response_id"], again["response_id"]]
    for token, rating in ((original["feedback_token"], "up"), (again["feedback_token"], "down")):
        r = loop.post("/v1/feedback", {"feedback_token": token, "rating": rating})
        assert r.status_code == 202, r.text
    assert loop.until(lambda: pairs_of(loop, ids) == {(ids[0], ids[1], 1.0, "comparison")})
    # the new token covers both: the user may now choose between them, which overrules the thumbs
    choice = loop.post("/v1/feedback/choice", {"comparison_token": again["comparison_token"], "chosen": ids[1]})
    assert choice.status_code == 202, choice.text
    assert loop.until(lambda: pairs_of(loop, ids) == {(ids[1], ids[0], 1.0, "choice")})


def test_the_logged_prompt_and_its_hash_are_what_the_model_saw(loop: Loop, broker: EmbeddedBroker, reader) -> None:  # noqa: ANN001
    context, prompt = "User: my parcel is late\nAssistant: sorry to hear that", "Can I get a refund?"
    sampling = {"seed": 1234, "max_new_tokens": 16}
    with_context = loop.generate(user("cat"), prompt, context=context, sampling=sampling)
    seen = model_input(prompt, context)
    topic = reader(broker.bootstrap_servers, PREFIX + Topics.RESPONSES)

    def logged_events() -> list:
        events = [decode(Topics.RESPONSES, m.value) for m in topic.messages]
        return [e for e in events if e.response_id == with_context["response_id"]]

    topic.read_until(lambda _: len(logged_events()) == 1)
    [logged] = logged_events()
    assert logged.prompt == seen and logged.prompt_hash == prompt_hash(seen) and logged.context == context
    assert logged.schema_version == 2 and logged.comparison_id == with_context["comparison_id"]
    # the same text as a bare prompt with the same seed: the model saw the same thing, so it says the same
    bare = loop.generate(user("cat"), seen, sampling=sampling)
    assert bare["response"] == with_context["response"]
    assert loop.until(lambda: len(stored_responses(loop, user_ref=stored_id("cat"))) == 2)
    stored = stored_responses(loop, user_ref=stored_id("cat"))
    assert {(p, h) for _, p, h, _ in stored} == {(seen, prompt_hash(seen))}  # one prompt group, context included


def test_refused_comparisons_store_nothing(loop: Loop) -> None:
    prompt = "Summarise my last three orders."
    dan = loop.generate(user("dan"), prompt, n=2)
    eve = loop.generate(user("eve"), prompt, n=2)
    token = dan["comparison_token"]
    dan_ids = [c["response_id"] for c in dan["candidates"]]
    eve_ids = [c["response_id"] for c in eve["candidates"]]
    regen = {"prompt": prompt, "user_ref": user("dan"), "regenerate_of": dan_ids[0], "comparison_token": token}
    claims = ComparisonClaims(dan["comparison_id"], prompt_hash(prompt), user("dan"), (*dan_ids, eve_ids[0]), 2**40)
    forged = issue_comparison(TokenKeys("k1", {"k1": "guessed-secret"}), claims)
    prefix, kid, payload, signature = token.split(".")
    altered = f"{prefix}.{kid}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    refused_generate = [
        ({**regen, "user_ref": user("eve")}, 403, "foreign_response"),
        ({**regen, "prompt": "Summarise my last four orders."}, 409, "prompt_mismatch"),
        ({**regen, "context": "Earlier: a different conversation"}, 409, "prompt_mismatch"),
        ({**regen, "regenerate_of": eve_ids[0]}, 404, "unknown_response"),
        ({**regen, "regenerate_of": uuid.uuid4().hex}, 404, "unknown_response"),
        ({**regen, "comparison_token": forged}, 401, "invalid_comparison_token"),
        ({**regen, "comparison_token": altered}, 401, "invalid_comparison_token"),
        ({**regen, "comparison_token": dan["feedback_token"]}, 401, "invalid_comparison_token"),
        ({k: v for k, v in regen.items() if k != "comparison_token"}, 422, "invalid_request"),
        ({"prompt": prompt, "user_ref": user("dan"), "n": 5}, 422, "invalid_request"),
        ({"prompt": prompt, "user_ref": user("dan"), "n": 0}, 422, "invalid_request"),
    ]
    refused_ids = []
    for body, status, code in refused_generate:
        request_id = uuid.uuid4().hex
        refused_ids.append(request_id)
        r = loop.post("/v1/generate", body, **{"X-Request-Id": request_id})
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    elsewhere = loop.generate(user("dan"), "Recommend a book.")["response_id"]  # dan's, another prompt
    refused_choices = [
        ({"comparison_token": token, "chosen": eve_ids[0]}, 422, "not_a_candidate"),  # another user's response
        ({"comparison_token": token, "chosen": dan_ids[0], "candidates": [dan_ids[0], elsewhere]}, 422, None),
        ({"comparison_token": token, "chosen": dan_ids[0], "candidates": [dan_ids[0], eve_ids[1]]}, 422, None),
        ({"comparison_token": forged, "chosen": eve_ids[0]}, 401, "invalid_comparison_token"),
        ({"comparison_token": altered, "chosen": dan_ids[0]}, 401, "invalid_comparison_token"),
        ({"comparison_token": token, "chosen": dan_ids[0], "candidates": [dan_ids[0]]}, 422, "invalid_request"),
    ]
    for body, status, code in refused_choices:
        r = loop.post("/v1/feedback/choice", body)
        assert r.status_code == status and r.json()["code"] == (code or "not_a_candidate"), (body, r.text)
    # a later accepted choice is the marker: once it is stored, everything logged before it on its
    # partition is too (same prompt group, same partition), so what is absent was never logged
    assert loop.post("/v1/feedback/choice", {"comparison_token": token, "chosen": dan_ids[1]}).status_code == 202
    assert loop.until(lambda: len(loop.rows(select(C.id).where(C.user_ref == stored_id("dan")))) == 1)
    assert loop.rows(select(C.chosen_response_id).where(C.user_ref == stored_id("dan"))) == [(dan_ids[1],)]
    assert loop.rows(select(R.response_id).where(R.request_id.in_(refused_ids))) == []
    assert sorted(r[0] for r in stored_responses(loop, user_ref=stored_id("dan"), prompt=prompt)) == sorted(dan_ids)
    assert loop.rows(select(C.id).where(C.user_ref == stored_id("eve"))) == []
    assert pairs_of(loop, eve_ids) == set()


def test_forgetting_a_user_removes_their_comparisons(loop: Loop) -> None:
    keep, gone = user("fay"), user("gus")
    made = {}
    for who in (keep, gone):
        out = loop.generate(who, "Pick a name for my cat.", n=2)
        ids = [c["response_id"] for c in out["candidates"]]
        assert (
            loop.post(
                "/v1/feedback/choice", {"comparison_token": out["comparison_token"], "chosen": ids[0]}
            ).status_code
            == 202
        )
        made[who] = ids
    every = made[keep] + made[gone]
    assert loop.until(lambda: len(pairs_of(loop, every)) == 2)
    env = {**os.environ, "RLHF_DATABASE__URL": loop.api.env["RLHF_DATABASE__URL"]}
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_loop", "users", "forget", gone, "--app", "shop-app"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"forgot {gone}" in out.stdout
    assert pairs_of(loop, every) == {(made[keep][0], made[keep][1], 1.0, "choice")}
    assert loop.rows(select(C.id).where(C.user_ref == stored_id("gus"))) == []
    assert stored_responses(loop, user_ref=stored_id("gus")) == []
    assert len(loop.rows(select(C.id).where(C.user_ref == stored_id("fay")))) == 1
