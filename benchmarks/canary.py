"""Canary judgement under repeated looks: how often does each test roll back a canary that is exactly
as good as the active adapter, how soon does it catch one 5 points worse, and how soon does it
promote one 5 points better? A simulation, pure Python and numpy: no model, no service.

Traffic model (one simulated deployment = one run, a day of traffic, the monitor looking every 30 s):
- ratings arrive as a Poisson stream of ``ratings_per_hour`` (3,000) from a population of ``users``
  (20,000) whose activity is log-normal (sigma 1.0): a user rates 3.6 times a day on average, the
  heaviest about a hundred times, so one user's ratings are a cluster;
- each user has a personal thumbs-down probability drawn from Beta with mean ``base_rate`` (0.3) and
  concentration 4 (a+b; intra-user correlation 0.2): personal thresholds correlate a user's ratings;
- ``share`` (10%) of the users are in the canary, drawn afresh for each run as a per-deployment hash
  salt draws them; a canary "5 points worse" adds 0.05 to each canary user's probability (clipped to
  [0, 1]), "better" subtracts it.
At every look each test sees every rating since the canary started:
- sequential: the production verdict, :func:`services.promotion.canary.judge` with the default
  :class:`PromotionSettings` (mixture SPRT on per-user aggregates, non-inferiority margin);
- fixed z (the test before issue 19, with its defaults): a one-sided pooled two-proportion z-test on
  ratings at alpha each look, both arms >= 200 ratings; promoted at 1,000 canary ratings if not
  significantly worse.
A run ends at its first decision (rollback or promote) for each test, or undecided after the day.
Medians count undecided runs as never (a median past the day is reported as null).

    python -m benchmarks.canary [--quick] [--seed 19]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from benchmarks.report import emit
from rlhf_loop.settings import PromotionSettings
from services.promotion.canary import Arm, enough, judge

NONE, ROLLBACK, PROMOTE = 0, 1, 2
FIXED_Z_MIN_SAMPLES, FIXED_Z_PROMOTE_SAMPLES = 200, 1000
"""The canary defaults before issue 19 (canary_min_samples, canary_promote_samples)."""


@dataclass(frozen=True)
class Traffic:
    ratings_per_hour: float = 3000.0
    users: int = 20_000
    activity_sigma: float = 1.0
    base_rate: float = 0.3
    concentration: float = 4.0
    share: float = 0.1
    horizon_s: int = 24 * 3600
    look_s: int = 30


@dataclass(frozen=True)
class Outcomes:
    """Per run and test (0 sequential, 1 fixed z): the decision and the seconds to it (inf: none)."""

    decision: np.ndarray  # (R, 2) int
    at_s: np.ndarray  # (R, 2) float

    def share(self, test: int, decision: int) -> float:
        return float(np.mean(self.decision[:, test] == decision))

    def median_s(self, test: int, decision: int) -> float | None:
        times = np.where(self.decision[:, test] == decision, self.at_s[:, test], math.inf)
        median = float(np.median(times))
        return median if math.isfinite(median) else None


def _fixed_z(stats: np.ndarray, alpha: float) -> np.ndarray:
    """Today's decision per run from (R, 2 arms, 6) sums: rollback, promote or none."""
    na, ka, nc, kc = stats[:, 0, 0], stats[:, 0, 1], stats[:, 1, 0], stats[:, 1, 1]
    ready = np.minimum(na, nc) >= FIXED_Z_MIN_SAMPLES
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (ka + kc) / (na + nc)
        se = np.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / na))
        z = np.where(se > 0, (kc / nc - ka / na) / se, 0.0)
    rollback = ready & (z > NormalDist().inv_cdf(1 - alpha))  # p < alpha
    promote = ready & ~rollback & (nc >= FIXED_Z_PROMOTE_SAMPLES)
    return np.where(rollback, ROLLBACK, np.where(promote, PROMOTE, NONE))


def _sequential(stats: np.ndarray, rows: np.ndarray, cfg: PromotionSettings) -> np.ndarray:
    """The production verdict for each of ``rows`` (run indices into ``stats``).

    A vectorized bound screens out the runs where neither test can decide at this look (the evidence
    is at most log 2 + log(V/(V+sd^2))/2 + x^2/2, since log Phi <= 0; half a nat of slack): only the rest
    go through :func:`judge`, which alone decides."""
    sums = stats[rows]  # (rows, arm, 6)
    n, k, g = sums[..., 0], sums[..., 1], sums[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n > 0, k / n, 0.0)
        squares = np.maximum(sums[..., 4] - 2 * rate * sums[..., 5] + rate**2 * sums[..., 3], 0.0)
        var = np.where(g >= 2, squares / n**2 * g / (g - 1), np.inf).sum(axis=1)
        diff = rate[:, 1] - rate[:, 0]
        tau2 = cfg.canary_mixture_sd**2
        x2 = np.maximum(diff**2, (cfg.canary_margin - diff) ** 2) * tau2 / (var * (var + tau2))
        bound = math.log(2) + 0.5 * np.log(var / (var + tau2)) + x2 / 2
    ready = (np.minimum(n[:, 0], n[:, 1]) >= cfg.canary_min_samples) & (bound > math.log(1 / cfg.canary_alpha) - 0.5)
    code = {"wait": NONE, "rollback": ROLLBACK, "promote": PROMOTE}
    out = np.zeros(len(rows), dtype=np.int8)
    for j in np.flatnonzero(ready):
        active, canary = (Arm(*arm) for arm in sums[j].astype(np.int64).tolist())
        if enough(canary, active, cfg):
            out[j] = code[judge(canary, active, cfg).decision]
    return out


def simulate(
    traffic: Traffic, effect: float, runs: int, cfg: PromotionSettings, seed: int, chunk: int = 200
) -> Outcomes:
    """``runs`` independent deployments of a canary ``effect`` worse (negative: better) than active,
    simulated ``chunk`` runs at a time (the per-user state of a chunk is chunk x users)."""
    parts = [_chunk(traffic, effect, min(chunk, runs - i), cfg, seed * 1_000_003 + i) for i in range(0, runs, chunk)]
    return Outcomes(np.concatenate([p.decision for p in parts]), np.concatenate([p.at_s for p in parts]))


def _chunk(traffic: Traffic, effect: float, runs: int, cfg: PromotionSettings, seed: int) -> Outcomes:
    rng = np.random.default_rng(seed)
    u = traffic.users
    activity = rng.lognormal(0.0, traffic.activity_sigma, u)
    cumulative = np.cumsum(activity) / activity.sum()
    a, b = traffic.base_rate * traffic.concentration, (1 - traffic.base_rate) * traffic.concentration
    member = (rng.random((runs, u)) < traffic.share).ravel()
    p = rng.beta(a, b, (runs, u)).ravel()
    p = np.where(member, np.clip(p + effect, 0.0, 1.0), p).astype(np.float32)
    n = np.zeros(runs * u, dtype=np.int32)
    k = np.zeros(runs * u, dtype=np.int32)
    stats = np.zeros((runs, 2, 6))  # arm (0 active, 1 canary) x Arm's sums
    decision = np.zeros((runs, 2), dtype=np.int8)
    at_s = np.full((runs, 2), math.inf)
    live = np.arange(runs)
    per_look = traffic.ratings_per_hour * traffic.look_s / 3600
    tests = (
        lambda rows: _sequential(stats, rows, cfg),
        lambda rows: _fixed_z(stats[rows], cfg.canary_alpha),
    )
    for t in range(traffic.look_s, traffic.horizon_s + 1, traffic.look_s):
        run = np.repeat(live, rng.poisson(per_look, live.size))
        flat = run * u + np.searchsorted(cumulative, rng.random(run.size))
        negative = rng.random(flat.size) < p[flat]
        touched, inverse = np.unique(flat, return_inverse=True)
        dn = np.bincount(inverse)
        dk = np.bincount(inverse, weights=negative).astype(np.int64)
        old_n, old_k = n[touched].astype(np.int64), k[touched].astype(np.int64)
        new_n, new_k = old_n + dn, old_k + dk
        n[touched], k[touched] = new_n, new_k
        slot = (touched // u) * 2 + member[touched]
        deltas = (dn, dk, old_n == 0, new_n**2 - old_n**2, new_k**2 - old_k**2, new_n * new_k - old_n * old_k)
        flat_stats = stats.reshape(runs * 2, 6)
        for j, d in enumerate(deltas):
            flat_stats[:, j] += np.bincount(slot, weights=d, minlength=runs * 2)
        for test, decide in enumerate(tests):
            pending = live[decision[live, test] == NONE]
            if pending.size:
                made = decide(pending)
                hit = pending[made != NONE]
                decision[hit, test], at_s[hit, test] = made[made != NONE], t
        live = live[(decision[live] == NONE).any(axis=1)]
        if not live.size:
            break
    return Outcomes(decision, at_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulated deployments (about a minute)")
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args(argv)
    null_runs, effect_runs = (1000, 200) if args.quick else (4000, 600)
    cfg, traffic = PromotionSettings(), Traffic()
    started = time.perf_counter()
    scenarios = {
        "equal": simulate(traffic, 0.0, null_runs, cfg, args.seed),
        "5 pt worse": simulate(traffic, 0.05, effect_runs, cfg, args.seed + 1),
        "5 pt better": simulate(traffic, -0.05, effect_runs, cfg, args.seed + 2),
    }
    elapsed = time.perf_counter() - started

    def hours(s: float | None) -> str:
        return "never" if s is None else f"{s / 3600:.2f} h"

    rows = [
        [
            name,
            ("sequential", "fixed z")[test],
            len(out.decision),
            f"{out.share(test, ROLLBACK):.3f}",
            f"{out.share(test, PROMOTE):.3f}",
            hours(out.median_s(test, ROLLBACK)),
            hours(out.median_s(test, PROMOTE)),
        ]
        for name, out in scenarios.items()
        for test in (0, 1)
    ]
    equal, worse, better = scenarios.values()
    emit(
        f"canary tests, checked every {traffic.look_s} s over a day ({traffic.ratings_per_hour:,.0f} ratings/h, "
        f"{traffic.share:.0%} canary, alpha {cfg.canary_alpha}; {elapsed:.0f} s)",
        ["canary", "test", "runs", "rolled back", "promoted", "median to rollback", "median to promotion"],
        rows,
        {
            "benchmark": "canary",
            "alpha": cfg.canary_alpha,
            "false_rollback_rate": equal.share(0, ROLLBACK),
            "false_rollback_rate_fixed_z": equal.share(1, ROLLBACK),
            "power_5pt": worse.share(0, ROLLBACK),
            "median_s_to_rollback": worse.median_s(0, ROLLBACK),
            "median_s_to_promotion": better.median_s(0, PROMOTE),
            "promoted_equal": equal.share(0, PROMOTE),
            "promoted_5pt_worse": worse.share(0, PROMOTE),
            "runs_equal": null_runs,
            "runs_effect": effect_runs,
            "margin": cfg.canary_margin,
            "seed": args.seed,
            "quick": args.quick,
            "seconds": round(elapsed, 1),
        },
    )


if __name__ == "__main__":
    main()
