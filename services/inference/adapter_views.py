"""Read side of the registry, shared by the JSON API and the approval page."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.http import AdapterDetail, AdapterSummary, AuditEntry, Deployment
from schemas.tables import Adapter, PromotionAudit
from services.promotion.registry import ACTIVE, CANARY, get, pointer

LIST_LIMIT = 200


def summary(adapter: Adapter) -> AdapterSummary:
    gate = (adapter.metrics or {}).get("gate")
    return AdapterSummary(
        id=adapter.id,
        state=adapter.state,
        base_model=adapter.base_model,
        parent_id=adapter.parent_id,
        run_id=adapter.run_id,
        created_at=adapter.created_at.isoformat() if adapter.created_at else "",
        gate_passed=gate["passed"] if gate else None,
    )


def list_adapters(session: Session, state: str | None = None) -> list[AdapterSummary]:
    query = select(Adapter).order_by(Adapter.created_at.desc(), Adapter.id).limit(LIST_LIMIT)
    if state:
        query = query.where(Adapter.state == state)
    return [summary(a) for a in session.scalars(query)]


def detail(session: Session, adapter_id: str) -> AdapterDetail:
    adapter = get(session, adapter_id)
    audit = session.scalars(
        select(PromotionAudit).where(PromotionAudit.adapter_id == adapter_id).order_by(PromotionAudit.id)
    )
    return AdapterDetail(
        adapter=summary(adapter),
        metrics=adapter.metrics or {},
        lineage=adapter.lineage or {},
        audit=[
            AuditEntry(
                at=a.at.isoformat(),
                from_state=a.from_state,
                to_state=a.to_state,
                actor=a.actor,
                reason=a.reason,
                details=a.details or {},
            )
            for a in audit
        ],
    )


def deployment(session: Session) -> Deployment:
    active, canary = pointer(session, ACTIVE), pointer(session, CANARY)
    return Deployment(
        active=active.adapter_id if active else None,
        canary=canary.adapter_id if canary else None,
        canary_share=canary.share if canary else 0.0,
    )
