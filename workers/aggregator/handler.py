"""The aggregator's composer: one consumed batch -> store responses, feedback and choices -> re-derive
the pairs of every prompt group the batch touched (prompt-group, comparison and choice pairs: a
comparison group lies within one prompt group), all in one DB transaction. The consumer commits
the batch's offsets only after this returns (so after the DB commit).

Redelivered events are harmless: the SQL constraints make their writes no-ops, and the writes
report which rows they changed (RETURNING), so only the prompt groups that changed are re-derived
and only ratings written for the first time are counted into the Redis window.

Forgotten users: events of a user in ``forgotten_users`` are dropped, and a UserForgotten tombstone records
its user there and deletes what is stored of them (after the batch's own writes), so a replay from the start
brings none of their data back in whichever order the topics are read.

A batch the database refuses for its data (DataError, IntegrityError: a valid event with, say, a
token count beyond the column's range) is split in halves, each its own transaction, down to the
single events it refuses; those are returned as Refused for the consumer to dead-letter, and the rest
is stored. Any other error (the database unreachable) raises: the batch is redelivered.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.bus.consumer import Record, Refused
from rlhf_loop.metrics import (
    AGGREGATE_BATCH_SECONDS,
    AGGREGATED_EVENTS,
    FEEDBACK_AWAITING_RESPONSE,
    ORPHAN_FEEDBACK_DROPPED,
    PAIRS_BUILT,
)
from rlhf_loop.preferences.comparisons import group_pairs
from rlhf_loop.preferences.pairs import PairRules
from schemas.events import ChoiceMade, FeedbackGiven, ResponseLogged, UserForgotten
from workers.aggregator.forgotten import forgotten_among, record_forgotten
from workers.aggregator.group_reads import choices_by_group, votes_by_group
from workers.aggregator.hot_state import HotState
from workers.aggregator.store import (
    delete_user_data,
    insert_responses,
    orphan_feedback,
    replace_pairs,
    upsert_choices,
    upsert_feedback,
)

log = logging.getLogger(__name__)
REFUSED_DATA = (DataError, IntegrityError)
"""What the database says about the data itself: retrying the same rows cannot change it."""


def rederive(session: Session, prompt_hashes: Iterable[str], rules: PairRules) -> int:
    """Recompute and store the pairs of these prompt groups; returns how many pairs are new."""
    groups = votes_by_group(session, prompt_hashes, rules.max_votes_per_group, rules.max_votes_per_rater)
    choices = choices_by_group(session, groups, rules.max_votes_per_group)
    pairs = [p for group, votes in groups.items() for p in group_pairs(group, votes, choices[group], rules)[0]]
    return replace_pairs(session, groups, pairs)


class AggregatorHandler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        rules: PairRules,
        hot: HotState | None = None,
        orphan_ttl_s: float = 7 * 24 * 3600,
        housekeeping_s: float = 10.0,
    ) -> None:
        self._sessions = sessions
        self._rules = rules
        self._hot = hot
        self._orphan_ttl_s = orphan_ttl_s
        self._housekeeping_s = housekeeping_s
        self._last_housekeeping = 0.0

    def __call__(self, records: list[Record]) -> list[Refused]:
        started = time.perf_counter()
        records = self._not_forgotten(records)
        refused, written = self._store(records) if records else ([], set())
        gone = {id(x.record) for x in refused}
        stored = [r.event for r in records if id(r) not in gone]
        if self._hot:
            self._hot.stored([e for e in stored if isinstance(e, FeedbackGiven) and e.event_id in written])
        for kind, of_kind in (("response", ResponseLogged), ("feedback", FeedbackGiven), ("choice", ChoiceMade)):
            AGGREGATED_EVENTS.labels(kind).inc(sum(isinstance(e, of_kind) for e in stored))
        AGGREGATE_BATCH_SECONDS.observe(time.perf_counter() - started)
        if time.monotonic() - self._last_housekeeping >= self._housekeeping_s:
            self.housekeeping()
        return refused

    def _not_forgotten(self, records: list[Record]) -> list[Record]:
        """Drop the events of users forgotten earlier: a replay must not bring them back."""
        refs = {r.event.user_ref for r in records if not isinstance(r.event, UserForgotten)}  # type: ignore[attr-defined]
        with self._sessions() as session:
            gone = forgotten_among(session, refs)
        return [r for r in records if isinstance(r.event, UserForgotten) or r.event.user_ref not in gone]  # type: ignore[attr-defined]

    def _store(self, records: list[Record]) -> tuple[list[Refused], set[uuid.UUID]]:
        """Store the records' events (a tombstone deletes its user's rows) and re-derive the groups whose
        rows changed, in one transaction; if the database refuses the data, split (see the module
        docstring). Returns the refused records and the event ids written."""
        responses = [r.event for r in records if isinstance(r.event, ResponseLogged)]
        feedback = [r.event for r in records if isinstance(r.event, FeedbackGiven)]
        choices = [r.event for r in records if isinstance(r.event, ChoiceMade)]
        try:
            with self._sessions.begin() as session:
                written = insert_responses(session, responses)
                written |= upsert_feedback(session, feedback)
                written |= upsert_choices(session, choices)
                touched = {e.prompt_hash for e in [*responses, *feedback, *choices] if e.event_id in written}
                for e in (r.event for r in records if isinstance(r.event, UserForgotten)):
                    record_forgotten(session, e.user_ref)
                    touched |= delete_user_data(session, e.user_ref)
                new_pairs = rederive(session, touched, self._rules)
        except REFUSED_DATA as e:
            if len(records) > 1:
                half = len(records) // 2
                (refused_a, written_a), (refused_b, written_b) = (
                    self._store(records[:half]),
                    self._store(records[half:]),
                )
                return refused_a + refused_b, written_a | written_b
            reason = f"the database refuses it: {type(e.orig).__name__}: {str(e.orig).strip()[:500]}"
            log.error("%s[%d]@%d: %s", records[0].topic, records[0].partition, records[0].offset, reason)
            return [Refused(records[0], reason)], set()
        PAIRS_BUILT.inc(new_pairs)
        log.info(
            "stored %d responses, %d ratings, %d choices (%d new or newer); %d groups re-derived, %d new pairs",
            len(responses),
            len(feedback),
            len(choices),
            len(written),
            len(touched),
            new_pairs,
        )
        return [], written

    def housekeeping(self) -> None:
        """Bound the ratings waiting for their response: count them, drop those older than the TTL."""
        self._last_housekeeping = time.monotonic()
        with self._sessions.begin() as session:
            waiting, dropped = orphan_feedback(session, datetime.now(UTC) - timedelta(seconds=self._orphan_ttl_s))
        FEEDBACK_AWAITING_RESPONSE.set(waiting)
        if dropped:
            ORPHAN_FEEDBACK_DROPPED.inc(dropped)
            log.warning("dropped %d ratings whose response never arrived", dropped)
