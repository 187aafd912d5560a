"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from rlhf_loop.metrics import exposition
from services.inference.deps import CtxDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(ctx: CtxDep) -> JSONResponse:
    """Live while every background loop of the event producer is alive and making progress (503 names the
    one that is not): a thread that died or hangs restarts the pod instead of silently holding events."""
    loops = ctx.events.liveness(ctx.settings.api.liveness_stall_s)
    live = all(loops.values())
    return JSONResponse({"status": "ok" if live else "stalled", "loops": loops}, status_code=200 if live else 503)


@router.get("/readyz")
async def readyz(ctx: CtxDep) -> JSONResponse:
    """Ready when the model is loaded, the deployment pointers are applied (the active and canary adapters
    attached) and events can be logged (broker reachable or spool healthy); on the vLLM engine, also when every
    served adapter has a reachable replica, with each replica's missing adapters listed."""
    checks = {
        "model": ctx.adapters is not None,
        "deployment": ctx.adapters is not None and ctx.adapters.deployed,
        "events": ctx.events.healthy(),
    }
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
