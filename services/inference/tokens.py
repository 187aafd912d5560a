"""Signed feedback tokens: pure functions, no I/O.

A token binds one response to one user of one app: ``response_id``, ``prompt_hash``, ``adapter_id``,
``user_ref``, an expiry and the ``app`` whose key got it, signed with HMAC-SHA256 under the key named by
its key id, so keys can rotate (sign with the current key, verify with current and previous ones). Format:
``<kid>.<payload, base64url JSON>.<signature, base64url>``. Verification compares in constant time.
Each signature has one spelling (unpadded base64url of the 32-byte HMAC): verification compares the
token's signature text with that spelling of the expected HMAC, so no other spelling is accepted.

A comparison token binds one comparison group to one user: ``comparison_id``, ``prompt_hash``,
``user_ref``, every ``response_id`` in the group and an expiry, signed the same way under the same
keys. Its format, ``c.<kid>.<payload>.<signature>`` (the signature covers ``c.<kid>.<payload>``),
cannot be mistaken for a feedback token's, so neither kind verifies as the other.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from pydantic_core import from_json


class TokenInvalid(ValueError):
    """Malformed, forged or altered token, or an unknown key id (HTTP 401)."""


class TokenExpired(ValueError):
    """A genuine token past its expiry (HTTP 403)."""


class ComparisonTokenInvalid(TokenInvalid):
    """A malformed, forged or altered comparison token (HTTP 401)."""


class ComparisonTokenExpired(TokenExpired):
    """A genuine comparison token past its expiry (HTTP 403)."""


class FeedbackClaims(NamedTuple):  # a tuple: built for every rating, cheaper than a frozen dataclass
    response_id: str
    prompt_hash: str
    adapter_id: str
    user_ref: str
    """The scoped user (``app:user_ref``, services.inference.user_scope)."""
    exp: int
    """Unix time after which the token is refused."""
    app: str = ""
    """The app whose key got the token; another app's key is refused (a token without one is nobody's)."""


class ComparisonClaims(NamedTuple):
    comparison_id: str
    prompt_hash: str
    """The group's prompt (what the model saw, context included)."""
    user_ref: str
    response_ids: tuple[str, ...]
    """Every response of the group when the token was issued, oldest first."""
    exp: int
    """Unix time after which the token is refused."""
    app: str = ""
    """The app whose key got the token."""


@dataclass(frozen=True)
class TokenKeys:
    """The signing key and every key still accepted for verification."""

    current_kid: str
    secrets: Mapping[str, str]
    """key id -> secret; must contain ``current_kid``."""

    @functools.cached_property
    def macs(self) -> dict[str, hmac.HMAC]:
        """An HMAC-SHA256 already keyed with each secret: copying one skips the key schedule a fresh one runs."""
        return {kid: hmac.new(secret.encode(), digestmod="sha256") for kid, secret in self.secrets.items()}

    def __post_init__(self) -> None:
        if self.current_kid not in self.secrets:
            raise ValueError(f"no secret for the current key id {self.current_kid!r}")
        if any("." in kid for kid in self.secrets):
            raise ValueError("key ids must not contain '.'")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Unpadded base64url -> bytes; half the cost of base64.urlsafe_b64decode. Lenient like it (stray
    characters are skipped): it only ever decodes a payload whose signature checked out."""
    return binascii.a2b_base64(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))


def _sign(mac: hmac.HMAC, signed: str) -> bytes:
    """The signature text of ``signed`` ("<kid>.<payload>", ASCII) under ``mac`` (one of TokenKeys.macs):
    the unpadded base64url of the HMAC, 43 bytes, its one spelling (no malleable tokens)."""
    mac = mac.copy()
    mac.update(signed.encode())
    return base64.urlsafe_b64encode(mac.digest())[:-1]  # 32 bytes encode to 43 characters and one "="


def issue(keys: TokenKeys, claims: FeedbackClaims) -> str:
    """A token for ``claims`` signed with the current key."""
    payload = _b64(json.dumps(claims._asdict(), separators=(",", ":"), sort_keys=True).encode())
    kid = keys.current_kid
    signed = f"{kid}.{payload}"
    return f"{signed}.{_sign(keys.macs[kid], signed).decode()}"


def verify(keys: TokenKeys, token: str, now: float | None = None) -> FeedbackClaims:
    """The claims of a genuine, unexpired token. Raises TokenInvalid or TokenExpired.

    The signature is checked before the payload is parsed, so nothing unsigned is ever decoded.
    (The feedback routes verify every rating, so this keeps to a few C calls.)
    """
    signed, _, signature = token.rpartition(".")  # signed = "<kid>.<payload>", what _sign covers
    kid, dot, payload = signed.partition(".")
    if not dot or "." in payload or not token.isascii():
        raise TokenInvalid("malformed token")
    mac = keys.macs.get(kid)
    if mac is None:
        raise TokenInvalid("unknown key id")
    if not hmac.compare_digest(_sign(mac, signed), signature.encode()):
        raise TokenInvalid("bad signature")
    try:
        claims = FeedbackClaims(**from_json(_unb64(payload)))
    except (binascii.Error, ValueError, TypeError) as e:
        raise TokenInvalid("malformed payload") from e
    if (time.time() if now is None else now) >= claims.exp:
        raise TokenExpired("token expired")
    return claims


COMPARISON_PREFIX = "c"


def issue_comparison(keys: TokenKeys, claims: ComparisonClaims) -> str:
    """A comparison token for ``claims`` signed with the current key."""
    body = json.dumps(claims._asdict(), separators=(",", ":"), sort_keys=True).encode()
    signed = f"{COMPARISON_PREFIX}.{keys.current_kid}.{_b64(body)}"
    return f"{signed}.{_sign(keys.macs[keys.current_kid], signed).decode()}"


def verify_comparison(keys: TokenKeys, token: str, now: float | None = None) -> ComparisonClaims:
    """The claims of a genuine, unexpired comparison token. Raises TokenInvalid or TokenExpired.
    Like ``verify``: signature first (constant-time compare), then the payload."""
    signed, _, signature = token.rpartition(".")
    prefix, _, rest = signed.partition(".")
    kid, dot, payload = rest.partition(".")
    if prefix != COMPARISON_PREFIX or not dot or "." in payload or not token.isascii():
        raise ComparisonTokenInvalid("malformed comparison token")
    mac = keys.macs.get(kid)
    if mac is None:
        raise ComparisonTokenInvalid("unknown key id")
    if not hmac.compare_digest(_sign(mac, signed), signature.encode()):
        raise ComparisonTokenInvalid("bad signature")
    try:
        fields = from_json(_unb64(payload))
        claims = ComparisonClaims(**{**fields, "response_ids": tuple(fields["response_ids"])})
    except (binascii.Error, ValueError, TypeError, KeyError) as e:
        raise ComparisonTokenInvalid("malformed payload") from e
    if (time.time() if now is None else now) >= claims.exp:
        raise ComparisonTokenExpired("token expired")
    return claims
