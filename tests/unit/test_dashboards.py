"""dashboards/: every panel query parses (promtool) and reads only series the code exports or the
Prometheus rules record; the provisioning names the datasource the panels use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.promql import assert_parses, exported_series, recorded_series, referenced_series

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
GRAFANA = ROOT / "deploy" / "grafana" / "provisioning"
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def queries() -> dict[str, str]:
    """'dashboard / panel / refId' -> PromQL with Grafana's range variables filled in."""
    out = {}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        items = [(p["title"], t) for p in board["panels"] for t in p["targets"]]
        items += [(f"annotation {a['name']}", {"refId": "-", **a}) for a in board["annotations"]["list"] if "expr" in a]
        for title, target in items:
            expr = target["expr"]
            for var, value in GRAFANA_RANGES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{path.name} / {title}: an undefined variable in {expr}"
            out[f"{path.stem} / {title} / {target['refId']}"] = expr
    return out


def test_the_three_dashboards_exist_with_unique_uids() -> None:
    boards = [json.loads(p.read_text()) for p in DASHBOARDS]
    assert {p.stem for p in DASHBOARDS} == {"ops-overview", "feedback-quality", "training-promotion"}
    assert len({b["uid"] for b in boards}) == len(boards)
    for b in boards:
        assert b["panels"] and all(p["targets"] for p in b["panels"]), b["title"]
        assert len({p["id"] for p in b["panels"]}) == len(b["panels"])


def test_every_panel_query_parses(tmp_path: Path) -> None:
    assert_parses(queries(), tmp_path)


def test_every_panel_reads_only_exported_or_recorded_series() -> None:
    recorded = set(recorded_series(sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))))
    known = exported_series() | recorded | {"up"}
    for where, expr in queries().items():
        names = referenced_series(expr)
        assert names - known == set(), f"{where} reads series nothing exports: {names - known}"
        assert names, f"{where} reads no series"


def test_provisioning_points_at_the_datasource_the_panels_use() -> None:
    (source,) = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {
        t["datasource"]["uid"]
        for p in DASHBOARDS
        for panel in json.loads(p.read_text())["panels"]
        for t in panel["targets"]
    }
    assert uids == {source["uid"]}
    (provider,) = yaml.safe_load((GRAFANA / "dashboards" / "rlhf-loop.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("expr", ["rate(rlhf_not_a_metric_total[5m])", "sum by (x) (adapter:rlhf_made_up:rate5m)"])
def test_an_unknown_series_is_caught(expr: str) -> None:
    known = exported_series() | {"up"}
    assert referenced_series(expr) - known, f"{expr} passed as known"
