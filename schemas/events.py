"""Kafka event contracts: immutable, versioned, JSON. No I/O here.

Topics are keyed by ``prompt_hash`` so every event about one prompt group lands on one partition.
A consumer accepts the ``schema_version`` values it knows and dead-letters the others.

Version 2 (this one) logs the prompt the model saw: ``ResponseLogged.prompt`` is the context and the
prompt as generation got them (``model_input``), and ``prompt_hash`` hashes that; ``context`` keeps the
context part on its own, ``comparison_id`` names the response's comparison group, and the choices
topic is new. Version 1 events still decode: their ``prompt`` is the prompt without its context.

``rlhf.forgotten.v1`` (UserForgotten, keyed by ``user_ref``) is the tombstone of a forgotten user: a consumer
replaying the other topics skips that user's events.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Final = 2
SCHEMA_VERSIONS: Final = (1, 2)
"""Every version a consumer accepts (rlhf_loop.bus.codec)."""
MAX_COMPARISON_RESPONSES: Final = 16
"""Responses one comparison group may hold (a side-by-side call and its regenerations)."""


class Topics:
    """Every topic name, in one place."""

    RESPONSES: Final = "rlhf.responses.v1"
    FEEDBACK: Final = "rlhf.feedback.v1"
    CHOICES: Final = "rlhf.choices.v1"
    DEADLETTER: Final = "rlhf.deadletter.v1"
    FORGOTTEN: Final = "rlhf.forgotten.v1"
    ALL: Final = (RESPONSES, FEEDBACK, CHOICES, DEADLETTER, FORGOTTEN)


_WS = re.compile(r"\s+")


def normalize_prompt(prompt: str) -> str:
    """The documented normalization: Unicode NFKC, case-folded, whitespace runs collapsed, trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", prompt).casefold()).strip()


def model_input(prompt: str, context: str | None) -> str:
    """The text generation gets: the context, a newline, then the prompt (just the prompt without
    context). This is the prompt that is logged, hashed and grouped."""
    return f"{context}\n{prompt}" if context else prompt


def prompt_hash(prompt: str) -> str:
    """Hex SHA-256 (first 32 chars) of the normalized prompt: the prompt-group key and Kafka key."""
    return hashlib.sha256(normalize_prompt(prompt).encode()).hexdigest()[:32]


def utcnow() -> datetime:
    return datetime.now(UTC)


Id = Annotated[str, Field(min_length=1, max_length=64)]
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class Event(BaseModel):
    """Common envelope of every event: a unique id (the idempotency key), a time and a version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    created_at: datetime = Field(default_factory=utcnow)
    schema_version: Literal[1, 2] = SCHEMA_VERSION


class SamplingParams(BaseModel):
    """The sampling parameters a response was generated with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=512)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    """Fixes the sample; absent means a fresh random one."""


class ResponseLogged(Event):
    """A response the inference API returned (topic ``rlhf.responses.v1``)."""

    response_id: Id
    request_id: Id
    app_id: Id
    user_ref: Id
    """Pseudonymous user reference chosen by the app; never a real identity."""
    prompt: str = Field(max_length=32_000)
    """What the model saw: ``model_input(prompt, context)`` (version 1: the prompt without its context)."""
    prompt_hash: Hash
    """``prompt_hash(prompt)``: the prompt group, context included."""
    context: str | None = Field(None, max_length=16_000)
    """The context part of ``prompt``, as the app sent it (None: no context, or a version 1 event)."""
    comparison_id: Id | None = None
    """The comparison group: responses of one side-by-side call and its regenerations share it
    (None only in version 1 events)."""
    response: str = Field(max_length=64_000)
    adapter_id: Id
    base_model: str = Field(max_length=512)
    sampling: SamplingParams
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_ms: float = Field(ge=0)


class FeedbackGiven(Event):
    """One user's thumbs-up (+1) or thumbs-down (-1) on one response (topic ``rlhf.feedback.v1``)."""

    response_id: Id
    prompt_hash: Hash
    adapter_id: Id
    user_ref: Id
    rating: Literal[1, -1]
    comment: str | None = Field(None, max_length=2000)


class ChoiceMade(Event):
    """One user's pick among the candidates of a comparison (topic ``rlhf.choices.v1``). A later
    choice by the same user in the same comparison replaces an earlier one."""

    comparison_id: Id
    prompt_hash: Hash
    user_ref: Id
    chosen_response_id: Id
    candidate_response_ids: tuple[Id, ...] = Field(min_length=2, max_length=MAX_COMPARISON_RESPONSES)
    """Every response the user chose among, ``chosen_response_id`` included."""
    comment: str | None = Field(None, max_length=2000)


class DeadLetter(Event):
    """A message a consumer could not decode or validate (topic ``rlhf.deadletter.v1``)."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    reason: str = Field(max_length=4000)
    payload: str
    """The original bytes, decoded as UTF-8 with replacement characters."""


class UserForgotten(Event):
    """A user's data was deleted (``rlhf-loop users forget``), topic ``rlhf.forgotten.v1``: their responses,
    ratings and choices on the other topics are to be skipped by every consumer, also on a replay from the
    start."""

    user_ref: Id


EVENT_TYPES: Final[dict[str, type[Event]]] = {
    Topics.RESPONSES: ResponseLogged,
    Topics.FEEDBACK: FeedbackGiven,
    Topics.CHOICES: ChoiceMade,
    Topics.DEADLETTER: DeadLetter,
    Topics.FORGOTTEN: UserForgotten,
}
