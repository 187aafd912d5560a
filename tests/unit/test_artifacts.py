"""Artifacts are written atomically: a failed write leaves nothing, a finished one has a stable hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_loop.artifacts import dir_sha256, sweep_temp, write_dir_atomic


def _write(files: dict[str, bytes]):  # noqa: ANN202
    def write(d: Path) -> None:
        for name, data in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)

    return write


def test_write_then_hash(tmp_path: Path) -> None:
    sha = write_dir_atomic(tmp_path / "a1", _write({"w.bin": b"123", "sub/c.json": b"{}"}))
    assert (tmp_path / "a1" / "sub" / "c.json").read_bytes() == b"{}"
    assert sha == dir_sha256(tmp_path / "a1")
    assert sha != write_dir_atomic(tmp_path / "a2", _write({"w.bin": b"124", "sub/c.json": b"{}"}))


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def boom(d: Path) -> None:
        (d / "half").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dir_atomic(tmp_path / "a1", boom)
    assert list(tmp_path.iterdir()) == []


def test_artifacts_are_immutable(tmp_path: Path) -> None:
    write_dir_atomic(tmp_path / "a1", _write({"x": b"1"}))
    with pytest.raises(FileExistsError):
        write_dir_atomic(tmp_path / "a1", _write({"x": b"2"}))
    assert (tmp_path / "a1" / "x").read_bytes() == b"1"


def test_sweep_removes_interrupted_writes(tmp_path: Path) -> None:
    (tmp_path / ".tmp-a1-deadbeef").mkdir()
    (tmp_path / "a2").mkdir()
    assert sweep_temp(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a2"]
