"""Shared output of every benchmark: a table, then one JSON line as the very last line."""

from __future__ import annotations

import json
import platform
import time

import numpy as np
from rich.console import Console
from rich.table import Table


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    a = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def emit(title: str, columns: list[str], rows: list[list[object]], summary: dict[str, object]) -> None:
    """Print the table to stderr-free stdout, then the JSON summary as the last line."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:,.2f}" if isinstance(v, float) else str(v) for v in r])
    Console(width=140).print(table)
    summary = {**summary, "machine": f"{platform.machine()} {_cpus()} cpu", "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps(summary), flush=True)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
