"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from rlhf_loop.metrics import exposition
from services.inference.deps import CtxDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: CtxDep) -> JSONResponse:
    """Ready when the model is loaded and events can be logged (broker reachable or spool healthy); on the vLLM
    engine, also when every served adapter has a reachable replica, with each replica's missing adapters listed."""
    checks = {"model": ctx.adapters is not None, "events": ctx.events.healthy()}
    served = [a for a in (ctx.adapters.routing.active, ctx.adapters.routing.canary) if a is not None]
    if ctx.replicas is not None:
        checks["replicas"] = ctx.replicas.covers(served)
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "adapter": ctx.adapters.active,
        "spooled_events": ctx.events.spooled(),
    }
    if ctx.replicas is not None:
        body["replicas"] = ctx.replicas.status(served)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus exposition of every rlhf_* metric of this process (or all workers, multiprocess)."""
    body, content_type = exposition()
    return Response(body, media_type=content_type)
