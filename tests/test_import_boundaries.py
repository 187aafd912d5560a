"""Light modules never pull in torch; the import-linter contracts hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("rlhf_loop.models", "services.inference.engines", "workers.training.model")
"""The folders that may import torch, transformers and peft; every other module is light."""
SKIP = ("schemas.migrations", "rlhf_loop.__main__")  # Alembic's env and the script entry run at import
LIGHT_ENGINES = (
    "services.inference.engines.vllm",
    "services.inference.engines.vllm_adapters",
    "services.inference.engines.vllm_server",
)
"""Engines inside the heavy folder that must stay light: with the vLLM engine the API process holds no model."""


def light_modules() -> list[str]:
    """Every module of the four packages outside the heavy folders."""
    out = []
    for package in ("rlhf_loop", "schemas", "services", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name in LIGHT_ENGINES or not any(name == p or name.startswith(p + ".") for p in HEAVY + SKIP):
                out.append(name)
    return out


def test_the_light_set_covers_the_entry_points() -> None:
    light = light_modules()
    for name in ("rlhf_loop.cli.main", "services.inference.app", "workers.aggregator.main", "workers.training.tasks"):
        assert name in light
    assert not [m for m in light if m.startswith(HEAVY) and m not in LIGHT_ENGINES]
    assert set(LIGHT_ENGINES) <= set(light)


def test_the_api_on_the_vllm_engine_builds_without_torch() -> None:
    """The vLLM engine's whole build path (settings, wiring, engine, orchestration) imports no torch."""
    code = (
        "import sys\n"
        "from rlhf_loop.settings import Settings\n"
        "from services.inference.app import create_app\n"
        "from services.inference import wiring\n"
        "from services.inference.engines.vllm_adapters import build_vllm_engine\n"
        "create_app(Settings(serving={'engine': 'vllm', 'vllm_urls': 'http://127.0.0.1:1'}))\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_light_modules_do_not_import_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {light_modules()!r}: importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom rlhf_loop.cli.main import main\n"
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
