"""The approval page's defences: server-side sessions, CSRF tokens, the Origin check, security headers.

- The cookie holds only an opaque random session id (``__Host-`` prefixed: Secure, HttpOnly, SameSite=Strict,
  Path=/, no Domain). The session lives in Redis under a hash of that id, with the key's *hash* (never the
  key) and the session's CSRF token, and expires after ``api.ui_session_ttl_s``. Each request re-checks the
  key through the key cache, so a revoked or expired key ends its sessions.
- Every form carries a CSRF token: the session's, or before sign-in a random one also set in a short-lived
  cookie (double submit). A POST must bring it and an Origin (or, lacking one, a Referer) of this server;
  behind a TLS proxy the scheme is the forwarded one only with ``api.trusted_proxy``.
- Every /ui response gets CSP (no scripts, no framing, forms post only here), X-Frame-Options DENY,
  nosniff, Referrer-Policy same-origin (no-referrer would make the browser send ``Origin: null``) and no-store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhf_loop import metrics as m
from services.inference.forwarded import request_origin

SESSION_COOKIE = "__Host-rlhf_session"
LOGIN_COOKIE = "__Host-rlhf_login"
LOGIN_TTL_S = 600


@dataclass(frozen=True)
class UiSession:
    id: str
    key_digest: str
    """SHA-256 of the approver key (what SQL stores), re-checked on each request."""
    csrf: str


class UiSessions:
    """Approval-page sessions in Redis, keyed by a hash of the cookie's id (a Redis dump yields no cookie)."""

    def __init__(self, client: aioredis.Redis, ttl_s: int, prefix: str = "rlhf:ui:session") -> None:
        self._client, self.ttl_s, self._prefix = client, ttl_s, prefix

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}:{hashlib.sha256(session_id.encode()).hexdigest()}"

    async def create(self, key_digest: str) -> UiSession:
        session = UiSession(secrets.token_urlsafe(32), key_digest, secrets.token_urlsafe(32))
        value = json.dumps({"key": session.key_digest, "csrf": session.csrf})
        await self._client.set(self._key(session.id), value, ex=self.ttl_s)
        return session

    async def get(self, session_id: str | None) -> UiSession | None:
        if not session_id or len(session_id) > 64:
            return None
        raw = await self._client.get(self._key(session_id))
        if raw is None:
            return None
        fields = json.loads(raw)
        return UiSession(session_id, fields["key"], fields["csrf"])

    async def delete(self, session_id: str) -> None:
        await self._client.delete(self._key(session_id))


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, presented: str | None) -> bool:
    return bool(expected) and bool(presented) and hmac.compare_digest(expected.encode(), presented.encode())  # type: ignore[union-attr]


def same_origin(request: HTTPConnection, trusted_proxy: bool) -> bool:
    """The POST comes from a page of this server: its Origin (or Referer, for a browser that sends no Origin)."""
    ours = request_origin(request, trusted_proxy)
    origin = request.headers.get("origin")
    if origin is not None:
        return hmac.compare_digest(origin.encode(), ours.encode())
    referer = request.headers.get("referer", "")
    return referer == ours or referer.startswith(ours + "/")


def refuse(reason: str) -> None:
    """Count a refused form post (the caller answers 403)."""
    m.UI_REFUSALS.labels(reason).inc()


def cookie_options(max_age: int) -> dict:
    """``__Host-`` cookies must be Secure, Path=/ and carry no Domain; browsers also keep Secure cookies set over
    http://localhost, which is how the page is used in development."""
    return {"max_age": max_age, "path": "/", "secure": True, "httponly": True, "samesite": "strict"}


class UiSecurityHeaders:
    """Pure ASGI middleware: the security headers on every response under /ui."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"cache-control", b"no-store"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)
