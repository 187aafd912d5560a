"""Topic administration: create our topics if they do not exist (idempotent)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError


def ensure_topics(bootstrap_servers: str, topics: Iterable[str], partitions: int, timeout_ms: int = 10_000) -> None:
    """Create each topic that is missing with ``partitions`` partitions; existing ones are left as they are.

    Raises kafka.errors.KafkaError when the broker cannot be reached within about ``timeout_ms``.
    The admin client runs on a daemon thread with a hard deadline: kafka-python's bootstrap can
    wait forever on a connection that a half-recovered network accepted but never answers, and a
    caller (the spool replayer) must never hang on it.
    """
    topics = sorted(set(topics))
    outcome: list[BaseException | None] = []

    def create() -> None:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms
            )
        except KafkaError as e:
            outcome.append(e)
            return
        try:
            missing = set(topics) - set(admin.list_topics())
            if missing:
                try:
                    admin.create_topics([NewTopic(t, partitions, 1) for t in sorted(missing)], timeout_ms=timeout_ms)
                except TopicAlreadyExistsError:
                    pass  # another process created it between our list and create
            outcome.append(None)
        except KafkaError as e:
            outcome.append(e)
        finally:
            admin.close()

    worker = threading.Thread(target=create, name="ensure-topics", daemon=True)
    worker.start()
    worker.join(timeout_ms / 1000 * 2 + 1)
    if not outcome:
        raise KafkaTimeoutError(f"no answer from {bootstrap_servers} while creating topics")
    if outcome[0] is not None:
        raise outcome[0]
