"""Atomic artifact directories with a content hash.

An artifact (adapter, reward model, dataset snapshot) is written into a temporary sibling
directory, fsynced, then renamed into place, so a reader never sees a half-written one and a crash
leaves at most a ``.tmp-*`` directory that :func:`sweep_temp` removes. Before an adapter is used (attached
for serving, trained from), :func:`verify_adapter` checks it is the one the registry recorded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Files torch would unpickle: an adapter holding one is refused (its weights must be ``.safetensors``)."""


class AdapterRefused(ValueError):
    """An adapter's files are not what the registry recorded, or could run code when loaded."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        """Bounded, for the metric label: hash_mismatch, unsafe_format or missing."""


def dir_sha256(path: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def verify_adapter(path: Path, sha256: str, consumer: str) -> None:
    """Refuse (AdapterRefused) an adapter directory that is missing, holds a pickle-format file or no
    ``.safetensors`` weights, or whose content hash is not ``sha256`` (the one recorded at registration); counts
    the check and any refusal under ``consumer`` ("serving", "training"). Reads every byte: call it once per load."""
    from rlhf_loop import metrics as m

    m.ADAPTER_VERIFICATIONS.labels(consumer).inc()
    try:
        _check_adapter(Path(path), sha256)
    except AdapterRefused as e:
        m.ADAPTER_VERIFICATION_FAILURES.labels(consumer, e.reason).inc()
        raise


def _check_adapter(path: Path, sha256: str) -> None:
    if not path.is_dir():
        raise AdapterRefused(f"adapter directory {path} does not exist", "missing")
    files = [p for p in path.rglob("*") if p.is_file()]
    unsafe = sorted(p.name for p in files if p.suffix.lower() in UNSAFE_SUFFIXES)
    if unsafe:
        raise AdapterRefused(f"adapter {path} holds pickle files {unsafe}; only safetensors load", "unsafe_format")
    if not any(p.suffix == ".safetensors" for p in files):
        raise AdapterRefused(f"adapter {path} has no .safetensors weights", "unsafe_format")
    actual = dir_sha256(path)
    if actual != sha256:
        raise AdapterRefused(
            f"adapter {path} was altered after registration: sha256 {actual[:16]}..., recorded {sha256[:16]}...",
            "hash_mismatch",
        )


def write_dir_atomic(dest: Path, write: Callable[[Path], None]) -> str:
    """Call ``write(tmp_dir)``, fsync what it wrote, rename to ``dest``; returns the content hash.

    Raises FileExistsError if ``dest`` exists (artifacts are immutable). If ``write`` raises,
    the temporary directory is removed and nothing appears at ``dest``.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"artifact {dest} already exists; artifacts are immutable")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        sha = dir_sha256(tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(dest.parent)
    return sha


def sweep_temp(root: Path) -> int:
    """Remove leftovers of interrupted writes under ``root``; returns how many were removed."""
    leftovers = [p for p in Path(root).glob(f"{TMP_PREFIX}*") if p.is_dir()]
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    return len(leftovers)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
