"""The canary monitor's read side: each arm's ratings since the canary started, aggregated per user
in SQL, judged by :func:`services.promotion.canary.judge`, with the verdict exported as metrics.

Only the per-arm sums leave the database (one row per arm), so a look costs the same however many
users the canary has. Ratings are the ``feedback`` rows (one per user and response: a repeat
replaces), so a user who re-rates a response still counts once for it.
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from rlhf_loop import metrics as m
from rlhf_loop.settings import PromotionSettings
from schemas.tables import Feedback
from services.promotion.canary import Arm, Verdict, judge
from services.promotion.registry import ACTIVE, CANARY, pointer


def arm(session: Session, adapter_id: str, since: datetime) -> Arm:
    """Ratings of responses served by ``adapter_id`` given at or after ``since``, summed per user."""
    per_user = (
        select(
            func.count().label("n"),
            func.sum(case((Feedback.rating < 0, 1), else_=0)).label("k"),
        )
        .where(Feedback.adapter_id == adapter_id, Feedback.created_at >= since)
        .group_by(Feedback.user_ref)
        .subquery()
    )
    n, k = per_user.c.n, per_user.c.k
    row = session.execute(
        select(
            func.coalesce(func.sum(n), 0),
            func.coalesce(func.sum(k), 0),
            func.count(),
            func.coalesce(func.sum(n * n), 0),
            func.coalesce(func.sum(k * k), 0),
            func.coalesce(func.sum(n * k), 0),
        )
    ).one()
    return Arm(*(int(v) for v in row))


def assess(session: Session, cfg: PromotionSettings, base_id: str) -> Verdict:
    """The verdict on the running canary from the feedback in SQL (``none`` when no canary runs).
    ``base_id`` is what responses of the bare base model carry as adapter id."""
    canary = pointer(session, CANARY)
    if canary is None:
        return Verdict("none", None, Arm(), Arm(), 0.0, math.inf, 1.0, 1.0, "no canary")
    active = pointer(session, ACTIVE)
    since = canary.updated_at
    verdict = judge(
        arm(session, canary.adapter_id, since),
        arm(session, active.adapter_id if active else base_id, since),
        cfg,
        canary.adapter_id,
    )
    m.CANARY_NEGATIVE_RATE.labels(CANARY).set(verdict.canary.rate)
    m.CANARY_NEGATIVE_RATE.labels(ACTIVE).set(verdict.active.rate)
    m.CANARY_P_VALUE.set(verdict.p_value)
    m.CANARY_NONINFERIORITY_P_VALUE.set(verdict.p_noninferior)
    m.CANARY_DIFFERENCE.set(verdict.difference)
    m.CANARY_DECISIONS.labels(verdict.decision).inc()
    return verdict
