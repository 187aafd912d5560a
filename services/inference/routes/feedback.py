"""POST /v1/feedback and /v1/feedback/batch: signed ratings, logged as FeedbackGiven.

These are the API's ingest path (``benchmarks.ingest``), so they keep per-request overhead low:
- The app key is checked by code that reads the header itself: FastAPI's dependency solver for the
  ``AppKey``/``CtxDep`` pair costs more than the rating's own work.
- Both routes validate their body with pydantic's own JSON parser after the key check (the order
  the dependencies had), cheaper than a FastAPI body parameter per request and per batch item.
  Their OpenAPI entries are written out here.
- A batch is one unit: one key check, one rate-limit round trip for all of its users, one
  validation call for its events and one hand-over of them to the producer. Single ratings get the
  same amortisation from micro-batching: their rate-limit checks share a Redis round trip, and the
  events of one event-loop turn are handed to the producer together (``send_soon``).
- Accepted means durable: both routes answer only once their events are acknowledged by the broker
  (acks=all) or committed to the spool (docs/bus.md gives the cost).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from datetime import datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, TypeAdapter, ValidationError

from rlhf_loop.metrics import AUTH_REFUSALS, FEEDBACK_EVENTS
from schemas.events import FeedbackGiven, Topics, utcnow
from schemas.http import ErrorBody, FeedbackAccepted, FeedbackBatchRequest, FeedbackBatchResult
from schemas.http import FeedbackRequest as Body
from services.inference.auth import APP_ROLES, Principal, bearer_key
from services.inference.context import ApiContext
from services.inference.errors import RateLimited
from services.inference.forwarded import client_address
from services.inference.tokens import FeedbackClaims, TokenExpired, TokenInvalid, verify
from services.inference.user_scope import app_id, check_token_app

router = APIRouter(prefix="/v1", tags=["feedback"])
ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 413, 422, 429)}
RATING = {"up": 1, "down": -1}
M = TypeVar("M", bound=BaseModel)
_ACCEPTED = '{"index":%d,"status":"accepted","event_id":"%s","error":null}'
_REJECTED = '{"index":%d,"status":"rejected","event_id":null,"error":"%s"}'
AUTH_HEADER = {
    "parameters": [
        {
            "name": "authorization",
            "in": "header",
            "required": False,
            "description": "Bearer <app key>",
            "schema": {"type": "string"},
        }
    ]
}
"""The header these routes read themselves, documented as the other /v1 routes document it."""


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI entry of a body a route parses itself: the header plus the model's schema, its
    ``$defs`` written in place (the document has no ``$defs`` for a ``$ref`` to point to)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            return inline(defs[ref.removeprefix("#/$defs/")]) if ref else {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    content = {"application/json": {"schema": inline(schema)}}
    return {**AUTH_HEADER, "requestBody": {"required": True, "content": content}}


RATING_BODY, BATCH_BODY = json_body(Body), json_body(FeedbackBatchRequest)


async def _app_key_context(request: Request) -> tuple[ApiContext, Principal]:
    """The API context and the app once the request's app key checked out; raises AuthError (401/403/429)."""
    ctx: ApiContext = request.app.state.ctx
    address = client_address(request, ctx.settings.api.trusted_proxy)
    return ctx, await ctx.keys.require(bearer_key(request.headers.get("authorization")), APP_ROLES, address)


async def authorized_body(request: Request, model: type[M]) -> tuple[ApiContext, Principal, M]:
    """The context, the app and the validated body of an app-key request; AuthError (401/403) before any
    parsing, then RequestValidationError (422, naming the field) for a body that is not a ``model``."""
    ctx, principal = await _app_key_context(request)
    try:
        return ctx, principal, model.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from e


_counters: dict[tuple[int, str], PromCounter] = {}  # (rating, adapter) -> FEEDBACK_EVENTS child
_EVENTS = TypeAdapter(list[FeedbackGiven])  # a batch's events validated in one call


def _count(rating: int, adapter_id: str, n: int = 1) -> None:
    child = _counters.get((rating, adapter_id))
    if child is None:  # adapters are few (registry ids), so this stays small
        child = _counters[rating, adapter_id] = FEEDBACK_EVENTS.labels("up" if rating > 0 else "down", adapter_id)
    child.inc(n)


def _event_fields(body: Body, claims: FeedbackClaims, event_id: uuid.UUID | str, now: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "created_at": now,
        "response_id": claims.response_id,
        "prompt_hash": claims.prompt_hash,
        "adapter_id": claims.adapter_id,
        "user_ref": claims.user_ref,
        "rating": RATING[body.rating],
        "comment": body.comment,
    }


def _event_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as canonical strings, from one read of the OS generator (a third
    of what building ``uuid.UUID`` objects and printing them costs)."""
    raw = bytearray(os.urandom(16 * n))
    for i in range(0, 16 * n, 16):
        raw[i + 6] = raw[i + 6] & 0x0F | 0x40  # version 4
        raw[i + 8] = raw[i + 8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return [
        f"{h[j : j + 8]}-{h[j + 8 : j + 12]}-{h[j + 12 : j + 16]}-{h[j + 16 : j + 20]}-{h[j + 20 : j + 32]}"
        for j in range(0, 32 * n, 32)
    ]


@router.post(
    "/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackAccepted,
    responses=ERRORS,
    openapi_extra=RATING_BODY,
)
async def feedback(request: Request) -> FeedbackAccepted:
    """Record one end user's thumbs-up/down on the response the token was issued for.
    Forged or altered tokens get 401, expired ones or another app's 403. Accepted means durably logged."""
    ctx, principal, body = await authorized_body(request, Body)
    claims = verify(ctx.token_keys, body.feedback_token)
    check_token_app(claims.app, principal)
    decision = await ctx.limiter.check("feedback", claims.user_ref)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s)
    event = FeedbackGiven.model_validate(_event_fields(body, claims, uuid.uuid4(), utcnow()))
    await ctx.events.send_soon(Topics.FEEDBACK, event)
    _count(event.rating, event.adapter_id)
    return FeedbackAccepted(event_id=str(event.event_id))


@router.post("/feedback/batch", response_model=FeedbackBatchResult, responses=ERRORS, openapi_extra=BATCH_BODY)
async def feedback_batch(request: Request) -> Response:
    """Up to 500 ratings in one call, each judged on its own: the result lists, per item, its event id
    or the reason it was rejected (invalid_feedback_token, expired_feedback_token, foreign_feedback_token,
    rate_limited). Accepted items are logged in item order; the users' rate limits are counted in one round trip."""
    ctx, principal, body = await authorized_body(request, FeedbackBatchRequest)
    app = app_id(principal)
    verified: list[FeedbackClaims | str] = []
    for item in body.items:
        try:
            claims = verify(ctx.token_keys, item.feedback_token)
            verified.append(claims if claims.app == app else "foreign_feedback_token")
        except TokenInvalid:
            verified.append("invalid_feedback_token")
        except TokenExpired:
            verified.append("expired_feedback_token")
    foreign = verified.count("foreign_feedback_token")
    if foreign:
        AUTH_REFUSALS.labels("foreign_token").inc(foreign)
    per_user = Counter(c.user_ref for c in verified if isinstance(c, FeedbackClaims))
    decisions = await ctx.limiter.check_many("feedback", per_user)
    allowed = {u for u, d in decisions.items() if d.allowed}
    accepted = [(i, c) for i, c in enumerate(verified) if isinstance(c, FeedbackClaims) and c.user_ref in allowed]
    ids, now = _event_ids(len(accepted)), utcnow()
    fields = [_event_fields(body.items[i], c, event_id, now) for (i, c), event_id in zip(accepted, ids, strict=True)]
    events = _EVENTS.validate_python(fields)
    event_ids = {i: event_id for (i, _), event_id in zip(accepted, ids, strict=True)}
    if events:
        await ctx.events.send_durably(Topics.FEEDBACK, events)
        for (rating, adapter_id), n in Counter((e.rating, e.adapter_id) for e in events).items():
            _count(rating, adapter_id, n)
    # a FeedbackBatchResult, written out directly from templates (ids and error codes are our own
    # JSON-safe strings): per item, models or dicts and json.dumps cost a quarter of the item's token
    # check. The API tests check the body against the model.
    results = ",".join(
        _ACCEPTED % (i, event_ids[i])
        if i in event_ids
        else _REJECTED % (i, c if isinstance(c, str) else "rate_limited")
        for i, c in enumerate(verified)
    )
    rejected = len(verified) - len(events)
    return Response(
        f'{{"accepted":{len(events)},"rejected":{rejected},"results":[{results}]}}', media_type="application/json"
    )
