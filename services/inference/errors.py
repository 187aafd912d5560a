"""The API's error vocabulary mapped to HTTP status in one place. Every error body is ErrorBody."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.http import ErrorBody
from services.inference.auth import AuthError
from services.inference.body_limit import BodyTooLarge
from services.inference.comparisons import ComparisonRefused
from services.inference.engines.batching import BatcherFull, BatcherStopped
from services.inference.engines.vllm import EngineUnavailable, ReplicaRefused
from services.inference.tokens import ComparisonTokenExpired, ComparisonTokenInvalid, TokenExpired, TokenInvalid
from services.promotion.registry import PromotionError


class RateLimited(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(code=code, message=message).model_dump(), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Map every known error to a status and a stable code; nothing known becomes a 5xx."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"http_{exc.status_code}", str(exc.detail), exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "body_too_large", str(exc.detail))

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.retry_after_s:
            headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RedisError)
    async def _redis_down(_: Request, exc: RedisError) -> JSONResponse:  # the approval page's session store
        return error_response(503, "session_store_unavailable", "sessions are unavailable, retry", {"Retry-After": "5"})

    @app.exception_handler(TokenInvalid)
    async def _token_invalid(_: Request, exc: TokenInvalid) -> JSONResponse:
        return error_response(401, "invalid_feedback_token", str(exc))

    @app.exception_handler(TokenExpired)
    async def _token_expired(_: Request, exc: TokenExpired) -> JSONResponse:
        return error_response(403, "expired_feedback_token", str(exc))

    @app.exception_handler(ComparisonTokenInvalid)  # a TokenInvalid: the most specific handler wins
    async def _comparison_invalid(_: Request, exc: ComparisonTokenInvalid) -> JSONResponse:
        return error_response(401, "invalid_comparison_token", str(exc))

    @app.exception_handler(ComparisonTokenExpired)
    async def _comparison_expired(_: Request, exc: ComparisonTokenExpired) -> JSONResponse:
        return error_response(403, "expired_comparison_token", str(exc))

    @app.exception_handler(ComparisonRefused)
    async def _comparison_refused(_: Request, exc: ComparisonRefused) -> JSONResponse:
        return error_response(exc.status, exc.code, str(exc))

    @app.exception_handler(RateLimited)
    async def _limited(_: Request, exc: RateLimited) -> JSONResponse:
        return error_response(429, "rate_limited", str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(BatcherStopped)
    async def _stopping(_: Request, exc: BatcherStopped) -> JSONResponse:
        return error_response(503, "shutting_down", str(exc), {"Retry-After": "1"})

    @app.exception_handler(BatcherFull)
    async def _overloaded(_: Request, exc: BatcherFull) -> JSONResponse:
        return error_response(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(EngineUnavailable)
    async def _no_replica(_: Request, exc: EngineUnavailable) -> JSONResponse:
        return error_response(503, "engine_unavailable", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ReplicaRefused)
    async def _replica_refused(_: Request, exc: ReplicaRefused) -> JSONResponse:
        return error_response(422, "engine_refused", str(exc))

    @app.exception_handler(PromotionError)
    async def _refused(_: Request, exc: PromotionError) -> JSONResponse:
        return error_response(exc.status, exc.code, str(exc))
