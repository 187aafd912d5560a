"""Forgetting a user: their data goes, and every pair it contributed to is re-derived, in one transaction; the
user joins the forgotten users (the aggregator drops their events from then on), and a UserForgotten tombstone
on ``rlhf.forgotten.v1`` tells every consumer, a replay from the start included. The dataset snapshots are the
training worker's (``workers/training/forget.py``): the CLI runs both."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.bus.admin import ensure_topics
from rlhf_loop.bus.codec import encode
from rlhf_loop.bus.consumer import make_dead_letter_producer
from rlhf_loop.preferences.pairs import PairRules
from rlhf_loop.settings import KafkaSettings
from schemas.events import Topics, UserForgotten
from schemas.tables import Feedback, Response
from workers.aggregator.forgotten import record_forgotten
from workers.aggregator.handler import rederive
from workers.aggregator.store import delete_user_data


@dataclass(frozen=True)
class Forgotten:
    """What was deleted of a user, for the snapshots' rewrite."""

    groups: set[str] = field(default_factory=set)
    """Prompt groups (prompt_hash) the user touched; their pairs were re-derived."""
    responses: set[tuple[str, str]] = field(default_factory=set)
    """(prompt, response) of the responses generated for the user."""
    rated: set[tuple[str, str]] = field(default_factory=set)
    """(prompt, response) of the responses the user rated."""


def forget_user(sessions: sessionmaker[Session], user_ref: str, rules: PairRules) -> Forgotten:
    """Record ``user_ref`` as forgotten and delete their ratings, choices and responses (with them their
    comparison groups), re-deriving the pairs of the groups they touched. Idempotent."""
    with sessions.begin() as session:
        record_forgotten(session, user_ref)
        own = select(Response.prompt, Response.response).where(Response.user_ref == user_ref)
        responses = set(session.execute(own))
        rated = set(
            session.execute(
                select(Response.prompt, Response.response)
                .join(Feedback, Feedback.response_id == Response.response_id)
                .where(Feedback.user_ref == user_ref)
            )
        )
        groups = delete_user_data(session, user_ref)
        rederive(session, groups, rules)
    return Forgotten(groups, {tuple(r) for r in responses}, {tuple(r) for r in rated})


def publish_tombstone(bootstrap_servers: str, kafka: KafkaSettings, user_ref: str) -> UserForgotten:
    """Produce the user's UserForgotten event (keyed by user_ref) and wait for the broker's acknowledgement.
    Raises kafka.errors.KafkaError when it cannot; calling it again is harmless."""
    event = UserForgotten(user_ref=user_ref)
    topic = kafka.topic_prefix + Topics.FORGOTTEN
    ensure_topics(bootstrap_servers, [topic], kafka.partitions)
    producer = make_dead_letter_producer(bootstrap_servers, kafka)
    try:
        producer.send(topic, key=user_ref.encode(), value=encode(event)).get(timeout=kafka.send_timeout_s * 5)
    finally:
        producer.close(timeout=kafka.send_timeout_s)
    return event
