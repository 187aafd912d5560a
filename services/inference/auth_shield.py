"""Pure ASGI middleware in front of every route: an address that has spent its failure budget
(``api.auth_failure_limit``) gets its 429 here, before routing, body parsing and the exception handlers,
unless the key it sends is a valid one in the cache. A flood of made-up keys then costs the event loop
as little per request as it can, which leaves more of it to the valid keys (``benchmarks.auth_flood``).
Everything else goes on to the routes, which make the full check (services.inference.auth)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from rlhf_loop.metrics import AUTH_REFUSALS

_BODY = b'{"code":"auth_throttled","message":"too many failed key checks from this address"}'


class AuthShield:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = getattr(scope["app"].state, "ctx", None)
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if ctx is not None and authorization is not None:
            retry_after = ctx.keys.failures.spent(_address(scope, ctx.settings.api.trusted_proxy))
            key = authorization.decode("latin-1")[7:].strip()
            if retry_after and not ctx.keys.known_valid(key):
                AUTH_REFUSALS.labels("throttled").inc()
                headers = [(b"content-type", b"application/json"), (b"retry-after", str(retry_after).encode())]
                await send({"type": "http.response.start", "status": 429, "headers": headers})
                await send({"type": "http.response.body", "body": _BODY})
                return
        await self.app(scope, receive, send)


def _address(scope: Scope, trusted_proxy: bool) -> str:
    """As services.inference.forwarded.client_address, on the raw scope."""
    if trusted_proxy:
        forwarded = next((v for k, v in scope["headers"] if k == b"x-forwarded-for"), None)
        if forwarded:
            return forwarded.decode("latin-1").rsplit(",", 1)[-1].strip()
    client = scope.get("client")
    return client[0] if client else ""
