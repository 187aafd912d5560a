"""Promotion actions as the API, the CLI's server side and the workers call them: one transaction each,
then a notice on Redis so every API replica re-reads the deployment pointers at once.

The notice only says "look again": the pointers in SQL are the truth, and replicas also re-read them
every ``promotion.poll_interval_s``, so a lost message (Redis down, a replica reconnecting) delays a
deployment by at most one poll interval and never leaves a replica on a stale adapter.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import redis
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.generation import BASE
from rlhf_loop.settings import PromotionSettings
from services.promotion import registry
from services.promotion.canary import Verdict
from services.promotion.canary_monitor import assess
from services.promotion.gate import GateResult
from services.promotion.registry import Actor

log = logging.getLogger(__name__)
CHANNEL = "rlhf:deployments"
AUTO_APPROVER = Actor("auto-approve")
CANARY_MONITOR = Actor("canary-monitor")
T = TypeVar("T")


class Promotions:
    """The promotion actions over one database and one Redis."""

    def __init__(self, sessions: sessionmaker[Session], cfg: PromotionSettings, redis_url: str) -> None:
        self.sessions, self.cfg, self.redis_url = sessions, cfg, redis_url

    def _write(self, action: Callable[[Session], T], notify: bool = True) -> T:
        with self.sessions.begin() as session:
            result = action(session)
        if notify:
            self.notify()
        return result

    def notify(self) -> None:
        """Tell the API replicas to re-read the pointers; a Redis failure only delays them to their next poll."""
        try:
            with redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
                client.publish(CHANNEL, json.dumps({"at": time.time()}))
        except redis.RedisError as e:
            log.warning("could not publish the deployment notice (replicas pick it up by polling): %s", e)

    def record_gate(self, adapter_id: str, result: GateResult) -> str:
        """Store the verdict; with ``auto_approve`` a passed candidate is approved and deployed. Returns its state."""

        def act(session: Session) -> str:
            adapter = registry.record_gate(session, adapter_id, result)
            if result.passed and self.cfg.auto_approve:
                log.warning("AUTO-APPROVING %s: promotion.auto_approve is on, no person reviewed it", adapter_id)
                registry.approve(
                    session,
                    adapter_id,
                    AUTO_APPROVER,
                    "promotion.auto_approve is on (demo setting)",
                    self.cfg.model_copy(update={"required_approvals": 1}),
                )
            return adapter.state

        return self._write(act)

    def approve(self, adapter_id: str, actor: Actor, reason: str) -> str:
        return self._write(lambda s: registry.approve(s, adapter_id, actor, reason, self.cfg).state)

    def reject(self, adapter_id: str, actor: Actor, reason: str) -> str:
        return self._write(lambda s: registry.reject(s, adapter_id, actor, reason).state, notify=False)

    def promote(self, actor: Actor, reason: str) -> str:
        return self._write(lambda s: registry.promote_canary(s, actor, reason).id)

    def rollback(self, actor: Actor, reason: str, trigger: Literal["auto", "manual"] = "manual") -> dict[str, Any]:
        return self._write(lambda s: registry.rollback(s, actor, reason, trigger))

    def watch_canary(self) -> Verdict:
        """Judge the running canary and act on the verdict (rollback or promote); the audit row of the action
        keeps the test's statistics."""

        def act(session: Session) -> Verdict:
            verdict = assess(session, self.cfg, BASE)
            if verdict.decision == "rollback":
                registry.rollback(
                    session, CANARY_MONITOR, verdict.reason, "auto", {"canary_test": verdict.statistics()}
                )
            elif verdict.decision == "promote":
                registry.promote_canary(session, CANARY_MONITOR, verdict.reason, {"canary_test": verdict.statistics()})
            return verdict

        verdict = self._write(act, notify=False)
        if verdict.decision in ("rollback", "promote"):
            log.warning("canary %s: %s (%s)", verdict.canary_id, verdict.decision, verdict.reason)
            self.notify()
        return verdict
