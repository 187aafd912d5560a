"""The promotion gate: pure checks of a candidate's measurements against thresholds in settings.

The training worker measures (it holds the model): both adapters' responses to the same held-out
prompts with the same seeds, the candidate reward model's scores of them, KL from the base, both
reward models' held-out pair accuracy, and greedy answers to the golden prompts. Here those
measurements become a verdict: one row per check with its value, threshold and outcome.

Degeneration is judged on words (lower-cased ``\\w+`` runs), so it does not depend on the tokenizer:
- repetition: share of a response's word 3-grams that repeat an earlier 3-gram, averaged;
- empty: share of responses with no word at all;
- length blow-up: mean words per response, candidate over active.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf_loop import metrics as m
from rlhf_loop.settings import PromotionSettings

GOLDEN_DEFAULT = Path(__file__).with_name("golden_prompts.jsonl")
_WORD = re.compile(r"\w+")


class BadGolden(ValueError):
    """The golden-prompt file is unreadable or a case is malformed."""


@dataclass(frozen=True)
class GoldenCase:
    prompt: str
    must: tuple[str, ...] = ()
    """Regexes the answer must match (re.search, case-insensitive)."""
    must_not: tuple[str, ...] = ()
    """Regexes the answer must not match."""
    name: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    """(regex, the failure it guards against) for the expectations the file names."""

    def failures(self, answer: str) -> list[str]:
        """What the answer breaks: 'must (LABEL): R' / 'must_not (LABEL): R' per failed expectation
        ('must: R' for an unnamed one), must before must_not, each in file order."""
        named = dict(self.labels)

        def say(kind: str, regex: str) -> str:
            return f"{kind} ({named[regex]}): {regex}" if regex in named else f"{kind}: {regex}"

        missing = [say("must", r) for r in self.must if not re.search(r, answer, re.IGNORECASE)]
        return missing + [say("must_not", r) for r in self.must_not if re.search(r, answer, re.IGNORECASE)]


def _expectations(raw: object) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A list of regexes, or an object {what it guards against: regex}."""
    if isinstance(raw, dict):
        return tuple(raw.values()), tuple((r, label) for label, r in raw.items())
    if isinstance(raw, list) and all(isinstance(r, str) for r in raw):
        return tuple(raw), ()
    raise TypeError(f"must / must_not is a list of regexes or an object of named regexes, not {raw!r}")


def load_golden(path: Path | None) -> list[GoldenCase]:
    """The golden cases of ``path`` (JSON lines ``{"name"?, "prompt", "must"?, "must_not"?}``, each of must and
    must_not a list of regexes or an object naming each regex's failure), or the shipped suite; raises
    BadGolden with the line."""
    path = path or GOLDEN_DEFAULT
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise BadGolden(f"cannot read golden prompts {path}: {e}") from e
    cases = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            must, must_labels = _expectations(raw.get("must", []))
            must_not, not_labels = _expectations(raw.get("must_not", []))
            case = GoldenCase(raw["prompt"], must, must_not, str(raw.get("name", "")), must_labels + not_labels)
            for r in case.must + case.must_not:
                re.compile(r)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, re.error) as e:
            raise BadGolden(f"{path}:{n}: {type(e).__name__}: {e}") from e
        cases.append(case)
    if not cases:
        raise BadGolden(f"{path} holds no golden prompts")
    return cases


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
    win_rate: float
    """Share of prompts where the candidate's response outscores the active's (candidate reward model; ties half)."""
    kl_vs_base: float
    """Mean sequence KL (nats) of the candidate's responses from the base model."""
    heldout_accuracy: float
    """Candidate reward model's accuracy on the candidate's held-out pairs."""
    active_heldout_accuracy: float | None
    """The active adapter's reward model on the same pairs (None: no active adapter or its model is gone)."""
    golden_candidate: list[str]
    golden_active: list[str]
    """Greedy answers to each golden prompt, in file order."""
    active_id: str


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    threshold: float
    op: str
    """How value is compared with threshold: '>=' or '<='."""
    passed: bool
    detail: str = ""


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
        failed = [c.name for c in self.checks if not c.passed]
        return "passed" if self.passed else "failed: " + ", ".join(failed)


def _check(name: str, value: float, op: str, threshold: float, detail: str = "") -> Check:
    ok = value >= threshold if op == ">=" else value <= threshold
    return Check(name, round(value, 6), round(threshold, 6), op, ok, detail)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def decide(meas: Measurements, golden: list[GoldenCase], cfg: PromotionSettings, samples_kept: int = 8) -> GateResult:
    """The verdict: every check vs its threshold in ``cfg``; passes only if all pass."""
    if len(meas.golden_candidate) != len(golden) or len(meas.golden_active) != len(golden):
        raise ValueError("golden answers do not match the golden cases")
    regressions, golden_failures = 0, []
    for case, ours, theirs in zip(golden, meas.golden_candidate, meas.golden_active, strict=True):
        broken = case.failures(ours)
        if broken:
            regressed = [f for f in broken if f not in case.failures(theirs)]
            regressions += len(regressed)
            golden_failures.append(
                {"name": case.name, "prompt": case.prompt, "answer": ours, "failures": broken, "regressions": regressed}
            )
    if meas.active_heldout_accuracy is None:
        acc_floor, acc_detail = cfg.min_heldout_accuracy, "no active reward model: the floor applies"
    else:
        acc_floor = max(cfg.min_heldout_accuracy, meas.active_heldout_accuracy - cfg.accuracy_tolerance)
        acc_detail = f"active {meas.active_heldout_accuracy:.3f} - tolerance {cfg.accuracy_tolerance}"
    cand_len = _mean([len(words(r)) for r in meas.candidate_responses])
    active_len = max(_mean([len(words(r)) for r in meas.active_responses]), 1.0)
    golden_detail = f"{len(golden_failures)} of {len(golden)} golden cases break an expectation"
    length_detail = f"{cand_len:.1f} vs {active_len:.1f} words"
    checks = [
        _check("reward_win_rate", meas.win_rate, ">=", cfg.min_win_rate, f"vs {meas.active_id}"),
        _check("kl_vs_base_nats", meas.kl_vs_base, "<=", cfg.max_kl_nats),
        _check("heldout_pair_accuracy", meas.heldout_accuracy, ">=", acc_floor, acc_detail),
        _check("golden_regressions", regressions, "<=", cfg.max_golden_regressions, golden_detail),
        _check("repetition", _mean([repetition(r) for r in meas.candidate_responses]), "<=", cfg.max_repetition),
        _check("empty_share", _mean([not words(r) for r in meas.candidate_responses]), "<=", cfg.max_empty_share),
        _check("length_ratio", cand_len / active_len, "<=", cfg.max_length_ratio, length_detail),
    ]
    for c in checks:
        m.GATE_CHECKS.labels(c.name, "pass" if c.passed else "fail").inc()
    rows = zip(meas.prompts, meas.candidate_responses, meas.active_responses, strict=True)
    samples = [{"prompt": p, "candidate": c, "active": a} for p, c, a in rows][:samples_kept]
    return GateResult(all(c.passed for c in checks), checks, samples, golden_failures)
