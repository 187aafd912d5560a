"""Who gets in, against the real API server (uvicorn, PostgreSQL, Redis, the Kafka-protocol broker): users are
scoped by app (limits, forget), an app's quota of distinct users holds, tokens are bound to their app, admin and
approver keys cannot act as apps, two keys of one owner approve once, expired and revoked keys are refused at
once, and a flood of made-up keys costs no SQL query per key while valid keys keep being served."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import decode
from rlhf_loop.bus.consumer import Record
from rlhf_loop.preferences.pairs import PairRules
from schemas.events import Topics
from schemas.tables import ApiKey, Feedback, PromotionAudit
from schemas.tables import Response as StoredResponse
from services.inference.auth import create_key
from services.inference.user_scope import scoped_user
from tests.conftest import REDIS_URL
from tests.support.adapters import register
from tests.support.api import Api, start_api
from workers.aggregator.handler import AggregatorHandler

pytestmark = pytest.mark.integration
RUN = uuid.uuid4().hex[:8]  # app names are fresh per run: quota and rate-limit windows in Redis outlive a run
PREFIX = f"t{RUN}."
PROMPT = "Where is my order #4821?"
QUOTA, FAILURE_LIMIT, RATE_LIMIT = 3, 10, 4
FLOOD = 600


@dataclass
class Setup:
    api: Api
    sessions: sessionmaker
    keys: dict[str, str]
    """app-a, app-b, app-q (apps), admin, laptop (a second key of ml-team's owner) -> key."""

    def post(self, path: str, key: str, body: dict, **headers: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", **headers}
        return httpx.post(f"{self.api.url}{path}", json=body, headers=headers, timeout=60)

    def generate(self, app: str, user_ref: str, **fields: object) -> httpx.Response:
        body = {"prompt": PROMPT, "user_ref": user_ref, "sampling": {"max_new_tokens": 4}, **fields}
        return self.post("/v1/generate", self.keys[app], body)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.api.url}/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = rf"^{name}{{{want}}} (\S+)$" if labels else rf"^{name} (\S+)$"
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


def app_name(app: str) -> str:
    return f"{app}-{RUN}"


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, broker: EmbeddedBroker, demo_model_dir: Path
) -> Iterator[Setup]:
    api = start_api(
        tmp_path_factory.mktemp("api"),
        module_pg_url,
        broker.bootstrap_servers,
        demo_model_dir,
        REDIS_URL,
        kafka__topic_prefix=PREFIX,
        api__rate_limit=str(RATE_LIMIT),
        api__key_user_quota=str(QUOTA),
        api__auth_failure_limit=str(FAILURE_LIMIT),
        api__trusted_proxy="true",  # so each test can speak from an address of its own (X-Forwarded-For)
        promotion__required_approvals="2",
    )
    engine = create_engine(module_pg_url)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        keys = {app: create_key(session, app_name(app), "app") for app in ("app-a", "app-b", "app-q")}
        keys["admin"] = create_key(session, f"ops-{RUN}", "admin", owner="ops")
        keys["laptop"] = create_key(session, "ml-team-laptop", "approver", owner="ml-team")
    yield Setup(api, sessions, keys)
    engine.dispose()
    api.process.stop()


def _cli(setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> str:
    """``rlhf-loop ARGS`` in this process (a subprocess would spend seconds importing), on the API's database and
    Redis; returns what it printed."""
    from rlhf_loop.cli.main import main
    from rlhf_loop.settings import get_settings

    for name in ("RLHF_DATABASE__URL", "RLHF_REDIS__URL"):
        monkeypatch.setenv(name, setup.api.env[name])
    get_settings.cache_clear()
    capsys.readouterr()
    try:
        assert main(list(args)) == 0
    finally:
        get_settings.cache_clear()
    return capsys.readouterr().out.strip()


def _keys(setup: Setup) -> list[ApiKey]:
    with setup.sessions() as session:
        return list(session.scalars(select(ApiKey)))


def _events(broker: EmbeddedBroker, topic: str, until, reader) -> list:  # noqa: ANN001 - predicate, fixture
    """Every event on ``topic`` (of this module's topics) once ``until(events)`` holds."""
    r = reader(broker.bootstrap_servers, PREFIX + topic)
    events: list = []

    def done(messages: list) -> bool:
        events[:] = [decode(topic, m.value) for m in messages]
        return until(events)

    r.read_until(done)
    return events


def test_two_apps_users_are_distinct_in_limits_and_forget(
    setup: Setup, broker: EmbeddedBroker, reader, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    a, b = (setup.generate(app, "u1").json() for app in ("app-a", "app-b"))
    rate = {"rating": "up"}
    a_codes = [
        setup.post("/v1/feedback", setup.keys["app-a"], {**rate, "feedback_token": a["feedback_token"]})
        for _ in range(RATE_LIMIT + 1)
    ]
    assert [r.status_code for r in a_codes] == [202] * RATE_LIMIT + [429]  # app-a's u1 spent its limit
    b_rated = setup.post("/v1/feedback", setup.keys["app-b"], {**rate, "feedback_token": b["feedback_token"]})
    assert b_rated.status_code == 202  # app-b's u1 is someone else

    ids = {a["response_id"], b["response_id"]}
    responses = _events(broker, Topics.RESPONSES, lambda es: {e.response_id for e in es} >= ids, reader)
    feedback = _events(
        broker, Topics.FEEDBACK, lambda es: len([e for e in es if e.response_id in ids]) == RATE_LIMIT + 1, reader
    )
    feedback = [e for e in feedback if e.response_id in ids]
    a_user, b_user = scoped_user(app_name("app-a"), "u1"), scoped_user(app_name("app-b"), "u1")
    assert {(e.app_id, e.user_ref) for e in responses if e.response_id in ids} == {
        (app_name("app-a"), a_user),
        (app_name("app-b"), b_user),
    }
    assert sorted(e.user_ref for e in feedback) == sorted([a_user] * RATE_LIMIT + [b_user])

    handler = AggregatorHandler(setup.sessions, PairRules())  # the aggregator's store, fed these events
    handler(
        [
            Record(t, 0, i, None, e)
            for t, es in ((Topics.RESPONSES, responses), (Topics.FEEDBACK, feedback))
            for i, e in enumerate(es)
        ]
    )
    out = _cli(setup, monkeypatch, capsys, "users", "forget", "u1", "--app", app_name("app-a"))
    assert f"forgot u1 of {app_name('app-a')}" in out
    with setup.sessions() as s:
        left = set(s.scalars(select(Feedback.user_ref).where(Feedback.user_ref.in_([a_user, b_user]))))
        kept = set(s.scalars(select(StoredResponse.user_ref).where(StoredResponse.response_id.in_(ids))))
    assert left == kept == {b_user}  # app-a's u1 is gone, app-b's u1 untouched


def test_an_app_inventing_users_past_its_quota_is_refused_and_nothing_past_it_is_stored(
    setup: Setup,
    broker: EmbeddedBroker,
    reader,  # noqa: ANN001
) -> None:
    refused_before = setup.metric("rlhf_user_quota_refusals_total")
    admitted = [setup.generate("app-q", f"rater-{i}") for i in range(QUOTA)]
    assert [r.status_code for r in admitted] == [200] * QUOTA
    invented = [setup.generate("app-q", f"invented-{i}") for i in range(5)]
    assert {(r.status_code, r.json()["code"]) for r in invented} == {(429, "user_quota_exceeded")}
    assert all(int(r.headers["Retry-After"]) > 0 for r in invented)
    marker = setup.generate("app-q", "rater-0")  # a user already admitted is still served
    assert marker.status_code == 200
    assert setup.metric("rlhf_user_quota_refusals_total") - refused_before == len(invented)
    marker_id = marker.json()["response_id"]  # one prompt, one partition: what precedes the marker is all there is
    logged = _events(broker, Topics.RESPONSES, lambda es: marker_id in {e.response_id for e in es}, reader)
    users = [e.user_ref for e in logged if e.app_id == app_name("app-q")]
    assert sorted(users) == sorted(scoped_user(app_name("app-q"), f"rater-{i}") for i in [*range(QUOTA), 0])


def test_a_token_used_with_another_apps_key_is_refused(setup: Setup, broker: EmbeddedBroker, reader) -> None:  # noqa: ANN001
    out = setup.generate("app-a", "u2", n=2).json()
    other = setup.keys["app-b"]
    rating = setup.post("/v1/feedback", other, {"feedback_token": out["feedback_token"], "rating": "down"})
    assert (rating.status_code, rating.json()["code"]) == (403, "foreign_feedback_token")
    batch = setup.post(
        "/v1/feedback/batch", other, {"items": [{"feedback_token": out["feedback_token"], "rating": "up"}]}
    )
    assert batch.json()["results"][0]["error"] == "foreign_feedback_token" and batch.json()["accepted"] == 0
    ids = [c["response_id"] for c in out["candidates"]]
    choice = setup.post("/v1/feedback/choice", other, {"comparison_token": out["comparison_token"], "chosen": ids[0]})
    assert (choice.status_code, choice.json()["code"]) == (403, "foreign_comparison_token")
    regen = setup.post(
        "/v1/generate",
        other,
        {"prompt": PROMPT, "user_ref": "u2", "regenerate_of": ids[0], "comparison_token": out["comparison_token"]},
    )
    assert (regen.status_code, regen.json()["code"]) == (403, "foreign_comparison_token")
    # the app that got the token may use it; its rating is the marker after which nothing foreign can hide
    mine = setup.post("/v1/feedback", setup.keys["app-a"], {"feedback_token": out["feedback_token"], "rating": "up"})
    assert mine.status_code == 202
    marker = mine.json()["event_id"]
    feedback = _events(broker, Topics.FEEDBACK, lambda es: marker in {str(e.event_id) for e in es}, reader)
    assert [str(e.event_id) for e in feedback if e.response_id in ids] == [marker]


def test_admin_and_approver_keys_cannot_act_as_apps(setup: Setup) -> None:
    for key in (setup.keys["admin"], setup.api.approver_key):
        generated = setup.post("/v1/generate", key, {"prompt": PROMPT, "user_ref": "u3"})
        rated = setup.post("/v1/feedback", key, {"feedback_token": "k1.x.y", "rating": "up"})
        assert (
            (generated.status_code, generated.json()["code"])
            == (rated.status_code, rated.json()["code"])
            == (403, "forbidden")
        )
    assert (
        httpx.get(
            f"{setup.api.url}/v1/adapters", headers={"Authorization": f"Bearer {setup.keys['admin']}"}
        ).status_code
        == 200
    )


def test_two_keys_of_one_owner_approve_once(setup: Setup, tmp_path: Path) -> None:
    adapter_id = f"ad-{RUN}"
    with setup.sessions.begin() as session:
        register(session, adapter_id, tmp_path, state="awaiting_approval")
    path = f"/v1/promotions/{adapter_id}/approve"
    first = setup.post(path, setup.api.approver_key, {"reason": "gate and samples read well"})
    assert first.status_code == 200 and first.json()["state"] == "awaiting_approval"
    again = setup.post(path, setup.keys["laptop"], {"reason": "me again, from my laptop key"})
    assert again.status_code == 409 and "ml-team already approved" in again.json()["message"]
    with setup.sessions() as session:
        votes = session.scalars(select(PromotionAudit.details).where(PromotionAudit.adapter_id == adapter_id)).all()
    assert [v.get("owner") for v in votes if v.get("vote") == "approve"] == ["ml-team"]


def test_expired_and_revoked_keys_are_refused_at_once(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    expires_at = time.time() + 2
    with setup.sessions.begin() as session:
        when = datetime.fromtimestamp(expires_at, UTC)
        expiring = create_key(session, f"exp-{RUN}", "approver", owner="ml-x", expires_at=when)
        revoked = create_key(session, f"rev-{RUN}", "approver", owner="ml-y")
    url = f"{setup.api.url}/v1/deployment"
    here = {"X-Forwarded-For": "198.51.100.9"}
    for key in (expiring, revoked):
        assert httpx.get(url, headers={"Authorization": f"Bearer {key}", **here}).status_code == 200  # now cached
    key_id = next(k.id for k in _keys(setup) if k.name == f"rev-{RUN}")
    revoked_at = time.monotonic()
    assert _cli(setup, monkeypatch, capsys, "keys", "revoke", str(key_id)) == f"revoked key {key_id}"
    listed = [line.split("\t") for line in _cli(setup, monkeypatch, capsys, "keys", "list").splitlines()]
    row = next(r for r in listed if r[1] == f"rev-{RUN}")
    assert row[0] == str(key_id) and row[2:4] == ["approver", "ml-y"] and row[6] != "-"  # revoked, with its time
    assert next(r for r in listed if r[1] == f"exp-{RUN}")[5] != "-"  # the expiry is listed
    assert all(setup.keys["admin"] not in line for line in map("".join, listed))  # never the key itself
    statuses = []
    while not statuses or statuses[-1] == 200 and len(statuses) < 100:  # the notice lands within milliseconds
        statuses.append(httpx.get(url, headers={"Authorization": f"Bearer {revoked}", **here}).status_code)
        time.sleep(0.01)
    assert statuses[-1] == 401 and time.monotonic() - revoked_at < 30  # not the cache TTL: the notice evicted it
    time.sleep(max(0.0, expires_at - time.time() + 0.1))
    assert httpx.get(url, headers={"Authorization": f"Bearer {expiring}", **here}).status_code == 401


def test_a_flood_of_made_up_keys_costs_no_sql_query_per_key_and_valid_keys_are_served(setup: Setup) -> None:
    url = f"{setup.api.url}/v1/deployment"
    valid = {"Authorization": f"Bearer {setup.api.approver_key}", "X-Forwarded-For": "203.0.113.7"}
    assert httpx.get(url, headers=valid).status_code == 200
    lookups_before = setup.metric("rlhf_api_key_lookups_total", result="unknown") + setup.metric(
        "rlhf_api_key_lookups_total", result="found"
    )
    statuses: dict[int, int] = {}
    served = 0
    with httpx.Client(timeout=30) as client:
        for i in range(FLOOD):
            bogus = "rlk_" + secrets.token_urlsafe(32) if i % 3 else secrets.token_hex(8)  # well-formed, or not
            r = client.get(url, headers={"Authorization": f"Bearer {bogus}", "X-Forwarded-For": "203.0.113.7"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if i % 30 == 0:
                served += client.get(url, headers=valid).status_code == 200
    lookups = (
        setup.metric("rlhf_api_key_lookups_total", result="unknown")
        + setup.metric("rlhf_api_key_lookups_total", result="found")
        - lookups_before
    )
    print(f"{FLOOD} made-up keys: {statuses}, {lookups:.0f} SQL lookups, valid key served {served}/{FLOOD // 30}")
    assert lookups <= FAILURE_LIMIT  # at most the address's failure budget, not one per key
    well_formed = sum(1 for i in range(FLOOD) if i % 3)
    assert served == FLOOD // 30 and set(statuses) == {401, 429} and statuses[429] >= well_formed - FAILURE_LIMIT
    guess = {"Authorization": "Bearer rlk_" + "A" * 43, "X-Forwarded-For": "203.0.113.7"}
    throttled = httpx.get(url, headers=guess)
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    elsewhere = httpx.get(url, headers={"Authorization": "Bearer rlk_" + "A" * 43, "X-Forwarded-For": "192.0.2.1"})
    assert elsewhere.status_code == 401  # another address has its own budget


CSRF_FIELD = re.compile(r"name='csrf' value='([^']+)'")


def _cookie(response: httpx.Response, name: str) -> tuple[str, set[str]]:
    """The value and the attributes (lower-cased) of the cookie ``name`` that ``response`` sets."""
    for header in response.headers.get_list("set-cookie"):
        first, *attributes = [part.strip() for part in header.split(";")]
        if first.startswith(f"{name}="):
            return first.split("=", 1)[1], {a.lower() for a in attributes}
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


def _sign_in(setup: Setup, key: str) -> str:
    """Sign in through the form as a browser would; returns the session cookie's value."""
    form = httpx.get(f"{setup.api.url}/ui/login")
    token, _ = _cookie(form, "__Host-rlhf_login")
    signed_in = httpx.post(
        f"{setup.api.url}/ui/login",
        data={"key": key, "csrf": CSRF_FIELD.search(form.text).group(1)},
        headers={"Origin": setup.api.url, "Cookie": f"__Host-rlhf_login={token}"},
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/adapters", signed_in.text
    return _cookie(signed_in, "__Host-rlhf_session")[0]


def test_the_approval_page_keeps_only_a_session_id_in_its_cookie_and_sends_security_headers(setup: Setup) -> None:
    import hashlib

    import redis

    form = httpx.get(f"{setup.api.url}/ui/login")
    csp = form.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src" not in csp
    assert form.headers["x-frame-options"] == "DENY" and form.headers["x-content-type-options"] == "nosniff"
    assert form.headers["referrer-policy"] == "same-origin" and form.headers["cache-control"] == "no-store"
    _, login_flags = _cookie(form, "__Host-rlhf_login")
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= login_flags

    key = setup.api.approver_key
    session_id = _sign_in(setup, key)
    assert key not in session_id and len(session_id) >= 32
    stored = redis.Redis.from_url(REDIS_URL).get(f"rlhf:ui:session:{hashlib.sha256(session_id.encode()).hexdigest()}")
    assert stored is not None and key.encode() not in stored  # the session keeps the key's hash, not the key
    page = httpx.get(f"{setup.api.url}/ui/adapters", headers={"Cookie": f"__Host-rlhf_session={session_id}"})
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY" and "Adapters" in page.text
    stolen_key_as_cookie = httpx.get(f"{setup.api.url}/ui/adapters", headers={"Cookie": f"__Host-rlhf_session={key}"})
    assert stolen_key_as_cookie.status_code == 303  # the key itself is no session


def test_forged_approval_page_posts_are_refused_and_change_nothing(setup: Setup, tmp_path: Path) -> None:
    adapter_id = f"ad-page-{RUN}"
    with setup.sessions.begin() as session:
        register(session, adapter_id, tmp_path, state="awaiting_approval")
    session_id = _sign_in(setup, setup.api.approver_key)
    cookie = {"Cookie": f"__Host-rlhf_session={session_id}"}
    page = httpx.get(f"{setup.api.url}/ui/adapters/{adapter_id}", headers=cookie)
    csrf = CSRF_FIELD.search(page.text).group(1)
    decision = f"{setup.api.url}/ui/adapters/{adapter_id}/decision"
    ours, evil = {"Origin": setup.api.url}, {"Origin": "https://evil.example"}
    vote = {"action": "approve", "reason": "looks fine"}
    forged = [
        ({**vote}, ours),  # no CSRF token
        ({**vote, "csrf": "x" + csrf[1:]}, ours),  # a wrong one
        ({**vote, "csrf": csrf}, evil),  # the right one from another site
        ({**vote, "csrf": csrf}, {}),  # neither Origin nor Referer
    ]

    def audit_rows() -> int:
        with setup.sessions() as s:
            return len(s.scalars(select(PromotionAudit.id).where(PromotionAudit.adapter_id == adapter_id)).all())

    before, refused_before = audit_rows(), setup.metric("rlhf_ui_refusals_total", reason="csrf")
    for data, origin in forged:
        r = httpx.post(decision, data=data, headers={**cookie, **origin})
        assert r.status_code == 403, (data, origin, r.status_code)
    login_forged = [
        httpx.post(f"{setup.api.url}/ui/login", data={"key": setup.api.approver_key, "csrf": csrf}, headers=ours),
        httpx.post(f"{setup.api.url}/ui/login", data={"key": setup.api.approver_key}, headers=evil),
    ]
    assert [r.status_code for r in login_forged] == [403, 403] and all(
        not r.headers.get_list("set-cookie") for r in login_forged
    )
    assert audit_rows() == before  # nothing was decided
    assert setup.metric("rlhf_ui_refusals_total", reason="csrf") - refused_before == 3  # 2 decisions + 1 sign-in
    honest = httpx.post(decision, data={**vote, "csrf": csrf}, headers={**cookie, **ours})
    assert honest.status_code == 303 and "approved" in honest.headers["location"]
    assert audit_rows() == before + 1  # the genuine form still works

    logout = httpx.post(f"{setup.api.url}/ui/logout", data={"csrf": csrf}, headers={**cookie, **ours})
    assert logout.status_code == 303
    assert httpx.get(f"{setup.api.url}/ui/adapters", headers=cookie).status_code == 303  # the session is gone
