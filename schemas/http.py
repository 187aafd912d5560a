"""HTTP request and response bodies of the public API (/v1). Unknown fields are rejected.

Bounds here are the documented limits of the API; a value outside them is a 422 with a message
naming the field, never a 5xx.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import SamplingParams

MAX_PROMPT_CHARS: Final = 4000
MAX_COMMENT_CHARS: Final = 2000
MAX_FEEDBACK_BATCH: Final = 500

UserRef = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerateRequest(_Body):
    """POST /v1/generate."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    context: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    """Optional conversation context placed before the prompt."""
    user_ref: UserRef
    """The app's pseudonymous id of the end user (used for canary routing and rate limits)."""
    sampling: SamplingParams = SamplingParams()


class GenerateResponse(_Body):
    response_id: str
    response: str
    adapter_id: str
    feedback_token: str
    """Give this to the end user's client; it is the only way to rate this response."""


class FeedbackRequest(_Body):
    """POST /v1/feedback."""

    feedback_token: str = Field(min_length=1, max_length=2048)
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)


class FeedbackAccepted(_Body):
    event_id: str
    status: Literal["accepted"] = "accepted"


class FeedbackBatchRequest(_Body):
    """POST /v1/feedback/batch: up to MAX_FEEDBACK_BATCH items, each judged on its own."""

    items: list[FeedbackRequest] = Field(min_length=1, max_length=MAX_FEEDBACK_BATCH)


class FeedbackItemResult(_Body):
    index: int
    status: Literal["accepted", "rejected"]
    event_id: str | None = None
    error: str | None = None
    """The error code when rejected (see ErrorBody.code)."""


class FeedbackBatchResult(_Body):
    accepted: int
    rejected: int
    results: list[FeedbackItemResult]


class ErrorBody(_Body):
    """Every 4xx/5xx body: a stable machine-readable code and a human message."""

    code: str
    message: str


# --- promotion (approver role) --------------------------------------------------------------------
MAX_REASON_CHARS: Final = 2000
AdapterId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class Decision(_Body):
    """An approver's decision; the reason is kept in the audit log."""

    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS)


class AdapterSummary(_Body):
    id: str
    state: str
    base_model: str
    parent_id: str | None
    run_id: str | None
    created_at: str
    gate_passed: bool | None
    """None until the gate has run."""


class AuditEntry(_Body):
    at: str
    from_state: str | None
    to_state: str
    actor: str
    reason: str
    details: dict


class AdapterDetail(_Body):
    adapter: AdapterSummary
    metrics: dict
    """Training metrics (reward model, PPO, evaluation) and, once gated, the gate's verdict under "gate"."""
    lineage: dict
    audit: list[AuditEntry]


class Deployment(_Body):
    active: str | None
    """The adapter every user not in the canary gets (None: the bare base model)."""
    canary: str | None
    canary_share: float


class PromotionResult(_Body):
    adapter_id: str
    state: str
    deployment: Deployment


class RollbackResult(_Body):
    rolled_back: str
    role: Literal["active", "canary"]
    deployment: Deployment
