"""Light modules never pull in torch; the import-linter contracts hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHT = [
    "schemas.events", "schemas.http", "schemas.tables", "rlhf_loop.cli", "rlhf_loop.settings",
    "rlhf_loop.bus.codec", "rlhf_loop.db", "rlhf_loop.simulator", "services.inference.app",
    "workers.aggregator.main", "workers.training.celery_app", "workers.training.tasks", "workers.training.pipeline",
    "workers.training.service", "workers.training.config", "workers.training.dataset", "workers.training.snapshot",
    "workers.monitoring.drift", "workers.monitoring.features", "services.promotion.routes", "services.promotion.page",
    "services.promotion.service", "services.promotion.gate", "services.inference.deployment",
]  # fmt: skip


def test_light_modules_do_not_import_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {LIGHT!r}: importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom rlhf_loop.cli import main\n"
        "rc = main(['--help'])\n"
        "assert 'torch' not in sys.modules\nsys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    for command in ("demo", "broker", "migrate", "model", "spool", "export-schemas", "config"):
        assert command in out.stdout


def test_import_linter_contracts() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports is missing: install the dev extra")
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
