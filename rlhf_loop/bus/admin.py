"""Topic administration: create our topics if they do not exist (idempotent)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError


def new_topics(
    names: Iterable[str], partitions: int, replication_factor: int = 1, min_insync_replicas: int = 1
) -> list[NewTopic]:
    """The topic specs to create: ``min.insync.replicas`` is set only above 1 (the broker's default, and
    a single-node broker may not take the config)."""
    configs = {"min.insync.replicas": str(min_insync_replicas)} if min_insync_replicas > 1 else {}
    return [NewTopic(t, partitions, replication_factor, topic_configs=dict(configs)) for t in sorted(set(names))]


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int,
    timeout_ms: int = 10_000,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
) -> None:
    """Create each topic that is missing with ``partitions`` partitions, ``replication_factor`` replicas and
    ``min_insync_replicas``; existing ones are left as they are.

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
                    specs = new_topics(missing, partitions, replication_factor, min_insync_replicas)
                    admin.create_topics(specs, timeout_ms=timeout_ms)
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
