"""The golden-prompt suite: fixed prompts with patterns every answer must and must not match.

JSON lines ``{"name"?, "prompt", "must"?, "must_not"?, "should"?}``; each is a list of regexes or an
object naming the failure each regex guards against (``{"rude": "\\bugh\\b"}``), so a regression in
the gate report says what went wrong. ``must`` and ``must_not`` gate; ``should`` is advisory: a miss is
listed for the approver and never fails the gate (for what the users themselves do not punish).
Patterns are ``re.search``ed case-insensitively. The suite shipped with rlhf-loop
(``golden_prompts.jsonl``) covers the demo world's failure modes; ``promotion.golden_path`` points at
an operator's own. Its "mentions the ticket" expectations are advisory: the demo world's users like a
polite, on-topic answer without the ticket as much, so thumbs alone do not keep a policy citing it, and
a gate on it would refuse candidates the users prefer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

GOLDEN_DEFAULT = Path(__file__).with_name("golden_prompts.jsonl")


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
    should: tuple[str, ...] = ()
    """Advisory regexes the answer should match: listed when missed, never gating."""

    def broken(self, answer: str) -> list[tuple[str, str]]:
        """(failure mode, description) per expectation the answer breaks, must before must_not, each in file
        order. The description is 'must (LABEL): R' / 'must_not (LABEL): R' ('must: R' for an unnamed one);
        the mode is the label, or the description of an unnamed expectation."""
        named = dict(self.labels)

        def say(kind: str, regex: str) -> tuple[str, str]:
            if regex in named:
                return named[regex], f"{kind} ({named[regex]}): {regex}"
            return f"{kind}: {regex}", f"{kind}: {regex}"

        missing = [say("must", r) for r in self.must if not re.search(r, answer, re.IGNORECASE)]
        return missing + [say("must_not", r) for r in self.must_not if re.search(r, answer, re.IGNORECASE)]

    def advisories(self, answer: str) -> list[str]:
        """'should (LABEL): R' per advisory expectation the answer misses, in file order."""
        named = dict(self.labels)
        return [
            f"should ({named[r]}): {r}" if r in named else f"should: {r}"
            for r in self.should
            if not re.search(r, answer, re.IGNORECASE)
        ]

    def failures(self, answer: str) -> list[str]:
        """The descriptions of :meth:`broken`, then the advisories missed."""
        return [description for _, description in self.broken(answer)] + self.advisories(answer)


def _expectations(raw: object) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A list of regexes, or an object {what it guards against: regex}."""
    if isinstance(raw, dict):
        return tuple(raw.values()), tuple((r, label) for label, r in raw.items())
    if isinstance(raw, list) and all(isinstance(r, str) for r in raw):
        return tuple(raw), ()
    raise TypeError(f"must / must_not is a list of regexes or an object of named regexes, not {raw!r}")


def load_golden(path: Path | None) -> list[GoldenCase]:
    """The golden cases of ``path`` (JSON lines ``{"name"?, "prompt", "must"?, "must_not"?, "should"?}``, each
    a list of regexes or an object naming each regex's failure), or the shipped suite; raises BadGolden
    with the line."""
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
            should, should_labels = _expectations(raw.get("should", []))
            labels = must_labels + not_labels + should_labels
            case = GoldenCase(raw["prompt"], must, must_not, str(raw.get("name", "")), labels, should)
            for r in case.must + case.must_not + case.should:
                re.compile(r)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, re.error) as e:
            raise BadGolden(f"{path}:{n}: {type(e).__name__}: {e}") from e
        cases.append(case)
    if not cases:
        raise BadGolden(f"{path} holds no golden prompts")
    return cases
