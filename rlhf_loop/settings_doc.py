"""The configuration table (README), generated from the Settings field docstrings."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from rlhf_loop.settings import Settings

PREFIX = "RLHF_"


def rows(model: type[BaseModel] = Settings, prefix: str = PREFIX) -> list[tuple[str, str, str]]:
    """(environment variable, default, meaning) for every leaf setting, in declaration order."""
    out: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(rows(annotation, env + "__"))
            continue
        out.append((env, _show(field.default), (field.description or "").replace("\n", " ")))
    return out


def _show(value: object) -> str:
    if value == "":
        return '""'
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict | list | bool):
        return json.dumps(value)
    return str(value)


def to_markdown() -> str:
    """A Markdown table of every setting."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{env}` | `{default}` | {doc} |" for env, default, doc in rows()]
    return "\n".join(lines)
