"""Untrusted files on the shared data volume: a PPO checkpoint carrying a pickled callable is refused without
running it, and an adapter is refused (and counted) when its files are not the ones registered or could
unpickle code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from rlhf_loop.artifacts import AdapterRefused, dir_sha256, verify_adapter
from workers.training.model.checkpoint import CheckpointRefused, read_checkpoint


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: what an attacker's checkpoint would do with a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_pickled_callable_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "ppo.ckpt"
    torch.save({"run_id": "run-1", "step": 3, "evil": _Payload(marker)}, path)
    with pytest.raises(CheckpointRefused, match="refusing checkpoint"):
        read_checkpoint(path, "cpu")
    assert not marker.exists()

    good = {"run_id": "run-1", "step": 3, "config": {"lr": 1e-4, "betas": (0.9, 0.99)}, "w": torch.ones(2, 3)}
    torch.save(good, path)
    state = read_checkpoint(path, "cpu")
    assert state["config"] == good["config"] and torch.equal(state["w"], good["w"])


def _sample(name: str, consumer: str, reason: str | None = None) -> float:
    labels = {"consumer": consumer, **({"reason": reason} if reason else {})}
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _adapter(root: Path, weights: str = "adapter_model.safetensors") -> Path:
    root.mkdir()
    (root / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (root / weights).write_bytes(b"\x00" * 64)
    return root


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x01" * 64), "hash_mismatch"),
        (lambda d: (d / "adapter_model.bin").write_bytes(b"pickle"), "unsafe_format"),
        (lambda d: (d / "adapter_model.safetensors").unlink(), "unsafe_format"),
    ],
    ids=["altered", "pickle-file-added", "no-safetensors"],
)
def test_an_adapter_that_is_not_the_registered_one_is_refused_and_counted(tmp_path: Path, make, reason: str) -> None:  # noqa: ANN001
    adapter = _adapter(tmp_path / "ad")
    recorded = dir_sha256(adapter)
    verify_adapter(adapter, recorded, "training")  # as registered: accepted
    make(adapter)
    checks, refused = (
        _sample("rlhf_adapter_verifications_total", "training"),
        _sample("rlhf_adapter_verification_failures_total", "training", reason),
    )
    with pytest.raises(AdapterRefused) as info:
        verify_adapter(adapter, recorded if reason != "unsafe_format" else dir_sha256(adapter), "training")
    assert info.value.reason == reason
    assert _sample("rlhf_adapter_verifications_total", "training") == checks + 1
    assert _sample("rlhf_adapter_verification_failures_total", "training", reason) == refused + 1


def test_a_missing_adapter_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterRefused) as info:
        verify_adapter(tmp_path / "gone", "0" * 64, "serving")
    assert info.value.reason == "missing"
