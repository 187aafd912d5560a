"""/v1/adapters (read the registry) and /v1/promotions (approve, reject, promote, roll back): approver keys.

Every action runs in a worker thread (one SQL transaction, then a Redis notice) and answers with the
adapter's new state and the deployment pointers after it. Refused actions: 404 unknown adapter,
409 a transition the registry does not allow (with the allowed ones in the message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import anyio
from fastapi import APIRouter, Depends, Path, Query

from schemas.http import (
    AdapterDetail,
    AdapterId,
    AdapterSummary,
    Decision,
    Deployment,
    ErrorBody,
    PromotionResult,
    RollbackResult,
)
from services.inference import adapter_views as views
from services.inference.auth import Principal
from services.inference.context import ApiContext
from services.inference.deps import ApproverKey, CtxDep
from services.promotion.actions import Promotions
from services.promotion.registry import Actor
from services.promotion.states import State

router = APIRouter(prefix="/v1", tags=["promotion"])
ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 404, 409, 422)}
T = TypeVar("T")
PathId = Annotated[AdapterId, Path(description="Adapter id, e.g. ad-1a2b3c4d5e6f")]


def promotions(ctx: CtxDep) -> Promotions:
    return Promotions(ctx.sessions, ctx.settings.promotion, ctx.settings.redis.url)


PromotionsDep = Annotated[Promotions, Depends(promotions)]


def actor(principal: Principal) -> Actor:
    return Actor(principal.name, principal.key_id, principal.owner)


async def _read(ctx: ApiContext, fn: Callable[..., T], *args: object) -> T:
    def work() -> T:
        with ctx.sessions() as session:
            return fn(session, *args)

    return await anyio.to_thread.run_sync(work)


async def _result(ctx: ApiContext, adapter_id: str, state: str) -> PromotionResult:
    return PromotionResult(adapter_id=adapter_id, state=state, deployment=await _read(ctx, views.deployment))


@router.get("/adapters", response_model=list[AdapterSummary], responses=ERRORS)
async def list_adapters(
    ctx: CtxDep, _: ApproverKey, state: Annotated[State | None, Query(description="Only adapters in this state")] = None
) -> list[AdapterSummary]:
    """The newest adapters first (at most 200)."""
    return await _read(ctx, views.list_adapters, state)


@router.get("/adapters/{adapter_id}", response_model=AdapterDetail, responses=ERRORS)
async def get_adapter(adapter_id: PathId, ctx: CtxDep, _: ApproverKey) -> AdapterDetail:
    """One adapter: training metrics, the gate's verdict, lineage and its audit log."""
    return await _read(ctx, views.detail, adapter_id)


@router.get("/deployment", response_model=Deployment, responses=ERRORS)
async def get_deployment(ctx: CtxDep, _: ApproverKey) -> Deployment:
    """What the API serves: the active adapter and the canary with its share of users."""
    return await _read(ctx, views.deployment)


@router.post("/promotions/{adapter_id}/approve", response_model=PromotionResult, responses=ERRORS)
async def approve(
    adapter_id: PathId, body: Decision, ctx: CtxDep, principal: ApproverKey, service: PromotionsDep
) -> PromotionResult:
    """Approve an adapter awaiting approval. With enough approvers (``promotion.required_approvals``, each
    from a key of a different owner) it deploys: as canary for ``promotion.canary_share`` of users, or to everyone."""
    state = await anyio.to_thread.run_sync(service.approve, adapter_id, actor(principal), body.reason)
    return await _result(ctx, adapter_id, state)


@router.post("/promotions/{adapter_id}/reject", response_model=PromotionResult, responses=ERRORS)
async def reject(
    adapter_id: PathId, body: Decision, ctx: CtxDep, principal: ApproverKey, service: PromotionsDep
) -> PromotionResult:
    """Reject a gated or awaiting adapter for good."""
    state = await anyio.to_thread.run_sync(service.reject, adapter_id, actor(principal), body.reason)
    return await _result(ctx, adapter_id, state)


@router.post("/promotions/promote", response_model=PromotionResult, responses=ERRORS)
async def promote(body: Decision, ctx: CtxDep, principal: ApproverKey, service: PromotionsDep) -> PromotionResult:
    """Make the running canary active for every user now (the canary monitor does this by itself once the
    canary has enough ratings and is not significantly worse)."""
    adapter_id = await anyio.to_thread.run_sync(service.promote, actor(principal), body.reason)
    return await _result(ctx, adapter_id, State.ACTIVE)


@router.post("/promotions/rollback", response_model=RollbackResult, responses=ERRORS)
async def rollback(body: Decision, ctx: CtxDep, principal: ApproverKey, service: PromotionsDep) -> RollbackResult:
    """Undo the newest deployment: withdraw the canary if one runs, else roll the active adapter back to
    the one it replaced (or the base model)."""
    outcome = await anyio.to_thread.run_sync(service.rollback, actor(principal), body.reason)
    return RollbackResult(
        rolled_back=outcome["rolled_back"], role=outcome["role"], deployment=await _read(ctx, views.deployment)
    )
