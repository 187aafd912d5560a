"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.inference.auth import APP_ROLES, APPROVER_ROLES, Principal, bearer_key
from services.inference.context import ApiContext
from services.inference.forwarded import client_address


async def get_context(request: Request) -> ApiContext:
    return request.app.state.ctx


CtxDep = Annotated[ApiContext, Depends(get_context)]


async def require_app_key(
    request: Request, ctx: CtxDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """An app key: may generate and forward feedback (an admin or approver key may not)."""
    address = client_address(request, ctx.settings.api.trusted_proxy)
    return await ctx.keys.require(bearer_key(authorization), APP_ROLES, address)


async def require_approver_key(
    request: Request, ctx: CtxDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """An approver (or admin) key: may approve, reject and roll back adapters."""
    address = client_address(request, ctx.settings.api.trusted_proxy)
    return await ctx.keys.require(bearer_key(authorization), APPROVER_ROLES, address)


AppKey = Annotated[Principal, Depends(require_app_key)]
ApproverKey = Annotated[Principal, Depends(require_approver_key)]
