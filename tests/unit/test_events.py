"""Event contracts: prompt normalization, validation bounds, JSON Schema files are current."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlhf_loop.schema_export import stale_files
from schemas.events import FeedbackGiven, ResponseLogged, SamplingParams, Topics, normalize_prompt, prompt_hash


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
    event = ResponseLogged(
        response_id="r1",
        request_id="q1",
        app_id="app",
        user_ref="u1",
        prompt="Hi",
        prompt_hash=prompt_hash("Hi"),
        response="Hello",
        adapter_id="base",
        base_model="demo",
        sampling=SamplingParams(temperature=0.7),
        prompt_tokens=2,
        completion_tokens=1,
        latency_ms=3.5,
    )
    assert ResponseLogged.model_validate_json(event.model_dump_json()) == event


def test_topic_names() -> None:
    assert Topics.ALL == ("rlhf.responses.v1", "rlhf.feedback.v1", "rlhf.deadletter.v1")


def test_checked_in_json_schemas_are_current() -> None:
    assert stale_files() == [], "run `rlhf-loop export-schemas` and commit schemas/jsonschema/"
