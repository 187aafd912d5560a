"""POST /v1/feedback/choice: the end user's pick among the candidates of one comparison, logged as
ChoiceMade. Checked against the signed comparison token alone (no SQL), like a rating against its
feedback token; a repeat by the same user in the same comparison replaces the earlier choice
(downstream, by ``(comparison_id, user_ref)``)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status

from schemas.events import ChoiceMade, Topics
from schemas.http import ChoiceRequest, ErrorBody, FeedbackAccepted
from services.inference.comparisons import choice_candidates
from services.inference.errors import RateLimited
from services.inference.routes.feedback import authorized_body, json_body
from services.inference.tokens import verify_comparison
from services.inference.user_scope import check_token_app

router = APIRouter(prefix="/v1", tags=["feedback"])
ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 413, 422, 429)}


@router.post(
    "/feedback/choice",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackAccepted,
    responses=ERRORS,
    openapi_extra=json_body(ChoiceRequest),
)
async def choice(request: Request) -> FeedbackAccepted:
    """Record which candidate the user preferred. A forged or altered comparison token is 401
    (invalid_comparison_token), an expired one or another app's 403; a chosen or listed response outside the
    comparison 422 (not_a_candidate). Accepted means durably logged."""
    ctx, principal, body = await authorized_body(request, ChoiceRequest)
    claims = verify_comparison(ctx.token_keys, body.comparison_token)
    check_token_app(claims.app, principal, "comparison")
    shown = choice_candidates(claims, body.chosen, body.candidates)
    decision = await ctx.limiter.check("feedback", claims.user_ref)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)
    event = ChoiceMade(
        event_id=uuid.uuid4(),
        comparison_id=claims.comparison_id,
        prompt_hash=claims.prompt_hash,
        user_ref=claims.user_ref,
        chosen_response_id=body.chosen,
        candidate_response_ids=shown,
        comment=body.comment,
    )
    await ctx.events.send_soon(Topics.CHOICES, event)
    return FeedbackAccepted(event_id=str(event.event_id))
