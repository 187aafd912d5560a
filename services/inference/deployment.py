"""Keeps one API process serving what the deployment pointers in SQL say (active, canary + share).

Two triggers, one worker thread: a Redis pub/sub subscriber wakes it the moment a promotion action
publishes on ``rlhf:deployments``, and it re-reads the pointers every ``poll_interval_s`` anyway
(a missed message, Redis down, a replica that was restarting). Applying a change attaches the new
adapter between two generation batches, then switches routing atomically (AdapterManager.deploy),
so no request fails and none waits for more than one batch. Each adapter is verified against the content
hash its registry row recorded before it is attached. A change that cannot be applied (a missing,
incompatible or altered adapter) is logged and counted (``rlhf_adapter_swaps_total{result="failed"}``,
``rlhf_deployment_applied`` 0: the AdapterAttachFailed alert); the replica keeps serving what it served
and tries again on the next trigger. A replica that has never applied the pointers (the active
adapter's files unreadable at start) is not ready (/readyz), so it never serves the base model in
the active adapter's place.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.generation import BASE
from schemas.tables import Adapter, DeploymentPointer
from services.promotion.actions import CHANNEL

if TYPE_CHECKING:
    from services.inference.engines.adapters import AdapterManager
    from services.inference.engines.vllm_adapters import VllmAdapters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What the pointers say: adapter ids with their artifact paths, and the canary's share of users."""

    active: str = BASE
    active_path: str | None = None
    canary: str | None = None
    canary_path: str | None = None
    share: float = 0.0
    hashes: tuple[tuple[str, str], ...] = ()
    """(adapter id, content sha256 recorded at registration) of the adapters above."""


def read_target(session: Session) -> Target:
    rows = session.execute(
        select(
            DeploymentPointer.role, DeploymentPointer.adapter_id, DeploymentPointer.share, Adapter.path, Adapter.sha256
        ).join(Adapter, Adapter.id == DeploymentPointer.adapter_id)
    ).all()
    by_role = {role: (adapter_id, share, path) for role, adapter_id, share, path, _ in rows}
    active = by_role.get("active", (BASE, 1.0, None))
    canary = by_role.get("canary")
    return Target(
        active[0],
        active[2],
        canary[0] if canary else None,
        canary[2] if canary else None,
        canary[1] if canary else 0.0,
        tuple(sorted((adapter_id, sha) for _, adapter_id, _, _, sha in rows)),
    )


class DeploymentWatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        adapters: AdapterManager | VllmAdapters,
        redis_url: str,
        poll_interval_s: float,
    ) -> None:
        self._sessions, self._adapters = sessions, adapters
        self._redis_url, self._poll_s = redis_url, poll_interval_s
        self._wake, self._stop = threading.Event(), threading.Event()
        self._applied: Target | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> DeploymentWatcher:
        self.refresh()  # serve the registry's choice before the first request
        for target, name in ((self._poll_loop, "deploy-poll"), (self._listen, "deploy-listen")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def refresh(self) -> bool:
        """Apply the pointers if they changed; True when this call changed what is served."""
        try:
            with self._sessions() as session:
                target = read_target(session)
        except SQLAlchemyError as e:
            log.warning("cannot read the deployment pointers (keeping the served adapters): %s", e)
            return False
        if target == self._applied:
            # vLLM replicas come and go on their own (a restart loses its adapters): re-check them every time
            reconcile = getattr(self._adapters, "reconcile", None)
            if reconcile is not None:
                reconcile()
            return False
        try:
            self._adapters.deploy(
                target.active,
                _path(target.active_path),
                target.canary,
                _path(target.canary_path),
                target.share,
                hashes=dict(target.hashes),
            )
        except Exception:  # noqa: BLE001 - anything an adapter load raises must leave the old one serving
            log.exception("could not apply deployment %s; still serving %s", target, self._adapters.routing)
            m.ADAPTER_SWAPS.labels("failed").inc()
            m.DEPLOYMENT_APPLIED.set(0)
            return False
        previous, self._applied = self._applied, target
        m.DEPLOYMENT_APPLIED.set(1)
        self._export(previous, target)
        if previous is not None:
            m.ADAPTER_SWAPS.labels("ok").inc()
            log.info("now serving %s (canary %s for %.0f%% of users)", target.active, target.canary, target.share * 100)
        return True

    @staticmethod
    def _export(previous: Target | None, target: Target) -> None:
        if previous is not None:
            m.SERVING_ADAPTER.labels("active", previous.active).set(0)
            if previous.canary:
                m.SERVING_ADAPTER.labels("canary", previous.canary).set(0)
        m.SERVING_ADAPTER.labels("active", target.active).set(1)
        if target.canary:
            m.SERVING_ADAPTER.labels("canary", target.canary).set(1)
        m.CANARY_SHARE.set(target.share)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.refresh()

    def _listen(self) -> None:
        """Subscribe and wake the poll loop on every notice; reconnect with backoff while Redis is away."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self._redis_url, socket_connect_timeout=2, health_check_interval=10)
                with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(CHANNEL)
                    self._wake.set()  # a notice may have been missed while unsubscribed
                    backoff = 0.5
                    while not self._stop.is_set():
                        if pubsub.get_message(timeout=1.0) is not None:
                            self._wake.set()
            except (redis.RedisError, OSError) as e:
                log.warning("deployment notices unavailable (polling every %.0f s meanwhile): %s", self._poll_s, e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
