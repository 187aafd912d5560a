"""HTTP request and response bodies of the public API (/v1). Unknown fields are rejected.

Bounds here are the documented limits of the API; a value outside them is a 422 with a message
naming the field, never a 5xx.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.events import MAX_COMPARISON_RESPONSES, SamplingParams

MAX_PROMPT_CHARS: Final = 4000
MAX_COMMENT_CHARS: Final = 2000
MAX_FEEDBACK_BATCH: Final = 500
MAX_CANDIDATES: Final = 4
"""The most side-by-side candidates one generate call returns (``n``)."""
MAX_TOKEN_CHARS: Final = 4096

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
    n: int = Field(1, ge=1, le=MAX_CANDIDATES)
    """Candidates to generate side by side (each sampled with its own seed: ``seed + i`` when a seed
    is given); 2 or more form a comparison the user can choose in (POST /v1/feedback/choice)."""
    regenerate_of: str | None = Field(None, min_length=1, max_length=64)
    """A response to regenerate: the new candidates join its comparison group. Needs the
    ``comparison_token`` returned with it, the same ``prompt`` and ``context`` (after normalization)
    and the same ``user_ref``."""
    comparison_token: str | None = Field(None, min_length=1, max_length=MAX_TOKEN_CHARS)
    """With ``regenerate_of``: the comparison token returned with that response (or a later one of
    its group)."""

    @model_validator(mode="after")
    def _regenerate_needs_its_token(self) -> GenerateRequest:
        if (self.regenerate_of is None) != (self.comparison_token is None):
            raise ValueError("regenerate_of and comparison_token go together")
        return self


class Candidate(_Body):
    response_id: str
    response: str
    feedback_token: str
    """Rates this candidate (POST /v1/feedback)."""


class GenerateResponse(_Body):
    response_id: str
    """The first candidate's id (with ``n`` = 1, the only one)."""
    response: str
    adapter_id: str
    feedback_token: str
    """Give this to the end user's client; it is the only way to rate this response."""
    comparison_id: str
    """The comparison group of these candidates (a regeneration keeps its original's)."""
    comparison_token: str
    """Signed: the group, its prompt, its user and every response in it so far. Send it back to
    regenerate (``regenerate_of``) or to record the user's choice (POST /v1/feedback/choice)."""
    candidates: list[Candidate]
    """Every candidate of this call, in order; the first is the one the top-level fields describe."""


class FeedbackRequest(_Body):
    """POST /v1/feedback."""

    feedback_token: str = Field(min_length=1, max_length=2048)
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)


class ChoiceRequest(_Body):
    """POST /v1/feedback/choice: the end user's pick among candidates of one comparison."""

    comparison_token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS)
    chosen: str = Field(min_length=1, max_length=64)
    """The response id the user preferred."""
    candidates: list[str] | None = Field(None, min_length=2, max_length=MAX_COMPARISON_RESPONSES)
    """The response ids the user was shown, ``chosen`` among them (default: every response of the
    comparison); each must belong to the comparison."""
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
