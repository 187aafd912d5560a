"""The inference API: ``create_app(settings)``. One lifespan builds everything the routes use.

Nothing heavy is imported here at module level: the in-process engine (torch) is imported inside the
lifespan, so importing this module (tests, tools, OpenAPI export) stays light.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from rlhf_loop.metrics import REQUEST_DURATION, REQUESTS
from rlhf_loop.settings import Settings
from services.inference import approval_html
from services.inference.auth_shield import AuthShield
from services.inference.body_limit import BodySizeLimit
from services.inference.errors import install_error_handlers
from services.inference.routes import approval_page, choice, feedback, generate, health, promotions
from services.inference.ui_security import UiSecurityHeaders

if TYPE_CHECKING:
    from services.inference.context import ApiContext


class RequestMetrics:
    """Pure ASGI middleware: latency and status class per route template (bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUEST_DURATION.labels(route, scope["method"]).observe(time.perf_counter() - started)
            REQUESTS.labels(route, f"{status[0] // 100}xx").inc()


def create_app(settings: Settings, context: ApiContext | None = None) -> FastAPI:
    """The API. ``context`` replaces the lifespan's wiring (tests with a prebuilt context)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if context is not None:
            app.state.ctx = context
            yield
            return
        from services.inference.wiring import build_context, close_context

        app.state.ctx = await anyio.to_thread.run_sync(build_context, settings)
        # The model stack leaves millions of long-lived objects; freezing them keeps full GC passes
        # (which would otherwise scan them all and pause requests) cheap. A request allocates container
        # objects by the hundred (a rating batch by the thousand), nearly all freed by reference counting,
        # so the youngest generation is collected far less often than the default and older ones rarer
        # still: fewer passes over objects that are about to die anyway; cyclic garbage waits a little
        # longer, a few MB at most.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        try:
            yield
        finally:
            await close_context(app.state.ctx)

    app = FastAPI(
        title="rlhf-loop inference API",
        version="1",
        lifespan=lifespan,
        description="Generate responses with the served LoRA adapter and collect signed thumbs-up/down feedback; "
        "review, approve, deploy and roll back adapters (approver keys).",
    )
    install_error_handlers(app)
    for module in (generate, feedback, choice, health, promotions, approval_page):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(UiSecurityHeaders, csp=approval_html.CSP)
    app.add_middleware(AuthShield)
    app.add_middleware(RequestMetrics)
    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory: ``uvicorn --factory services.inference.app:app_from_env``."""
    from rlhf_loop.settings import get_settings

    return create_app(get_settings())
