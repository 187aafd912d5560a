"""A small client of the rlhf-loop HTTP API for the CLI's approver commands (``rlhf-loop adapters ...``)."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """The API refused (its code and message) or could not be reached."""


class ApiClient:
    def __init__(self, base_url: str, key: str, timeout_s: float = 30.0) -> None:
        if not key:
            raise ApiError("no API key: pass --key or set RLHF_API_KEY to an approver key")
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s, headers={"Authorization": f"Bearer {key}"}
        )

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> Any:
        """The decoded JSON answer; raises ApiError with the server's code and message on a 4xx/5xx."""
        try:
            response = self._client.request(method, path, json=body, params=params)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach {self._client.base_url}: {e}") from e
        if response.is_error:
            try:
                err = response.json()
                detail = f"{err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                detail = response.text[:500]
            raise ApiError(f"{response.status_code} {detail}")
        return response.json()

    def close(self) -> None:
        self._client.close()
