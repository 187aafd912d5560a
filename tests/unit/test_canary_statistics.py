"""The canary's statistics: the mixture likelihood ratio, per-user aggregation with a cluster-robust
variance, the sequential decision and its error rate under repeated looks, and the per-deployment salt."""

from __future__ import annotations

import json
import math
import random

import pytest

from benchmarks.canary import PROMOTE, ROLLBACK, Traffic, simulate
from rlhf_loop.settings import PromotionSettings
from services.inference.engines.adapters import Routing, in_canary
from services.promotion.canary import Arm, decide, judge, log_evidence

CFG = PromotionSettings()


def test_log_evidence_is_the_one_sided_normal_mixture() -> None:
    # the closed form against a direct quadrature of the mixture over positive effects
    effect, var, sd = 0.03, 0.0002, 0.05
    steps, top = 20_000, 10 * sd
    h = top / steps
    integral = sum(
        2 / (sd * math.sqrt(2 * math.pi)) * math.exp(-(t**2) / (2 * sd**2)) * math.exp((t * effect - t * t / 2) / var)
        for t in ((i + 0.5) * h for i in range(steps))
    )
    assert log_evidence(effect, var, sd) == pytest.approx(math.log(integral * h), abs=1e-6)
    assert log_evidence(0.0, var, sd) < 0  # no effect: the ratio falls below 1 as information grows
    assert log_evidence(-0.5, 1e-6, sd) < -5  # far in the lower tail: finite, no log(0)
    assert log_evidence(0.1, 0.0, sd) == 0.0 and log_evidence(0.1, math.inf, sd) == 0.0  # no information


def test_per_user_aggregation_sums_and_cluster_robust_variance() -> None:
    arm = Arm.from_users([(3, 1), (1, 1), (2, 0), (0, 0)])
    assert arm == Arm(ratings=6, negative=2, users=3, sum_n2=14, sum_k2=2, sum_nk=4)
    p = 2 / 6  # residuals k_u - p n_u: 0, 2/3, -2/3; small-sample factor 3/2
    assert arm.variance() == pytest.approx((0 + 4 / 9 + 4 / 9) / 36 * 3 / 2)
    assert arm.rate == pytest.approx(p)
    # one rating per user: the cluster variance is the binomial one (times G/(G-1))
    single = Arm.from_users([(1, int(i < 30)) for i in range(100)])
    assert single.variance() == pytest.approx(0.3 * 0.7 / 100 * 100 / 99)
    assert Arm.from_users([(5, 2)]).variance() == math.inf
    with pytest.raises(ValueError, match="between 0"):
        Arm.from_users([(2, 3)])


def test_one_heavy_user_cannot_decide_a_rollback() -> None:
    active = Arm.from_users([(1, int(i % 10 < 3)) for i in range(1000)])  # 30% thumbs-down
    light = [(1, int(i % 10 < 3)) for i in range(100)]
    heavy = Arm.from_users([(300, 300), *light])  # one user rates 300 answers down
    spread = Arm.from_users([(1, 1)] * 300 + light)  # the same ratings from 300 different users
    cfg = PromotionSettings(canary_min_users=50)
    assert heavy.rate == spread.rate > 0.8
    assert judge(spread, active, cfg).decision == "rollback"
    verdict = judge(heavy, active, cfg)
    assert verdict.decision == "wait" and verdict.std_error > 0.1, verdict.reason


def test_decide_rolls_back_promotes_or_waits() -> None:
    var = 0.01**2
    assert decide(0.06, var, CFG)[0] == "rollback"  # clearly worse
    assert decide(-0.05, var, CFG)[0] == "promote"  # clearly better: within the margin
    assert decide(0.005, var, CFG)[0] == "wait"  # between 0 and the margin, not yet clear
    assert decide(CFG.canary_margin + 0.03, 0.02**2, CFG)[0] != "promote"  # worse than the margin
    decision, p_harm, p_safe = decide(0.06, var, CFG)
    assert p_harm < CFG.canary_alpha and p_safe == 1.0


def test_judge_waits_for_ratings_and_users_and_audits_its_statistics() -> None:
    cfg = PromotionSettings(canary_min_samples=100, canary_min_users=50)
    bad = Arm.from_users([(1, 1)] * 90)
    base = Arm.from_users([(1, int(i % 10 < 3)) for i in range(500)])
    assert judge(bad, base, cfg).decision == "wait"  # 90 ratings < 100
    few_users = Arm.from_users([(5, 5)] * 40)  # 200 ratings, 40 users
    assert judge(few_users, base, cfg).decision == "wait"
    verdict = judge(Arm.from_users([(1, 1)] * 150), base, cfg, "ad-x")
    assert verdict.decision == "rollback" and "harm p" in verdict.reason
    stats = json.loads(json.dumps(verdict.statistics()))
    assert stats["canary_users"] == 150 and stats["p_harm"] < cfg.canary_alpha
    assert stats["difference"] == pytest.approx(0.7)


def test_the_sequential_test_keeps_its_error_rate_under_repeated_looks() -> None:
    """Seeded simulation: canaries identical to the active adapter, looked at every minute for six
    hours. The sequential test rolls back at most alpha of them; the fixed-alpha z-test at the same
    looks (the monitor before the sequential test) many times more."""
    cfg = PromotionSettings(canary_alpha=0.05, canary_min_samples=50, canary_min_users=30)
    traffic = Traffic(users=3000, share=0.2, horizon_s=6 * 3600, look_s=60)
    outcome = simulate(traffic, 0.0, 300, cfg, seed=11)
    sequential, fixed = outcome.share(0, ROLLBACK), outcome.share(1, ROLLBACK)
    assert sequential <= cfg.canary_alpha
    assert fixed > 2 * cfg.canary_alpha and fixed > 3 * sequential
    assert outcome.share(0, PROMOTE) > 0  # an equal canary is within the margin: some are promoted


def test_a_worse_canary_is_caught_and_a_better_one_promoted() -> None:
    traffic = Traffic(users=3000, share=0.2, horizon_s=12 * 3600, look_s=120)
    worse = simulate(traffic, 0.08, 40, CFG, seed=12)
    better = simulate(traffic, -0.08, 40, CFG, seed=13)
    assert worse.share(0, ROLLBACK) >= 0.9 and worse.share(0, PROMOTE) == 0
    assert better.share(0, PROMOTE) >= 0.9 and better.share(0, ROLLBACK) == 0


def test_a_fresh_salt_draws_a_fresh_canary() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    first = {u for u in users if in_canary(u, 0.1, salt="ad-1")}
    again = {u for u in users if in_canary(u, 0.1, salt="ad-1")}
    second = {u for u in users if in_canary(u, 0.1, salt="ad-2")}
    assert first == again  # stable for one deployment, in every replica
    assert len(first) / len(users) == pytest.approx(0.1, abs=0.01)
    assert len(second) / len(users) == pytest.approx(0.1, abs=0.01)
    # independent draws: the overlap is share^2 of the users, not share
    assert len(first & second) / len(users) == pytest.approx(0.01, abs=0.004)
    routing_1, routing_2 = Routing("ad-0", "ad-1", 0.1), Routing("ad-0", "ad-2", 0.1)
    sample = random.Random(3).sample(users, 2000)
    assert {u for u in sample if routing_1.route(u) == "ad-1"} == first & set(sample)
    assert {u for u in sample if routing_1.route(u) == "ad-1"} != {u for u in sample if routing_2.route(u) == "ad-2"}
