"""POST /v1/feedback and /v1/feedback/batch: signed ratings, logged as FeedbackGiven."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, status

from rlhf_loop.metrics import FEEDBACK_EVENTS
from schemas.events import FeedbackGiven, Topics
from schemas.http import ErrorBody, FeedbackAccepted, FeedbackBatchRequest, FeedbackBatchResult, FeedbackItemResult
from schemas.http import FeedbackRequest as Body
from services.inference.context import ApiContext
from services.inference.deps import AppKey, CtxDep
from services.inference.errors import RateLimited
from services.inference.tokens import FeedbackClaims, TokenExpired, TokenInvalid, verify

router = APIRouter(prefix="/v1", tags=["feedback"])
ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 413, 422, 429)}
RATING = {"up": 1, "down": -1}


def _event(body: Body, claims: FeedbackClaims) -> FeedbackGiven:
    return FeedbackGiven(
        response_id=claims.response_id, prompt_hash=claims.prompt_hash, adapter_id=claims.adapter_id,
        user_ref=claims.user_ref, rating=RATING[body.rating], comment=body.comment,
    )  # fmt: skip


def _log(ctx: ApiContext, event: FeedbackGiven) -> None:
    ctx.events.send(Topics.FEEDBACK, event)
    FEEDBACK_EVENTS.labels("up" if event.rating > 0 else "down", event.adapter_id).inc()


@router.post("/feedback", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackAccepted, responses=ERRORS)
async def feedback(body: Body, ctx: CtxDep, _: AppKey) -> FeedbackAccepted:
    """Record one end user's thumbs-up/down on the response the token was issued for.
    Forged or altered tokens get 401, expired ones 403. Accepted means durably logged."""
    claims = verify(ctx.token_keys, body.feedback_token)
    decision = await ctx.limiter.check("feedback", claims.user_ref)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)
    event = _event(body, claims)
    _log(ctx, event)
    return FeedbackAccepted(event_id=str(event.event_id))


@router.post("/feedback/batch", response_model=FeedbackBatchResult, responses=ERRORS)
async def feedback_batch(body: FeedbackBatchRequest, ctx: CtxDep, _: AppKey) -> FeedbackBatchResult:
    """Up to 500 ratings in one call, each judged on its own: the result lists, per item, its event id
    or the reason it was rejected (invalid_feedback_token, expired_feedback_token, rate_limited)."""
    verified: list[tuple[int, FeedbackClaims | str]] = []
    for i, item in enumerate(body.items):
        try:
            verified.append((i, verify(ctx.token_keys, item.feedback_token)))
        except TokenInvalid:
            verified.append((i, "invalid_feedback_token"))
        except TokenExpired:
            verified.append((i, "expired_feedback_token"))
    per_user = Counter(c.user_ref for _, c in verified if isinstance(c, FeedbackClaims))
    decisions = await ctx.limiter.check_many("feedback", per_user)
    allowed = {u: d.allowed for u, d in decisions.items()}
    results = []
    for i, claims in verified:
        if isinstance(claims, str):
            results.append(FeedbackItemResult(index=i, status="rejected", error=claims))
        elif not allowed[claims.user_ref]:
            results.append(FeedbackItemResult(index=i, status="rejected", error="rate_limited"))
        else:
            event = _event(body.items[i], claims)
            _log(ctx, event)
            results.append(FeedbackItemResult(index=i, status="accepted", event_id=str(event.event_id)))
    accepted = sum(r.status == "accepted" for r in results)
    return FeedbackBatchResult(accepted=accepted, rejected=len(results) - accepted, results=results)
