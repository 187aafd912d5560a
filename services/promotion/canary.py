"""Judging a canary: is its negative-feedback rate significantly worse than the active adapter's?

The test is a one-sided two-proportion z-test with pooled variance on the ratings each arm got since
the canary started (one rating per user and response: a repeat replaces). H0: the canary's
thumbs-down rate is no higher than the active arm's; the canary is rolled back when p < alpha. Each
arm needs ``canary_min_samples`` ratings before anything is decided, and a canary that has
``canary_promote_samples`` ratings without being significantly worse becomes active.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from rlhf_loop import metrics as m
from rlhf_loop.settings import PromotionSettings
from schemas.tables import Feedback
from services.promotion.registry import ACTIVE, CANARY, pointer

Decision = Literal["wait", "rollback", "promote", "none"]


@dataclass(frozen=True)
class Arm:
    ratings: int
    negative: int

    @property
    def rate(self) -> float:
        return self.negative / self.ratings if self.ratings else 0.0


def p_worse(canary: Arm, active: Arm) -> float:
    """One-sided p-value of H0 'the canary's negative rate <= the active's' (1.0 when either arm is empty)."""
    if not canary.ratings or not active.ratings:
        return 1.0
    pooled = (canary.negative + active.negative) / (canary.ratings + active.ratings)
    se = math.sqrt(pooled * (1 - pooled) * (1 / canary.ratings + 1 / active.ratings))
    if se == 0:
        return 1.0
    z = (canary.rate - active.rate) / se
    return 0.5 * math.erfc(z / math.sqrt(2))  # P(Z >= z)


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    canary_id: str | None
    canary: Arm
    active: Arm
    p_value: float
    reason: str


def judge(canary: Arm, active: Arm, cfg: PromotionSettings, canary_id: str | None = None) -> Verdict:
    """Wait for enough ratings, then roll back if significantly worse, promote once well sampled."""
    p = p_worse(canary, active)
    figures = (
        f"canary {canary.rate:.1%} of {canary.ratings} vs active {active.rate:.1%} of {active.ratings} "
        f"thumbs-down, one-sided p = {p:.3g}"
    )
    if min(canary.ratings, active.ratings) < cfg.canary_min_samples:
        return Verdict("wait", canary_id, canary, active, p, f"{figures}; each arm needs {cfg.canary_min_samples}")
    if p < cfg.canary_alpha:
        return Verdict("rollback", canary_id, canary, active, p, f"{figures} < alpha {cfg.canary_alpha}")
    if canary.ratings >= cfg.canary_promote_samples:
        return Verdict("promote", canary_id, canary, active, p, f"{figures}; not significantly worse")
    return Verdict("wait", canary_id, canary, active, p, figures)


def arm(session: Session, adapter_id: str, since: datetime) -> Arm:
    """Ratings of responses served by ``adapter_id`` given at or after ``since``."""
    n, neg = session.execute(
        select(func.count(), func.coalesce(func.sum(case((Feedback.rating < 0, 1), else_=0)), 0)).where(
            Feedback.adapter_id == adapter_id, Feedback.created_at >= since
        )
    ).one()
    return Arm(int(n), int(neg))


def assess(session: Session, cfg: PromotionSettings, base_id: str) -> Verdict:
    """The verdict on the running canary from the feedback in SQL (``none`` when no canary runs).
    ``base_id`` is what responses of the bare base model carry as adapter id."""
    canary = pointer(session, CANARY)
    if canary is None:
        return Verdict("none", None, Arm(0, 0), Arm(0, 0), 1.0, "no canary")
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
    return verdict
