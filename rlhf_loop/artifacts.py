"""Atomic artifact directories with a content hash.

An artifact (adapter, reward model, dataset snapshot) is written into a temporary sibling
directory, fsynced, then renamed into place, so a reader never sees a half-written one and a crash
leaves at most a ``.tmp-*`` directory that :func:`sweep_temp` removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"


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
