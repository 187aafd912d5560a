"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.inference.auth import Principal, bearer_key
from services.inference.context import ApiContext


async def get_context(request: Request) -> ApiContext:
    return request.app.state.ctx


CtxDep = Annotated[ApiContext, Depends(get_context)]


async def require_app_key(ctx: CtxDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """An app (or admin) key: may generate and forward feedback."""
    return await ctx.keys.require(bearer_key(authorization), ("app", "admin"))


async def require_approver_key(ctx: CtxDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """An approver (or admin) key: may approve, reject and roll back adapters."""
    return await ctx.keys.require(bearer_key(authorization), ("approver", "admin"))


AppKey = Annotated[Principal, Depends(require_app_key)]
ApproverKey = Annotated[Principal, Depends(require_approver_key)]
