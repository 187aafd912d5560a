"""Judging a canary with a sequential test whose error rates hold however often it is checked.

The monitor looks every ``canary_check_interval_s`` at all ratings since the canary started, so a
fixed-level test re-run at each look rolls back far more good canaries than its alpha says. Here
each look computes two mixture likelihood ratios (mSPRT, Robbins 1970; "always valid p-values",
Johari et al. 2017) on d = canary thumbs-down rate - active thumbs-down rate:

- harm:  H0 d <= 0 against d > 0. Ville's inequality bounds the chance that its ratio EVER reaches
  1/alpha under H0 by alpha, so a canary no worse than the active arm is rolled back with
  probability <= ``canary_alpha`` over the whole canary, whatever the number of looks;
- safety: H0 d >= ``canary_margin`` against d < margin (non-inferiority). A canary worse by the
  margin or more is promoted with probability <= ``canary_alpha``.

Both mix one-sided normal alternatives with sd ``canary_mixture_sd`` over the normal approximation
of d (asymptotic confidence sequences: the plug-in variance is consistent). The first ratio to reach
1/alpha decides; harm wins a tie. ``1/ratio`` (capped at 1) is reported as the p-value of each test.

Units are users, not ratings: canary membership is drawn per user, and one user's ratings share
that user's threshold. Each arm is aggregated per user (n_u ratings, k_u thumbs-down) and the rate
sum k / sum n gets the cluster-robust (per-user) variance sum (k_u - p n_u)^2 / (sum n)^2 * G/(G-1),
so a heavy rater widens the interval instead of deciding it. Nothing is judged before each arm has
``canary_min_samples`` ratings from ``canary_min_users`` users.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rlhf_loop.settings import PromotionSettings

Decision = Literal["wait", "rollback", "promote", "none"]
_LOG2, _SQRT2 = math.log(2), math.sqrt(2)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Arm:
    """One arm's ratings aggregated per user: sums over users u of n_u, k_u, n_u^2, k_u^2 and n_u*k_u
    (n_u ratings, k_u of them thumbs-down). Enough for the rate and its cluster-robust variance."""

    ratings: int = 0
    negative: int = 0
    users: int = 0
    sum_n2: int = 0
    sum_k2: int = 0
    sum_nk: int = 0

    @classmethod
    def from_users(cls, per_user: Iterable[tuple[int, int]]) -> Arm:
        """The arm of ``(ratings, thumbs_down)`` per user (users with no rating are skipped)."""
        rows = [(n, k) for n, k in per_user if n]
        if any(not 0 <= k <= n for n, k in rows):
            raise ValueError("a user's thumbs-down count must lie between 0 and their ratings")
        return cls(
            sum(n for n, _ in rows),
            sum(k for _, k in rows),
            len(rows),
            sum(n * n for n, _ in rows),
            sum(k * k for _, k in rows),
            sum(n * k for n, k in rows),
        )

    @property
    def rate(self) -> float:
        return self.negative / self.ratings if self.ratings else 0.0

    def variance(self) -> float:
        """Cluster-robust variance of ``rate`` (users are the clusters); inf with fewer than two users."""
        if self.users < 2:
            return math.inf
        p = self.rate
        squares = self.sum_k2 - 2 * p * self.sum_nk + p * p * self.sum_n2  # sum over users of (k_u - p n_u)^2
        return max(squares, 0.0) / self.ratings**2 * self.users / (self.users - 1)


def log_evidence(effect: float, variance: float, mixture_sd: float) -> float:
    """log of the one-sided normal-mixture likelihood ratio for "the true effect is > 0" given an
    estimate ``effect`` with ``variance``: the mixture over N(0, sd^2) restricted to positive effects.
    Under any true effect <= 0 its exponential is a nonnegative supermartingale in the information
    1/variance, so P(ever >= log(1/alpha)) <= alpha. 0 (a ratio of 1) without information."""
    if not 0 < variance < math.inf:
        return 0.0
    spread = variance + mixture_sd**2
    x = effect * mixture_sd / math.sqrt(variance * spread)
    return _LOG2 + 0.5 * math.log(variance / spread) + _half_square_plus_log_ndtr(x)


def _half_square_plus_log_ndtr(x: float) -> float:
    """x^2/2 + log(Phi(x)) without overflow or log(0) far in either tail."""
    if x > -30:
        return x * x / 2 + math.log(0.5 * math.erfc(-x / _SQRT2))
    # Mills ratio: Phi(x) = phi(x)/|x| * (1 - 1/x^2 + 3/x^4 ...) for x -> -inf
    return -math.log(-x) - _HALF_LOG_2PI + math.log1p(-1 / (x * x) + 3 / x**4)


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    canary_id: str | None
    canary: Arm
    active: Arm
    difference: float
    """Canary thumbs-down rate minus the active arm's."""
    std_error: float
    """Cluster-robust standard error of ``difference`` (inf before both arms have two users)."""
    p_value: float
    """Harm test: 1/likelihood ratio, capped at 1; the canary is rolled back when it falls below alpha."""
    p_noninferior: float
    """Safety test (worse by the margin or more): the canary is promoted when it falls below alpha."""
    reason: str

    def statistics(self) -> dict[str, float | int | str]:
        """What the audit row keeps of the decision (JSON-safe: an infinite error is written as a string)."""
        return {
            "test": "mixture SPRT, per-user cluster-robust variance",
            "canary_ratings": self.canary.ratings,
            "canary_users": self.canary.users,
            "canary_rate": round(self.canary.rate, 6),
            "active_ratings": self.active.ratings,
            "active_users": self.active.users,
            "active_rate": round(self.active.rate, 6),
            "difference": round(self.difference, 6),
            "std_error": round(self.std_error, 6) if math.isfinite(self.std_error) else "inf",
            "p_harm": self.p_value,
            "p_noninferior": self.p_noninferior,
        }


def decide(difference: float, variance: float, cfg: PromotionSettings) -> tuple[Decision, float, float]:
    """The sequential decision at one look, with the harm and safety p-values (1/ratio, capped at 1)."""
    harm = log_evidence(difference, variance, cfg.canary_mixture_sd)
    safe = log_evidence(cfg.canary_margin - difference, variance, cfg.canary_mixture_sd)
    bar = math.log(1 / cfg.canary_alpha)
    decision: Decision = "rollback" if harm >= bar else "promote" if safe >= bar else "wait"
    return decision, min(1.0, math.exp(-harm)), min(1.0, math.exp(-safe))


def enough(canary: Arm, active: Arm, cfg: PromotionSettings) -> bool:
    """Whether both arms have the ratings and users the normal approximation needs."""
    return min(canary.ratings, active.ratings) >= cfg.canary_min_samples and (
        min(canary.users, active.users) >= cfg.canary_min_users
    )


def judge(canary: Arm, active: Arm, cfg: PromotionSettings, canary_id: str | None = None) -> Verdict:
    """Wait for enough ratings and users, then roll back, promote or keep waiting (:func:`decide`)."""
    difference = canary.rate - active.rate
    variance = canary.variance() + active.variance()
    decision, p_harm, p_safe = decide(difference, variance, cfg) if enough(canary, active, cfg) else ("wait", 1, 1)
    figures = (
        f"canary {canary.rate:.1%} of {canary.ratings} ratings by {canary.users} users vs active "
        f"{active.rate:.1%} of {active.ratings} by {active.users} thumbs-down; difference {difference:+.3f} "
        f"(se {math.sqrt(variance):.3f}); always-valid p harm = {p_harm:.3g}, "
        f"p worse by >= {cfg.canary_margin} = {p_safe:.3g}"
    )
    why = {
        "rollback": f"{figures}: harm p < alpha {cfg.canary_alpha}",
        "promote": f"{figures}: non-inferior within {cfg.canary_margin} at alpha {cfg.canary_alpha}",
        "wait": figures
        if enough(canary, active, cfg)
        else f"{figures}; each arm needs {cfg.canary_min_samples} ratings by {cfg.canary_min_users} users",
    }[decision]
    return Verdict(decision, canary_id, canary, active, difference, math.sqrt(variance), p_harm, p_safe, why)
