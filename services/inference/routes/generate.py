"""POST /v1/generate: one response from the served model, logged as ResponseLogged."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Header

from rlhf_loop.generation import GenerationRequest
from schemas.events import ResponseLogged, Topics, prompt_hash
from schemas.http import ErrorBody, GenerateRequest, GenerateResponse
from services.inference.deps import AppKey, CtxDep
from services.inference.errors import RateLimited
from services.inference.tokens import FeedbackClaims, issue

router = APIRouter(prefix="/v1", tags=["generate"])
ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 413, 422, 429, 503)}


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS)
async def generate(
    body: GenerateRequest, ctx: CtxDep, principal: AppKey, x_request_id: Annotated[str | None, Header()] = None
) -> GenerateResponse:
    """Generate a response for ``prompt`` (after ``context``, if given) with the adapter serving this
    user. The returned ``feedback_token`` lets the end user rate it once (a repeat replaces)."""
    decision = await ctx.limiter.check("generate", body.user_ref)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)
    started = time.perf_counter()
    adapter_id = ctx.adapters.route(body.user_ref)
    prompt = f"{body.context}\n{body.prompt}" if body.context else body.prompt
    seed = body.sampling.seed if body.sampling.seed is not None else uuid.uuid4().int & 0x7FFF_FFFF
    result = await ctx.batcher.generate(
        GenerationRequest(
            prompt=prompt,
            adapter_id=adapter_id,
            temperature=body.sampling.temperature,
            top_p=body.sampling.top_p,
            max_new_tokens=body.sampling.max_new_tokens,
            seed=seed,
        )
    )
    response_id = uuid.uuid4().hex
    group = prompt_hash(body.prompt)
    ctx.events.send(
        Topics.RESPONSES,
        ResponseLogged(
            response_id=response_id,
            request_id=(x_request_id or uuid.uuid4().hex)[:64],
            app_id=principal.name[:64],
            user_ref=body.user_ref,
            prompt=body.prompt,
            prompt_hash=group,
            response=result.text,
            adapter_id=adapter_id,
            base_model=ctx.base_model,
            sampling=body.sampling.model_copy(update={"seed": seed}),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
        ),
    )
    claims = FeedbackClaims(
        response_id=response_id,
        prompt_hash=group,
        adapter_id=adapter_id,
        user_ref=body.user_ref,
        exp=int(time.time()) + ctx.settings.token.ttl_s,
    )
    return GenerateResponse(
        response_id=response_id,
        response=result.text,
        adapter_id=adapter_id,
        feedback_token=issue(ctx.token_keys, claims),
    )
