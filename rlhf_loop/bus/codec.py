"""Bytes <-> events. Decoding dispatches on topic and ``schema_version`` and raises InvalidEvent."""

from __future__ import annotations

import json

from pydantic import ValidationError

from schemas.events import EVENT_TYPES, SCHEMA_VERSIONS, Event

KNOWN_VERSIONS: frozenset[int] = frozenset(SCHEMA_VERSIONS)


class InvalidEvent(ValueError):
    """A message that is not a valid event of a known version; it belongs on the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(event: Event) -> bytes:
    """Compact UTF-8 JSON of the event: ``model_dump_json``'s bytes from the model's serializer directly,
    since the Python wrapper was a large share of the call on the ingest path."""
    return event.__pydantic_serializer__.to_json(event)


def decode(topic: str, value: bytes | None) -> Event:
    """Parse ``value`` as the event type of ``topic``.

    Raises InvalidEvent for an unknown topic, bytes that are not a JSON object, an unknown
    ``schema_version``, or a payload that fails validation.
    """
    event_type = EVENT_TYPES.get(topic)
    if event_type is None:
        raise InvalidEvent(f"unknown topic {topic!r}")
    if value is None:
        raise InvalidEvent("empty message (tombstone)")
    try:  # the valid case in one call: pydantic-core parses the bytes without building a dict first
        event = event_type.model_validate_json(value)
        if "schema_version" in event.model_fields_set:  # a version is required, never defaulted
            return event
    except ValidationError:
        pass  # the steps below name the reason
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidEvent(f"not JSON: {e}") from e
    if not isinstance(raw, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version not in KNOWN_VERSIONS:
        raise InvalidEvent(f"unknown schema_version {version!r} (known: {sorted(KNOWN_VERSIONS)})")
    try:
        return event_type.model_validate(raw)
    except ValidationError as e:
        raise InvalidEvent(f"invalid {event_type.__name__}: {e.error_count()} error(s): {_brief(e)}") from e


def _brief(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
