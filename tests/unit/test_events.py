"""Event contracts: prompt normalization, validation bounds, JSON Schema files are current."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlhf_loop.bus.codec import InvalidEvent, decode, encode
from rlhf_loop.schema_export import stale_files
from schemas.events import (
    SCHEMA_VERSION,
    ChoiceMade,
    FeedbackGiven,
    ResponseLogged,
    SamplingParams,
    Topics,
    model_input,
    normalize_prompt,
    prompt_hash,
)


def test_prompt_hash_ignores_case_width_and_whitespace() -> None:
    assert normalize_prompt("  My ORDER\t#12\n never  came ") == "my order #12 never came"
    assert prompt_hash("Ｍy order") == prompt_hash("my   ORDER ")  # full-width M folds under NFKC
    assert prompt_hash("my order") != prompt_hash("my orders")
    assert len(prompt_hash("x")) == 32


def _feedback(**overrides: object) -> FeedbackGiven:
    fields = dict(response_id="r1", prompt_hash=prompt_hash("p"), adapter_id="base", user_ref="u1", rating=1)
    return FeedbackGiven(**{**fields, **overrides})


def test_feedback_rating_is_plus_or_minus_one() -> None:
    assert _feedback(rating=-1).rating == -1
    with pytest.raises(ValidationError):
        _feedback(rating=0)


def test_events_are_immutable_and_reject_unknown_fields() -> None:
    event = _feedback()
    with pytest.raises(ValidationError):
        event.rating = -1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        _feedback(extra_field="x")
    with pytest.raises(ValidationError):
        _feedback(prompt_hash="not-a-hash")


def test_each_event_gets_a_unique_id_and_utc_time() -> None:
    a, b = _feedback(), _feedback()
    assert a.event_id != b.event_id
    assert a.created_at.utcoffset() is not None


def test_response_logged_json_round_trip() -> None:
    event = _logged(sampling=SamplingParams(temperature=0.7))
    assert ResponseLogged.model_validate_json(event.model_dump_json()) == event


def test_topic_names() -> None:
    assert Topics.ALL == (
        "rlhf.responses.v1",
        "rlhf.feedback.v1",
        "rlhf.choices.v1",
        "rlhf.deadletter.v1",
        "rlhf.forgotten.v1",
    )


def test_checked_in_json_schemas_are_current() -> None:
    assert stale_files() == [], "run `rlhf-loop export-schemas` and commit schemas/jsonschema/"


def test_the_logged_prompt_is_what_the_model_saw() -> None:
    assert model_input("Where is it?", "Order #12 shipped Monday.") == "Order #12 shipped Monday.\nWhere is it?"
    assert model_input("Where is it?", None) == model_input("Where is it?", "") == "Where is it?"
    # the context is part of the group: the same question after another conversation is another prompt
    assert prompt_hash(model_input("Where is it?", "Order #12")) != prompt_hash(
        model_input("Where is it?", "Order #13")
    )


def _logged(**overrides: object) -> ResponseLogged:
    fields = dict(
        response_id="r1",
        request_id="q1",
        app_id="app",
        user_ref="u1",
        prompt="Hi",
        prompt_hash=prompt_hash("Hi"),
        response="Hello",
        adapter_id="base",
        base_model="demo",
        sampling=SamplingParams(),
        prompt_tokens=2,
        completion_tokens=1,
        latency_ms=3.5,
    )
    return ResponseLogged(**{**fields, **overrides})


def test_version_2_is_written_and_version_1_still_decodes() -> None:
    current = _logged(prompt="ctx\nHi", prompt_hash=prompt_hash("ctx\nHi"), context="ctx", comparison_id="c1")
    assert current.schema_version == SCHEMA_VERSION == 2
    assert decode(Topics.RESPONSES, encode(current)) == current
    old = encode(_logged()).replace(b'"schema_version":2', b'"schema_version":1')
    old = old.replace(b'"context":null,', b"").replace(b'"comparison_id":null,', b"")
    legacy = decode(Topics.RESPONSES, old)
    assert legacy.schema_version == 1 and legacy.context is None and legacy.comparison_id is None
    with pytest.raises(InvalidEvent, match="unknown schema_version 3"):
        decode(Topics.RESPONSES, old.replace(b'"schema_version":1', b'"schema_version":3'))


def test_a_choice_names_at_least_two_candidates() -> None:
    fields = dict(comparison_id="c1", prompt_hash=prompt_hash("p"), user_ref="u1", chosen_response_id="a")
    choice = ChoiceMade(**fields, candidate_response_ids=("a", "b"))
    assert decode(Topics.CHOICES, encode(choice)) == choice
    with pytest.raises(ValidationError):
        ChoiceMade(**fields, candidate_response_ids=("a",))
