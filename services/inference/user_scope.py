"""End users belong to the app that names them.

``user_ref`` is the app's own pseudonymous id, so two apps' "u1" are two people. The API stores and logs
the scoped identity :func:`scoped_user` (``app:user_ref``), so everything downstream (per-rater caps, pairs,
canary routing, rate limits, ``users forget --app``) is per app without knowing about apps. Tokens carry
the app that got them and are refused with another app's key (:func:`check_token_app`). And one app may act
for at most ``api.key_user_quota`` distinct users per window (:class:`UserQuota`), so a key cannot invent
raters without bound: a new user past the quota is refused (429) before anything is generated or logged.
"""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rlhf_loop import metrics as m
from services.inference.auth import AuthError, Principal

MAX_STORED = 64
"""Longest stored user id (the events' and tables' bound)."""


def scoped_user(app_id: str, user_ref: str) -> str:
    """The stored identity of ``user_ref`` of app ``app_id``: ``app:user_ref``, or when that is longer than 64
    characters ``app-prefix~hash`` ('~' is in neither alphabet, so the two forms never collide)."""
    scoped = f"{app_id}:{user_ref}"
    if len(scoped) <= MAX_STORED:
        return scoped
    return f"{app_id[:24]}~{hashlib.blake2b(scoped.encode(), digest_size=16).hexdigest()}"


def app_id(principal: Principal) -> str:
    """The app an app key speaks for: its name, as the events carry it (at most 64 characters)."""
    return principal.name[:MAX_STORED]


def check_token_app(token_app: str, principal: Principal, kind: str = "feedback") -> None:
    """Refuse (403) a token that was issued to another app than the one presenting it."""
    if token_app != app_id(principal):
        m.AUTH_REFUSALS.labels("foreign_token").inc()
        raise AuthError(403, f"foreign_{kind}_token", f"this {kind} token was issued to another app")


# KEYS[1] = the app's user set for this window, ARGV = user, quota, window seconds. Returns 0 when the user
# may act (already in the set, or added now), else the seconds until the window ends.
_SCRIPT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return math.max(1, math.ceil(redis.call('PTTL', KEYS[1]) / 1000))
end
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 1000) end
return 0
"""


class UserQuota:
    """Distinct users per app per fixed window, in one Redis set per app (at most ``quota`` members). Fails
    open like the rate limiter when Redis is unreachable (``rlhf_ratelimit_errors_total`` counts it)."""

    def __init__(self, client: aioredis.Redis, quota: int, window_s: int, prefix: str = "rlhf:users") -> None:
        self._script = client.register_script(_SCRIPT)
        self._quota, self._window_s, self._prefix = quota, window_s, prefix

    async def admit(self, app_id: str, user: str) -> int:
        """0 when ``user`` (a scoped id) may act for ``app_id`` now, else the Retry-After seconds (counted)."""
        key = f"{self._prefix}:{hashlib.blake2b(app_id.encode(), digest_size=12).hexdigest()}"
        member = hashlib.blake2b(user.encode(), digest_size=12).digest()  # raw ids never sit in Redis
        try:
            retry_after = int(await self._script(keys=[key], args=[member, self._quota, self._window_s]))
        except RedisError:
            m.RATELIMIT_ERRORS.inc()
            return 0
        if retry_after:
            m.USER_QUOTA_REFUSALS.inc()
        return retry_after
