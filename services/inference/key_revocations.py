"""Revocations reach every API replica at once: ``rlhf-loop keys revoke`` publishes on ``rlhf:keys`` and each
replica's listener drops its cached key answers, so the next request with the key is looked up and refused.
A missed notice (Redis away, a replica reconnecting) delays the refusal by at most ``api.key_cache_ttl_s``;
the listener also clears the cache whenever it (re)subscribes, since a notice may have gone by meanwhile.
"""

from __future__ import annotations

import logging
import threading

import redis

from services.inference.auth import KeyCache

log = logging.getLogger(__name__)
CHANNEL = "rlhf:keys"


def announce_revocation(redis_url: str, key_id: int) -> bool:
    """Tell the replicas a key was revoked; False when Redis could not be told (the TTL then bounds the delay)."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
            client.publish(CHANNEL, str(key_id))
        return True
    except redis.RedisError as e:
        log.warning("could not publish the revocation of key %s (replicas drop it within the cache TTL): %s", key_id, e)
        return False


class RevocationListener:
    def __init__(self, keys: KeyCache, redis_url: str) -> None:
        self._keys, self._redis_url = keys, redis_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="key-revocations", daemon=True)

    def start(self) -> RevocationListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self._redis_url, socket_connect_timeout=2, health_check_interval=10)
                with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(CHANNEL)
                    self._keys.evict_all()
                    backoff = 0.5
                    while not self._stop.is_set():
                        if pubsub.get_message(timeout=1.0) is not None:
                            self._keys.evict_all()
            except (redis.RedisError, OSError) as e:
                log.warning("key revocation notices unavailable (cache TTL bounds the delay meanwhile): %s", e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
