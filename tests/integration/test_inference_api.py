"""The inference API as a real uvicorn server with the Kafka-protocol broker, PostgreSQL and Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.settings import DEMO_TOKEN_SECRET
from schemas.events import Topics
from schemas.http import FeedbackBatchResult
from services.inference.tokens import FeedbackClaims, TokenKeys, issue
from services.inference.user_scope import scoped_user
from tests.conftest import REDIS_URL
from tests.support.api import Api, start_api
from tests.support.kafka import read_events

pytestmark = pytest.mark.integration
PROMPT = "My order #4821 never arrived, can you help?"
RUN = uuid.uuid4().hex[:8]  # user refs are unique per run: rate-limit windows in Redis outlive a run


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, broker: EmbeddedBroker, demo_model_dir: Path
) -> Iterator[Api]:
    server = start_api(
        tmp_path_factory.mktemp("api"),
        module_pg_url,
        broker.bootstrap_servers,
        demo_model_dir,
        REDIS_URL,
        api__rate_limit="30",
        runtime__max_batch_size="1",  # one request a batch and room for two waiting: n=4 overflows the queue
        runtime__max_queued="2",
    )
    yield server
    server.process.stop()


def generate(api: Api, user: str, prompt: str = PROMPT) -> dict:
    r = httpx.post(f"{api.url}/v1/generate", json={"prompt": prompt, "user_ref": user}, headers=api.headers)
    assert r.status_code == 200, r.text
    return r.json()


def rate(api: Api, token: str, rating: str = "up") -> httpx.Response:
    return httpx.post(f"{api.url}/v1/feedback", json={"feedback_token": token, "rating": rating}, headers=api.headers)


def test_generate_then_feedback_reach_kafka_with_matching_ids(api: Api, broker: EmbeddedBroker) -> None:
    out = generate(api, user("alice"), prompt=f"{PROMPT} {time.time_ns()}")
    assert out["response"] and out["adapter_id"] == "base"
    accepted = rate(api, out["feedback_token"], "down")
    assert accepted.status_code == 202
    event_id = accepted.json()["event_id"]

    responses = read_events(
        broker.bootstrap_servers, Topics.RESPONSES, expect=1, where=lambda e: e.response_id == out["response_id"]
    )
    feedback = read_events(
        broker.bootstrap_servers, Topics.FEEDBACK, expect=1, where=lambda e: e.response_id == out["response_id"]
    )
    assert len(responses) == 1 and len(feedback) == 1
    logged, given = responses[0], feedback[0]
    assert (
        logged.response == out["response"]
        and logged.user_ref == scoped_user("shop-app", user("alice"))
        and logged.app_id == "shop-app"
    )
    assert str(given.event_id) == event_id and given.rating == -1
    assert given.prompt_hash == logged.prompt_hash and given.adapter_id == logged.adapter_id == "base"


def test_forged_tampered_and_expired_tokens_are_refused(api: Api) -> None:
    token = generate(api, user("bob"))["feedback_token"]
    kid, payload, signature = token.split(".")
    claims = FeedbackClaims("r-x", "0" * 32, "base", "bob", exp=int(time.time()) + 60)
    forged = issue(TokenKeys("k1", {"k1": "guessed-secret"}), claims)
    tampered = f"{kid}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    expired = issue(TokenKeys("k1", {"k1": DEMO_TOKEN_SECRET}), FeedbackClaims("r-x", "0" * 32, "base", "bob", exp=1))
    assert rate(api, forged).status_code == 401
    assert rate(api, tampered).status_code == 401
    assert rate(api, "not-a-token").status_code == 401
    response = rate(api, expired)
    assert response.status_code == 403 and response.json()["code"] == "expired_feedback_token"
    assert rate(api, token).status_code == 202


def test_rate_limit_per_user(api: Api) -> None:
    token = generate(api, user("carol"))["feedback_token"]
    codes = [rate(api, token).status_code for _ in range(35)]
    assert codes[:30] == [202] * 30 and codes[30:] == [429] * 5  # 30 per user per window
    limited = rate(api, token)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert rate(api, generate(api, user("dave"))["feedback_token"]).status_code == 202  # other users unaffected


def test_bad_input_is_a_clear_4xx(api: Api) -> None:
    def post(path: str, body: dict, headers: dict = api.headers) -> httpx.Response:
        return httpx.post(f"{api.url}{path}", json=body, headers=headers)

    ok = {"prompt": PROMPT, "user_ref": user("x")}
    assert post("/v1/generate", ok, headers={}).status_code == 401
    assert post("/v1/generate", ok, {"Authorization": "Bearer nope"}).status_code == 401
    wrong_role = post("/v1/generate", ok, {"Authorization": f"Bearer {api.approver_key}"})
    assert wrong_role.status_code == 403 and wrong_role.json()["code"] == "forbidden"
    unknown = post("/v1/generate", {"prompt": PROMPT, "user_ref": "x", "temperature": 3})
    assert unknown.status_code == 422 and "temperature" in unknown.json()["message"]
    out_of_bounds = post("/v1/generate", {"prompt": PROMPT, "user_ref": "x", "sampling": {"max_new_tokens": 10_000}})
    assert out_of_bounds.status_code == 422 and "max_new_tokens" in out_of_bounds.json()["message"]
    assert post("/v1/generate", {"prompt": "", "user_ref": "x"}).status_code == 422
    assert post("/v1/feedback", {"feedback_token": "t", "rating": "meh"}).status_code == 422
    huge = httpx.post(f"{api.url}/v1/generate", content=b'{"prompt": "' + b"a" * 2_000_000 + b'"}', headers=api.headers)
    assert huge.status_code == 413 and huge.json()["code"] == "body_too_large"
    not_json = httpx.post(f"{api.url}/v1/feedback", content=b"\xff\xfe", headers=api.headers)
    assert not_json.status_code == 422
    chunked = httpx.post(
        f"{api.url}/v1/feedback/batch", content=iter([b'{"items": [' + b" " * 2_000_000]), headers=api.headers
    )  # no Content-Length: counted as it streams in
    assert chunked.status_code == 413 and chunked.json()["code"] == "body_too_large"


def test_feedback_batch_judges_each_item(api: Api) -> None:
    good = [generate(api, user(f"erin-{i}"))["feedback_token"] for i in range(3)]
    items = [{"feedback_token": t, "rating": "up"} for t in good] + [{"feedback_token": "bad", "rating": "down"}]
    r = httpx.post(f"{api.url}/v1/feedback/batch", json={"items": items}, headers=api.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert FeedbackBatchResult.model_validate(body).model_dump() == body  # the documented shape, field for field
    assert (body["accepted"], body["rejected"]) == (3, 1)
    assert [x["status"] for x in body["results"]] == ["accepted"] * 3 + ["rejected"]
    assert body["results"][3]["error"] == "invalid_feedback_token"
    too_many = httpx.post(f"{api.url}/v1/feedback/batch", json={"items": items * 200}, headers=api.headers)
    assert too_many.status_code == 422


def test_feedback_batch_counts_each_users_limit_and_logs_the_accepted(api: Api, broker: EmbeddedBroker) -> None:
    heavy, light = generate(api, user("frank")), generate(api, user("gina"))
    # frank: 35 ratings against a limit of 30 per window; one call judges the whole batch for him
    items = [{"feedback_token": heavy["feedback_token"], "rating": "down"}] * 35
    items.insert(3, {"feedback_token": light["feedback_token"], "rating": "up", "comment": "thanks"})
    body = httpx.post(f"{api.url}/v1/feedback/batch", json={"items": items}, headers=api.headers).json()
    assert (body["accepted"], body["rejected"]) == (1, 35)
    assert [r["index"] for r in body["results"] if r["status"] == "accepted"] == [3]
    assert {r["error"] for r in body["results"] if r["status"] == "rejected"} == {"rate_limited"}
    [given] = read_events(
        broker.bootstrap_servers, Topics.FEEDBACK, expect=1, where=lambda e: e.response_id == light["response_id"]
    )
    assert str(given.event_id) == body["results"][3]["event_id"] and given.comment == "thanks" and given.rating == 1


def test_the_app_key_is_checked_before_the_body(api: Api) -> None:
    for path in ("/v1/feedback", "/v1/feedback/batch"):
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = httpx.post(f"{api.url}{path}", json={"rating": "meh"}, headers=headers)
            assert r.status_code == 401 and r.json()["code"] in ("missing_api_key", "invalid_api_key"), r.text
        wrong_role = httpx.post(f"{api.url}{path}", json={}, headers={"Authorization": f"Bearer {api.approver_key}"})
        assert wrong_role.status_code == 403
    invalid = httpx.post(f"{api.url}/v1/feedback", json={"feedback_token": "t", "rating": "meh"}, headers=api.headers)
    assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_request"
    assert invalid.json()["message"].startswith("rating:"), invalid.text
    empty = httpx.post(f"{api.url}/v1/feedback", headers=api.headers)
    assert empty.status_code == 422 and empty.json()["code"] == "invalid_request"


def test_metrics_are_exported(api: Api) -> None:
    text = httpx.get(f"{api.url}/metrics").text
    for name in (
        "rlhf_request_duration_seconds_bucket",
        "rlhf_feedback_events_total",
        "rlhf_generation_batch_size",
        "rlhf_generated_tokens_total",
        "rlhf_spool_depth_events",
        "rlhf_produce_errors_total",
    ):
        assert name in text, name
    assert 'rlhf_feedback_events_total{adapter="base",rating="up"}' in text


def test_a_full_generation_queue_sheds_load_with_503_and_retry_after(api: Api) -> None:
    def shed() -> float:
        text = httpx.get(f"{api.url}/metrics").text
        return float(text.split("\nrlhf_generation_shed_total ")[1].split()[0])

    before = shed()
    body = {"prompt": PROMPT, "user_ref": user("crowd"), "n": 4}
    r = httpx.post(f"{api.url}/v1/generate", json=body, headers=api.headers, timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "overloaded" and int(r.headers["Retry-After"]) >= 1
    assert shed() >= before + 1
    generate(api, user("after-crowd"))  # the queue drained: served again
