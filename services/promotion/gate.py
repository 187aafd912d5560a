"""The promotion gate: pure checks of a candidate's measurements against thresholds in settings.

The training worker measures (it holds the model): both adapters' responses to the same held-out
prompts with the same seeds, scored by the candidate's reward model and by the incumbent's (the
active adapter's run), KL from the base and from the incumbent, both reward models' held-out pair
accuracy, and greedy answers to the golden prompts. Here those measurements become a verdict: one
row per check with its value, confidence interval where it has one, threshold and outcome.

A win rate is judged by both reward models, so a candidate cannot pass on its own judge's quirks
alone: each is a check, and both must pass (so the lower decides). Each passes only when the lower
end of its Wilson interval (``gate_confidence``, two-sided; ties count half a win, which only
narrows the true interval) clears ``min_win_rate``: a handful of prompts cannot pass by luck. A check
whose input was not measured (no incumbent reward model; no thumbs AUC from the training run) is
reported as not measured and does not block.

The golden suite counts, per failure mode (a named pattern, e.g. "rude"; an unnamed pattern is its own
mode), the cases the candidate breaks and the active adapter's answer does not (lost) and the reverse
(won). A mode is worse when an exact one-sided sign test of lost against won has p < ``golden_alpha``;
``golden_regressions`` sums the cases lost in the worse modes. So one lucky greedy answer of the active
adapter does not fail a candidate, while every regression is still listed for the approver;
``golden_alpha = 1`` fails any mode that lost a case.

Degeneration is judged on words (lower-cased ``\\w+`` runs), so it does not depend on the tokenizer:
- repetition: share of a response's word 3-grams that repeat an earlier 3-gram, averaged;
- empty: share of responses with no word at all;
- length blow-up: mean words per response, candidate over active.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

from rlhf_loop import metrics as m
from rlhf_loop.settings import PromotionSettings
from services.promotion.golden import GoldenCase

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def repetition(text: str, n: int = 3) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier one (0 for fewer than n+1 words)."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if len(grams) > 1 else 0.0


@dataclass(frozen=True)
class Measurements:
    """What the worker measured; ``active_*`` refer to the active adapter (or the base model if none)."""

    prompts: list[str]
    candidate_responses: list[str]
    active_responses: list[str]
    candidate_rm_wins: list[float]
    """Per prompt, judged by the candidate's reward model: 1 the candidate's response scores higher, 0.5 a tie, 0."""
    incumbent_rm_wins: list[float] | None
    """The same judged by the incumbent's reward model (None: the active is the base model or its model is gone)."""
    kl_vs_base: float
    """Mean sequence KL (nats) of the candidate's responses from the base model."""
    kl_vs_active: float
    """Mean sequence KL (nats) of the candidate's responses from the active adapter (the base if none)."""
    heldout_accuracy: float | None
    """Candidate reward model's accuracy on the candidate's held-out pairs (None: the split holds none, as
    on traffic of unique prompts with few comparisons; the thumbs AUC then speaks for the reward model)."""
    active_heldout_accuracy: float | None
    """The active adapter's reward model on the same pairs (None: no active adapter or its model is gone)."""
    golden_candidate: list[str]
    golden_active: list[str]
    """Greedy answers to each golden prompt, in file order."""
    active_id: str
    thumbs_auc: float | None = None
    """The candidate reward model's held-out thumbs ROC-AUC from its training run (None: not measured)."""


def win_interval(outcomes: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(win rate, lower, upper): the mean of per-prompt outcomes in [0, 1] and its two-sided Wilson score
    interval at ``confidence``. Ties (0.5) make the outcomes less variable than Bernoulli, so the interval
    is conservative for them. Raises ValueError without outcomes or for a confidence outside (0, 1)."""
    if not outcomes:
        raise ValueError("no outcomes to put an interval on")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    n, rate = len(outcomes), sum(outcomes) / len(outcomes)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return rate, max(0.0, centre - half), min(1.0, centre + half)


def sign_test(lost: int, won: int) -> float:
    """One-sided exact sign (McNemar) test of "the candidate is no worse": P(X >= lost) for X ~ Binomial(lost +
    won, 1/2), the chance of losing at least ``lost`` of the discordant cases by luck; 1.0 without any."""
    n = lost + won
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n if lost else 1.0


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    """None when not measured."""
    threshold: float
    op: str
    """How value (or the interval's bound on that side) is compared with threshold: '>=' or '<='."""
    passed: bool
    detail: str = ""
    interval: tuple[float, float] | None = None
    """Two-sided confidence interval of value (``gate_confidence``); the gate compares its lower end."""
    measured: bool = True


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: list[Check]
    samples: list[dict[str, str]] = field(default_factory=list)
    """Prompt, candidate response and active response side by side (the approval page shows them)."""
    golden_failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        failed = [c.name for c in self.checks if not c.passed]  # a check not measured never fails
        return "passed" if self.passed else "failed: " + ", ".join(failed)


def _check(name: str, value: float, op: str, threshold: float, detail: str = "") -> Check:
    ok = value >= threshold if op == ">=" else value <= threshold
    return Check(name, round(value, 6), round(threshold, 6), op, ok, detail)


def _win_check(name: str, wins: list[float] | None, cfg: PromotionSettings, judge: str, active_id: str) -> Check:
    if wins is None:
        return Check(name, None, cfg.min_win_rate, ">=", True, f"not measured: {judge}", measured=False)
    rate, lower, upper = win_interval(wins, cfg.gate_confidence)
    detail = f"{judge}, {len(wins)} prompts vs {active_id}; lower bound {lower:.3f}"
    interval = (round(lower, 6), round(upper, 6))
    return Check(name, round(rate, 6), cfg.min_win_rate, ">=", lower >= cfg.min_win_rate, detail, interval)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def decide(meas: Measurements, golden: list[GoldenCase], cfg: PromotionSettings, samples_kept: int = 8) -> GateResult:
    """The verdict: every check vs its threshold in ``cfg``; passes only if all measured checks pass.
    Raises ValueError when the golden answers do not match the cases or no prompt was compared."""
    if len(meas.golden_candidate) != len(golden) or len(meas.golden_active) != len(golden):
        raise ValueError("golden answers do not match the golden cases")
    if not meas.candidate_rm_wins:
        raise ValueError("no held-out prompt was compared")
    counts: dict[str, list[int]] = {}  # per failure mode: [cases only the candidate breaks, only the active breaks]
    golden_failures = []
    for case, ours, theirs in zip(golden, meas.golden_candidate, meas.golden_active, strict=True):
        broken, theirs_broken = case.broken(ours), case.broken(theirs)
        regressed = [b for b in broken if b not in theirs_broken]
        for mode, _ in regressed:
            counts.setdefault(mode, [0, 0])[0] += 1
        for mode, _ in (b for b in theirs_broken if b not in broken):
            counts.setdefault(mode, [0, 0])[1] += 1
        if broken or case.advisories(ours):
            golden_failures.append(
                {
                    "name": case.name,
                    "prompt": case.prompt,
                    "answer": ours,
                    "failures": case.failures(ours),
                    "regressions": [d for _, d in regressed],
                }
            )
    worse = {mode: lost for mode, (lost, won) in counts.items() if sign_test(lost, won) < cfg.golden_alpha}
    regressions = sum(worse.values())
    if meas.active_heldout_accuracy is None:
        acc_floor, acc_detail = cfg.min_heldout_accuracy, "no active reward model: the floor applies"
    else:
        acc_floor = max(cfg.min_heldout_accuracy, meas.active_heldout_accuracy - cfg.accuracy_tolerance)
        acc_detail = f"active {meas.active_heldout_accuracy:.3f} - tolerance {cfg.accuracy_tolerance}"
    cand_len = _mean([len(words(r)) for r in meas.candidate_responses])
    active_len = max(_mean([len(words(r)) for r in meas.active_responses]), 1.0)
    golden_detail = f"{len(golden_failures)} of {len(golden)} golden cases break an expectation; " + (
        "worse: " + ", ".join(f"{mode} +{n}" for mode, n in sorted(worse.items()))
        if worse
        else f"no failure mode significantly worse (sign test, alpha {cfg.golden_alpha})"
    )
    length_detail = f"{cand_len:.1f} vs {active_len:.1f} words"
    if meas.thumbs_auc is None:
        auc = Check("heldout_thumbs_auc", None, cfg.min_thumbs_auc, ">=", True, "not measured", measured=False)
    else:
        auc = _check("heldout_thumbs_auc", meas.thumbs_auc, ">=", cfg.min_thumbs_auc, "candidate reward model")
    no_incumbent = "no incumbent reward model (the active is the base model, or its reward model is gone)"
    checks = [
        _win_check("reward_win_rate", meas.candidate_rm_wins, cfg, "candidate's reward model", meas.active_id),
        _win_check(
            "incumbent_reward_win_rate",
            meas.incumbent_rm_wins,
            cfg,
            "incumbent's reward model" if meas.incumbent_rm_wins is not None else no_incumbent,
            meas.active_id,
        ),
        _check("kl_vs_base_nats", meas.kl_vs_base, "<=", cfg.max_kl_nats),
        _check("kl_vs_active_nats", meas.kl_vs_active, "<=", cfg.max_kl_vs_active_nats, f"vs {meas.active_id}"),
        Check("heldout_pair_accuracy", None, acc_floor, ">=", True, "not measured: no held-out pairs", measured=False)
        if meas.heldout_accuracy is None
        else _check("heldout_pair_accuracy", meas.heldout_accuracy, ">=", acc_floor, acc_detail),
        auc,
        _check("golden_regressions", regressions, "<=", cfg.max_golden_regressions, golden_detail),
        _check("repetition", _mean([repetition(r) for r in meas.candidate_responses]), "<=", cfg.max_repetition),
        _check("empty_share", _mean([not words(r) for r in meas.candidate_responses]), "<=", cfg.max_empty_share),
        _check("length_ratio", cand_len / active_len, "<=", cfg.max_length_ratio, length_detail),
    ]
    for c in checks:
        m.GATE_CHECKS.labels(c.name, "pass" if c.passed else "fail" if c.measured else "not_measured").inc()
    rows = zip(meas.prompts, meas.candidate_responses, meas.active_responses, strict=True)
    samples = [{"prompt": p, "candidate": c, "active": a} for p, c, a in rows][:samples_kept]
    return GateResult(all(c.passed for c in checks), checks, samples, golden_failures)
