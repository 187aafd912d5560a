"""PromQL helpers for the config tests: the series the code exports, the series an expression reads,
and a parse check through Debian's promtool (a missing promtool fails the test, it never skips)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (CI's .ci/run installs it)")
    return path


def exported_series() -> set[str]:
    """Every rlhf_* series name the metric catalog can expose (counter _total, histogram _bucket, ...)."""
    from prometheus_client import REGISTRY

    import rlhf_loop.metrics  # noqa: F401 - registers the catalog

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("rlhf_"):
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def recorded_series(rule_files: list[Path]) -> dict[str, str]:
    """Recording rule name -> expression, over these rule files."""
    out = {}
    for path in rule_files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.update({r["record"]: r["expr"] for r in group["rules"] if "record" in r})
    return out


def referenced_series(expr: str) -> set[str]:
    """Metric (and recorded series) names an expression selects: identifiers outside label matchers,
    grouping clauses, ranges and strings, not followed by '(' (functions) and not keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[m.end() :].lstrip()
        if m.group().lower() not in KEYWORDS and not following.startswith("("):
            names.add(m.group())
    return names


def assert_parses(exprs: dict[str, str], workdir: Path) -> None:
    """Every expression parses as PromQL: promtool checks them as recording rules of one rule file."""
    rules = [{"record": f"check:expr:{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path = workdir / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        where = {f"check:expr:{i}": name for i, name in enumerate(exprs)}
        pytest.fail(f"expressions that do not parse ({where}):\n{out.stdout}{out.stderr}")
