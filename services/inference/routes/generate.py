"""POST /v1/generate: ``n`` candidates from the served model, each logged as ResponseLogged.

Every call returns a comparison token: the candidates form (or, with ``regenerate_of``, join) one
comparison group. A regeneration is checked against that signed token alone (same group, user and
prompt), so the hot path reads no SQL; a refused one generates and logs nothing. The user is the app's
(``scoped_user``), and a user new to the app this window must fit its quota (``api.key_user_quota``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Header

from rlhf_loop.generation import GenerationRequest
from schemas.events import ResponseLogged, Topics, model_input, prompt_hash
from schemas.http import Candidate, ErrorBody, GenerateRequest, GenerateResponse
from services.inference.auth import AuthError
from services.inference.comparisons import check_regeneration
from services.inference.deps import AppKey, CtxDep
from services.inference.errors import RateLimited
from services.inference.tokens import ComparisonClaims, FeedbackClaims, issue, issue_comparison, verify_comparison
from services.inference.user_scope import app_id, check_token_app, scoped_user

router = APIRouter(prefix="/v1", tags=["generate"])
ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 404, 409, 413, 422, 429, 503)}
SEEDS = 2**63


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS)
async def generate(
    body: GenerateRequest, ctx: CtxDep, principal: AppKey, x_request_id: Annotated[str | None, Header()] = None
) -> GenerateResponse:
    """Generate ``n`` candidates for ``prompt`` (after ``context``, if given) with the adapter serving this
    user. Each ``feedback_token`` lets the end user rate its candidate (a repeat replaces); the
    ``comparison_token`` lets them regenerate or choose among the group's responses.
    A regeneration of a response outside the token's group is 404, of another user's 403, with
    another prompt or into a full group 409; a bad comparison token 401, an expired one or another app's 403;
    a user new to this app past its quota of distinct users 429 (user_quota_exceeded)."""
    prompt = model_input(body.prompt, body.context)
    group = prompt_hash(prompt)
    app = app_id(principal)
    user = scoped_user(app, body.user_ref)
    earlier: tuple[str, ...] = ()
    comparison_id = uuid.uuid4().hex
    if body.regenerate_of is not None and body.comparison_token is not None:  # the model checks both or neither
        claims = verify_comparison(ctx.token_keys, body.comparison_token)
        check_token_app(claims.app, principal, "comparison")
        check_regeneration(claims, body.regenerate_of, user, group, body.n)
        earlier, comparison_id = claims.response_ids, claims.comparison_id
    quota_retry_s = await ctx.user_quota.admit(app, user)
    if quota_retry_s:
        raise AuthError(429, "user_quota_exceeded", "this app's quota of distinct users is spent", quota_retry_s)
    decision = await ctx.limiter.check("generate", user)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)
    started = time.perf_counter()
    adapter_id = ctx.adapters.route(user)
    base_seed = body.sampling.seed
    seeds = [
        (base_seed + i) % SEEDS if base_seed is not None else uuid.uuid4().int & 0x7FFF_FFFF for i in range(body.n)
    ]
    sampling = body.sampling
    results = await asyncio.gather(
        *(
            ctx.batcher.generate(
                GenerationRequest(
                    prompt=prompt,
                    adapter_id=adapter_id,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_new_tokens=sampling.max_new_tokens,
                    seed=seed,
                )
            )
            for seed in seeds
        )
    )
    latency_ms = (time.perf_counter() - started) * 1000
    request_id = (x_request_id or uuid.uuid4().hex)[:64]
    events = [
        ResponseLogged(
            response_id=uuid.uuid4().hex,
            request_id=request_id,
            app_id=app,
            user_ref=user,
            prompt=prompt,
            prompt_hash=group,
            context=body.context,
            comparison_id=comparison_id,
            response=result.text,
            adapter_id=adapter_id,
            base_model=ctx.base_model,
            sampling=sampling.model_copy(update={"seed": seed}),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_ms=latency_ms,
        )
        for result, seed in zip(results, seeds, strict=True)
    ]
    await ctx.events.send_durably(Topics.RESPONSES, events)  # a feedback token names a logged response
    exp = int(time.time()) + ctx.settings.token.ttl_s
    candidates = [
        Candidate(
            response_id=e.response_id,
            response=e.response,
            feedback_token=issue(ctx.token_keys, FeedbackClaims(e.response_id, group, adapter_id, user, exp, app)),
        )
        for e in events
    ]
    ids = (*earlier, *(e.response_id for e in events))
    comparison = ComparisonClaims(comparison_id, group, user, ids, exp, app)
    first = candidates[0]
    return GenerateResponse(
        response_id=first.response_id,
        response=first.response,
        adapter_id=adapter_id,
        feedback_token=first.feedback_token,
        comparison_id=comparison_id,
        comparison_token=issue_comparison(ctx.token_keys, comparison),
        candidates=candidates,
    )
