"""Codec: every event type round-trips; anything that is not a known event version is refused with a reason."""

from __future__ import annotations

import json

import pytest

from rlhf_loop.bus.codec import InvalidEvent, decode, encode
from schemas.events import (
    SCHEMA_VERSION,
    ChoiceMade,
    DeadLetter,
    FeedbackGiven,
    ResponseLogged,
    SamplingParams,
    Topics,
    prompt_hash,
)

FEEDBACK = FeedbackGiven(
    response_id="r1", prompt_hash=prompt_hash("p"), adapter_id="base", user_ref="u1", rating=-1, comment="too long"
)
RESPONSE = ResponseLogged(
    response_id="r1",
    request_id="q1",
    app_id="app",
    user_ref="u1",
    prompt="Où est ma commande ?",
    prompt_hash=prompt_hash("Où est ma commande ?"),
    response="Elle arrive 🚚",
    adapter_id="base",
    base_model="demo",
    sampling=SamplingParams(temperature=0.7, seed=3),
    prompt_tokens=5,
    completion_tokens=4,
    latency_ms=12.5,
)
CHOICE = ChoiceMade(
    comparison_id="c1",
    prompt_hash=prompt_hash("p"),
    user_ref="u1",
    chosen_response_id="r2",
    candidate_response_ids=("r1", "r2"),
)
LETTER = DeadLetter(source_topic=Topics.FEEDBACK, partition=2, offset=41, key=None, reason="not JSON", payload="\ufffd")


@pytest.mark.parametrize(
    ("topic", "event"),
    [(Topics.FEEDBACK, FEEDBACK), (Topics.RESPONSES, RESPONSE), (Topics.CHOICES, CHOICE), (Topics.DEADLETTER, LETTER)],
)
def test_round_trip(topic: str, event: object) -> None:
    data = encode(event)  # type: ignore[arg-type]
    assert isinstance(data, bytes)
    assert data == event.model_dump_json().encode()  # type: ignore[attr-defined]
    assert decode(topic, data) == event
    assert json.loads(data)["schema_version"] == SCHEMA_VERSION == 2


def test_version_1_events_still_decode() -> None:
    assert decode(Topics.FEEDBACK, mutated(schema_version=1)) == FEEDBACK.model_copy(update={"schema_version": 1})


def mutated(**changes: object) -> bytes:
    raw = json.loads(encode(FEEDBACK))
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (None, "tombstone"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"a string"', "expected a JSON object, got str"),
        (mutated(schema_version=3), "unknown schema_version 3"),
        (mutated(schema_version="1"), "unknown schema_version '1'"),
        (mutated(schema_version=None), "unknown schema_version None"),
        (json.dumps({"rating": 1}).encode(), "unknown schema_version None"),
        (mutated(rating=5), "rating"),
        (mutated(rating="up"), "rating"),
        (mutated(event_id="not-a-uuid"), "event_id"),
        (mutated(prompt_hash="XYZ"), "prompt_hash"),
        (mutated(created_at=[2024]), "created_at"),
        (mutated(extra_field=1), "extra_field"),
    ],
)
def test_refuses_what_is_not_a_known_event(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(Topics.FEEDBACK, value)
    assert reason in caught.value.reason
    assert len(caught.value.reason) < 4000  # fits a DeadLetter


def test_a_valid_event_on_the_wrong_topic_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="invalid ResponseLogged"):
        decode(Topics.RESPONSES, encode(FEEDBACK))
    with pytest.raises(InvalidEvent, match="unknown topic"):
        decode("some.other.topic", encode(FEEDBACK))


def test_missing_fields_are_named() -> None:
    raw = json.loads(encode(FEEDBACK))
    del raw["response_id"], raw["user_ref"]
    with pytest.raises(InvalidEvent) as caught:
        decode(Topics.FEEDBACK, json.dumps(raw).encode())
    assert "2 error(s)" in caught.value.reason
    assert "response_id" in caught.value.reason and "user_ref" in caught.value.reason
