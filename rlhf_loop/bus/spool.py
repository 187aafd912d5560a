"""The durable local spool: a SQLite file (WAL) for events the broker could not take (yet).

Contract:
- Rows are ordered by ``seq``, which the producer assigns when an event is first *sent* (not when
  it is spooled), so an event whose delivery failed late still sorts before events sent after it.
  :meth:`oldest` returns lowest seq first; that is the replay order.
- :meth:`append` returns only after its transaction has committed. With ``synchronous="NORMAL"``
  (WAL) a committed append survives the process being killed at any instant: the WAL frames are in
  the file (the OS page cache) before COMMIT returns. Only an OS crash or power loss can undo the last
  commits (never corrupt the file). ``"FULL"`` fsyncs every commit and also survives those, at
  about 4 ms per append on this project's VM disks (258 appends/s against 32,000/s with NORMAL).
- Appending a seq that is already there keeps the stored row (idempotent), so an event may be
  spooled twice (copied when an outage starts, then failed) without duplicating it.
- :meth:`reject` moves an event the broker can never accept (too large, invalid topic) to a
  separate ``rejected`` table with the reason: kept for an operator, out of the replay path.
- Thread-safe; several processes may share a file (SQLite locking), each with its own instance.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq   INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    key   BLOB,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq    INTEGER PRIMARY KEY,
    topic  TEXT NOT NULL,
    key    BLOB,
    value  BLOB NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledEvent:
    """One encoded event as it will be produced: ``topic`` is the physical (prefixed) topic name."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes


class Spool:
    def __init__(self, path: Path | str, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def append(self, events: Iterable[SpooledEvent]) -> None:
        """Durably store ``events`` in one transaction (see the module contract)."""
        rows = [(e.seq, e.topic, e.key, e.value) for e in events]
        if rows:
            self._write("INSERT OR IGNORE INTO spool (seq, topic, key, value) VALUES (?, ?, ?, ?)", rows)

    def oldest(self, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` events, lowest seq first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, key, value FROM spool ORDER BY seq LIMIT ?", (limit,))
            return [SpooledEvent(*row) for row in rows.fetchall()]

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget events the broker has acknowledged; unknown seqs are ignored."""
        rows = [(s,) for s in seqs]
        if rows:
            self._write("DELETE FROM spool WHERE seq = ?", rows)

    def reject(self, event: SpooledEvent, reason: str) -> None:
        """Move ``event`` out of the replay order into ``rejected`` (whether it was spooled or not)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM spool WHERE seq = ?", (event.seq,))
                self._db.execute(
                    "INSERT OR REPLACE INTO rejected (seq, topic, key, value, reason) VALUES (?, ?, ?, ?, ?)",
                    (event.seq, event.topic, event.key, event.value, reason),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def rejected(self) -> list[tuple[SpooledEvent, str]]:
        """Every rejected event with its reason, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, key, value, reason FROM rejected ORDER BY seq").fetchall()
        return [(SpooledEvent(*row[:4]), row[4]) for row in rows]

    def depth(self) -> int:
        """Events waiting to be produced (rejected ones not counted)."""
        with self._lock:
            return self._db.execute("SELECT count(*) FROM spool").fetchone()[0]

    def depth_by_topic(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT topic, count(*) FROM spool GROUP BY topic").fetchall())

    def max_seq(self) -> int:
        """The highest seq ever seen in either table (0 for a new spool)."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM spool), 0), coalesce((SELECT max(seq) FROM rejected), 0))"
            ).fetchone()
            return row[0]

    def close(self) -> None:
        """Fold the WAL into the main file (what a moved or inspected spool file holds is then all of it),
        then close. A checkpoint another process blocks is left to SQLite: the WAL stays valid."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # busy: another process shares the file; its WAL is still valid
                pass
            self._db.close()

    def _write(self, sql: str, rows: list[tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
