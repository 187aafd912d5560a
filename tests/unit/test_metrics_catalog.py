"""The metrics catalog's pointers are current: every module a comment names as the updater exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "rlhf_loop" / "metrics.py"


def test_every_updater_named_in_the_catalog_exists() -> None:
    named = set(re.findall(r"#.*?\b((?:rlhf_loop|services|workers)/[\w/]+\.py)", CATALOG.read_text()))
    assert len(named) > 10  # the catalog names its updaters
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"metrics.py names modules that do not exist: {missing}"
