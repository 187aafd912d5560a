"""Who is asking and over which scheme: the socket's view, or a trusted proxy's headers.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are honoured only with ``api.trusted_proxy`` (anyone can send
them; only a proxy that overwrites them makes them true). Behind such a proxy the client is the last
address it appended, and the scheme the one it saw.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection


def client_address(request: HTTPConnection, trusted_proxy: bool) -> str:
    if trusted_proxy:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else ""


def request_scheme(request: HTTPConnection, trusted_proxy: bool) -> str:
    if trusted_proxy:
        proto = request.headers.get("x-forwarded-proto")
        if proto:
            return proto.split(",", 1)[0].strip().lower()
    return request.url.scheme


def request_origin(request: HTTPConnection, trusted_proxy: bool) -> str:
    """``scheme://host[:port]`` as the browser addressed this server (what its Origin header must equal)."""
    host = request.headers.get("host") or request.url.netloc
    return f"{request_scheme(request, trusted_proxy)}://{host}"
