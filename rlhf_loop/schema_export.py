"""Writes the JSON Schema of every event model to ``schemas/jsonschema/<topic>.json``.

The files are checked in for consumers in other languages; a test fails when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

import schemas
from schemas.events import EVENT_TYPES

SCHEMA_DIR = Path(schemas.__file__).parent / "jsonschema"


def render(topic: str) -> str:
    """The JSON Schema text of the event type of ``topic``, stable across runs."""
    schema = EVENT_TYPES[topic].model_json_schema(mode="serialization")
    schema["$id"] = f"urn:rlhf-loop:event:{topic}"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def expected() -> dict[Path, str]:
    return {SCHEMA_DIR / f"{topic}.json": render(topic) for topic in EVENT_TYPES}


def write_all() -> list[Path]:
    """Write every schema file; returns the paths written."""
    files = expected()
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def stale_files() -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    return [p.name for p, text in expected().items() if not p.exists() or p.read_text() != text]
