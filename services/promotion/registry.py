"""The registry's write side: legal state changes with an audit row each, approvals, deployment pointers.

Every function takes an open session inside the caller's transaction and locks the rows it changes
(``SELECT ... FOR UPDATE`` on PostgreSQL), so two approvers or an approver and the canary monitor
acting at once serialize. Nothing here commits; :mod:`services.promotion.actions` commits and then
tells the API replicas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from rlhf_loop import metrics as m
from rlhf_loop.settings import PromotionSettings
from schemas.tables import Adapter, DeploymentPointer, PromotionAudit
from services.promotion.gate import GateResult
from services.promotion.states import IllegalTransition, State, check_transition

log = logging.getLogger(__name__)
ACTIVE, CANARY = "active", "canary"


class PromotionError(Exception):
    """A request the registry refuses; ``status`` and ``code`` are what the HTTP API answers."""

    status, code = 409, "conflict"


class NotFound(PromotionError):
    status, code = 404, "not_found"


class Conflict(PromotionError):
    status, code = 409, "conflict"


@dataclass(frozen=True)
class Actor:
    """Who did it: an API key's name (with its id and owner), or a named automatic step ("gate", "canary-monitor")."""

    name: str
    key_id: int | None = None
    owner: str | None = None
    """The person or team answerable for the key; approvals count owners, not keys (default: the name)."""

    @property
    def who(self) -> str:
        return self.owner or self.name

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key_id": self.key_id} if self.key_id is not None else {}
        return {**out, "owner": self.owner} if self.owner is not None else out


def now() -> datetime:
    return datetime.now(UTC)


def get(session: Session, adapter_id: str, lock: bool = False) -> Adapter:
    adapter = session.get(Adapter, adapter_id, with_for_update=lock)
    if adapter is None:
        raise NotFound(f"no adapter {adapter_id!r}")
    return adapter


def transition(
    session: Session, adapter: Adapter, to: State, actor: Actor, reason: str, details: dict[str, Any] | None = None
) -> None:
    """Move ``adapter`` to ``to`` and audit it; raises Conflict for a transition the registry does not allow."""
    check_or_conflict(adapter, to)
    session.add(
        PromotionAudit(
            adapter_id=adapter.id,
            from_state=adapter.state,
            to_state=to,
            actor=actor.name,
            reason=reason,
            details={**actor.details(), **(details or {})},
            at=now(),
        )
    )
    adapter.state, adapter.updated_at = to, now()
    event.listen(session, "after_commit", lambda _s: m.PROMOTION_TRANSITIONS.labels(to).inc(), once=True)


def pointer(session: Session, role: str, lock: bool = False) -> DeploymentPointer | None:
    return session.get(DeploymentPointer, role, with_for_update=lock)


def record_gate(session: Session, adapter_id: str, result: GateResult, actor: Actor = Actor("gate")) -> Adapter:
    """candidate -> gated with the verdict; a passed gate goes on to awaiting_approval."""
    adapter = get(session, adapter_id, lock=True)
    verdict = result.to_dict()
    transition(
        session,
        adapter,
        State.GATED,
        actor,
        f"gate {result.summary()}",
        {"passed": result.passed, "checks": verdict["checks"]},
    )
    adapter.metrics = {**(adapter.metrics or {}), "gate": verdict}
    if result.passed:
        transition(session, adapter, State.AWAITING_APPROVAL, actor, "gate passed")
    return adapter


def approvals(session: Session, adapter_id: str) -> list[str]:
    """Owners of the keys that approved ``adapter_id`` since it last entered awaiting_approval (a row from before
    owners were recorded counts its key's name)."""
    rows = session.scalars(
        select(PromotionAudit).where(PromotionAudit.adapter_id == adapter_id).order_by(PromotionAudit.id)
    ).all()
    names: list[str] = []
    for row in rows:
        if row.to_state == State.AWAITING_APPROVAL and row.from_state != State.AWAITING_APPROVAL:
            names = []
        elif row.to_state == State.AWAITING_APPROVAL and (row.details or {}).get("vote") == "approve":
            names.append((row.details or {}).get("owner") or row.actor)
    return names


def approve(session: Session, adapter_id: str, actor: Actor, reason: str, cfg: PromotionSettings) -> Adapter:
    """Record an approval; with enough different approvers the adapter is approved and deployed
    (:func:`deploy`). Raises Conflict for a second vote by the same approver or while a canary runs."""
    adapter = get(session, adapter_id, lock=True)
    check_or_conflict(adapter, State.APPROVED)
    canary = pointer(session, CANARY, lock=True)
    if canary is not None:
        raise Conflict(f"canary {canary.adapter_id} is still being judged: promote or roll it back first")
    earlier = approvals(session, adapter_id)
    if actor.who in earlier:
        raise Conflict(f"{actor.who} already approved {adapter_id}: a second approval must come from someone else")
    if len(earlier) + 1 < cfg.required_approvals:
        session.add(
            PromotionAudit(
                adapter_id=adapter_id,
                from_state=adapter.state,
                to_state=adapter.state,
                actor=actor.name,
                reason=reason,
                at=now(),
                details={**actor.details(), "vote": "approve", "needed": cfg.required_approvals},
            )
        )
        return adapter
    transition(session, adapter, State.APPROVED, actor, reason, {"approvers": [*earlier, actor.who]})
    deploy(session, adapter, actor, cfg)
    return adapter


def check_or_conflict(adapter: Adapter, to: State) -> None:
    try:
        check_transition(adapter.state, to)
    except IllegalTransition as e:
        raise Conflict(f"{adapter.id}: {e}") from e


def reject(session: Session, adapter_id: str, actor: Actor, reason: str) -> Adapter:
    adapter = get(session, adapter_id, lock=True)
    transition(session, adapter, State.REJECTED, actor, reason)
    return adapter


def deploy(session: Session, adapter: Adapter, actor: Actor, cfg: PromotionSettings) -> None:
    """An approved adapter goes to the canary pointer (``canary_share`` of users), or straight to active."""
    if cfg.canary_share > 0:
        salt = {"canary_hash_salt": adapter.id, "share": cfg.canary_share}  # services.inference routing's salt
        transition(session, adapter, State.CANARY, actor, f"canary for {cfg.canary_share:.0%} of users", salt)
        session.merge(DeploymentPointer(role=CANARY, adapter_id=adapter.id, share=cfg.canary_share, updated_at=now()))
    else:
        activate(session, adapter, actor, "deployed to every user (canary_share is 0)")


def activate(
    session: Session, adapter: Adapter, actor: Actor, reason: str, details: dict[str, Any] | None = None
) -> None:
    """Point ``active`` at ``adapter``; the adapter it replaces is retired (a rollback restores it)."""
    current = pointer(session, ACTIVE, lock=True)
    previous = get(session, current.adapter_id, lock=True) if current and current.adapter_id != adapter.id else None
    audit = {"previous_active": previous.id if previous else None, **(details or {})}
    transition(session, adapter, State.ACTIVE, actor, reason, audit)
    if previous is not None and previous.state == State.ACTIVE:
        transition(session, previous, State.RETIRED, actor, f"replaced by {adapter.id}", {"replaced_by": adapter.id})
    session.merge(DeploymentPointer(role=ACTIVE, adapter_id=adapter.id, share=1.0, updated_at=now()))
    canary = pointer(session, CANARY, lock=True)
    if canary is not None and canary.adapter_id == adapter.id:
        session.delete(canary)


def promote_canary(session: Session, actor: Actor, reason: str, details: dict[str, Any] | None = None) -> Adapter:
    """The canary becomes active for every user (``details`` go into the audit row)."""
    canary = pointer(session, CANARY, lock=True)
    if canary is None:
        raise Conflict("there is no canary to promote")
    adapter = get(session, canary.adapter_id, lock=True)
    activate(session, adapter, actor, reason, details)
    return adapter


def rollback(
    session: Session,
    actor: Actor,
    reason: str,
    trigger: Literal["auto", "manual"],
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Undo the newest deployment: a running canary is withdrawn; otherwise the active adapter is rolled
    back and the one it replaced becomes active again (or the bare base model, if there was none).
    ``details`` (the canary test's statistics) go into the audit row."""
    extra = details or {}
    canary = pointer(session, CANARY, lock=True)
    if canary is not None:
        adapter = get(session, canary.adapter_id, lock=True)
        transition(session, adapter, State.ROLLED_BACK, actor, reason, {"trigger": trigger, "role": CANARY, **extra})
        session.delete(canary)
        outcome = {"rolled_back": adapter.id, "role": CANARY, "active": _active_id(session)}
    else:
        current = pointer(session, ACTIVE, lock=True)
        if current is None:
            raise Conflict("nothing to roll back: no canary and no active adapter")
        adapter = get(session, current.adapter_id, lock=True)
        restore_id = _previous_active(session, adapter.id)
        transition(session, adapter, State.ROLLED_BACK, actor, reason, {"trigger": trigger, "role": ACTIVE, **extra})
        restore = session.get(Adapter, restore_id, with_for_update=True) if restore_id else None
        if restore is not None and restore.state == State.RETIRED:
            transition(session, restore, State.ACTIVE, actor, f"restored by the rollback of {adapter.id}")
            current.adapter_id, current.updated_at = restore.id, now()
        else:
            session.delete(current)
        outcome = {"rolled_back": adapter.id, "role": ACTIVE, "active": restore.id if restore else None}
    event.listen(session, "after_commit", lambda _s: m.ROLLBACKS.labels(trigger).inc(), once=True)
    log.warning("rollback (%s) by %s: %s (%s)", trigger, actor.name, outcome, reason)
    return outcome


def _active_id(session: Session) -> str | None:
    current = pointer(session, ACTIVE)
    return current.adapter_id if current else None


def _previous_active(session: Session, adapter_id: str) -> str | None:
    """The adapter that was active before ``adapter_id`` last became active."""
    row = session.scalars(
        select(PromotionAudit)
        .where(PromotionAudit.adapter_id == adapter_id, PromotionAudit.to_state == State.ACTIVE)
        .order_by(PromotionAudit.id.desc())
        .limit(1)
    ).first()
    return (row.details or {}).get("previous_active") if row else None
