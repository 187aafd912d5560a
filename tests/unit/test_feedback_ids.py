"""The batch route's event ids: canonical version-4 UUID strings, all different."""

from __future__ import annotations

import uuid

from services.inference.routes.feedback import _event_ids


def test_event_ids_are_canonical_random_uuids() -> None:
    ids = _event_ids(2000)
    assert len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert _event_ids(0) == []
