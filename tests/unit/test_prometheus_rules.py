"""deploy/prometheus: the config and its rule files pass promtool, the alert and recording rules behave
as their promtool unit tests say, and every rule reads only series the code exports or records."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.support.promql import exported_series, promtool, recorded_series, referenced_series

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))


def run(*args: str) -> str:
    out = subprocess.run([promtool(), *args], cwd=PROM, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_config_and_rule_files_are_valid() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert sorted(config["rule_files"]) == sorted(str(p.relative_to(PROM)) for p in RULE_FILES)
    assert "SUCCESS" in run("check", "config", "prometheus.yml")


def test_alert_and_recording_rules_pass_their_unit_tests() -> None:
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    assert "SUCCESS" in run("test", "rules", *[str(t.relative_to(PROM)) for t in tests])


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        r["alert"]
        for p in RULE_FILES
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    tested = {
        t["alertname"]
        for p in (PROM / "tests").glob("*.yml")
        for case in yaml.safe_load(p.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts - tested == set(), "alerts no promtool test sees firing"


def test_rules_read_only_exported_or_recorded_series() -> None:
    known = exported_series() | set(recorded_series(RULE_FILES)) | {"up"}
    exprs = [r["expr"] for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]]
    unknown = {name for e in exprs for name in referenced_series(e)} - known
    assert not unknown, f"rules read series nothing exports: {unknown}"
