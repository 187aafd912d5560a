"""The aggregator's composer: one consumed batch -> store responses, feedback and choices -> re-derive
the pairs of every prompt group the batch touched (prompt-group, comparison and choice pairs: a
comparison group lies within one prompt group), all in one DB transaction. The consumer commits
the batch's offsets only after this returns (so after the DB commit).

Redelivered events are harmless: the Redis dedup check skips work for events already stored, and
if Redis forgot them, the SQL constraints make their writes no-ops.

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
from workers.aggregator.hot_state import HotState
from workers.aggregator.store import (
    choices_by_group,
    delete_user_data,
    insert_responses,
    orphan_feedback,
    replace_pairs,
    upsert_choices,
    upsert_feedback,
    votes_by_group,
)

log = logging.getLogger(__name__)
REFUSED_DATA = (DataError, IntegrityError)
"""What the database says about the data itself: retrying the same rows cannot change it."""


def rederive(session: Session, prompt_hashes: Iterable[str], rules: PairRules) -> int:
    """Recompute and store the pairs of these prompt groups; returns how many pairs are new."""
    groups = votes_by_group(session, prompt_hashes)
    choices = choices_by_group(session, groups)
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
        events = [r.event for r in records]
        fresh_ids = {id(e) for e in (self._hot.unseen(events) if self._hot else events)}
        fresh = self._not_forgotten([r for r in records if id(r.event) in fresh_ids])
        refused = self._store(fresh) if fresh else []
        gone = {id(x.record) for x in refused}
        stored = [r.event for r in fresh if id(r) not in gone]
        responses = [e for e in stored if isinstance(e, ResponseLogged)]
        feedback = [e for e in stored if isinstance(e, FeedbackGiven)]
        choices = [e for e in stored if isinstance(e, ChoiceMade)]
        if self._hot:
            self._hot.mark_stored(stored)
            self._hot.count(feedback)
            self._hot.rates()
        AGGREGATED_EVENTS.labels("response").inc(len(responses))
        AGGREGATED_EVENTS.labels("feedback").inc(len(feedback))
        AGGREGATED_EVENTS.labels("choice").inc(len(choices))
        AGGREGATE_BATCH_SECONDS.observe(time.perf_counter() - started)
        if time.monotonic() - self._last_housekeeping >= self._housekeeping_s:
            self.housekeeping()
        return refused

    def _not_forgotten(self, records: list[Record]) -> list[Record]:
        refs = {r.event.user_ref for r in records if not isinstance(r.event, UserForgotten)}  # type: ignore[attr-defined]
        with self._sessions() as session:
            gone = forgotten_among(session, refs)
        return [r for r in records if isinstance(r.event, UserForgotten) or r.event.user_ref not in gone]  # type: ignore[attr-defined]

    def _store(self, records: list[Record]) -> list[Refused]:
        """Store the records' events and re-derive their groups in one transaction; if the database
        refuses the data, split (see the module docstring). Returns the refused records."""
        responses = [r.event for r in records if isinstance(r.event, ResponseLogged)]
        feedback = [r.event for r in records if isinstance(r.event, FeedbackGiven)]
        choices = [r.event for r in records if isinstance(r.event, ChoiceMade)]
        try:
            with self._sessions.begin() as session:
                insert_responses(session, responses)
                upsert_feedback(session, feedback)
                upsert_choices(session, choices)
                touched = {e.prompt_hash for e in [*responses, *feedback, *choices]}
                for e in (r.event for r in records if isinstance(r.event, UserForgotten)):
                    record_forgotten(session, e.user_ref)
                    touched |= delete_user_data(session, e.user_ref)
                new_pairs = rederive(session, touched, self._rules)
        except REFUSED_DATA as e:
            if len(records) > 1:
                half = len(records) // 2
                return self._store(records[:half]) + self._store(records[half:])
            reason = f"the database refuses it: {type(e.orig).__name__}: {str(e.orig).strip()[:500]}"
            log.error("%s[%d]@%d: %s", records[0].topic, records[0].partition, records[0].offset, reason)
            return [Refused(records[0], reason)]
        PAIRS_BUILT.inc(new_pairs)
        log.info(
            "stored %d responses, %d ratings, %d choices; %d new pairs",
            len(responses),
            len(feedback),
            len(choices),
            new_pairs,
        )
        return []

    def housekeeping(self) -> None:
        """Bound the ratings waiting for their response: count them, drop those older than the TTL."""
        self._last_housekeeping = time.monotonic()
        with self._sessions.begin() as session:
            waiting, dropped = orphan_feedback(session, datetime.now(UTC) - timedelta(seconds=self._orphan_ttl_s))
        FEEDBACK_AWAITING_RESPONSE.set(waiting)
        if dropped:
            ORPHAN_FEEDBACK_DROPPED.inc(dropped)
            log.warning("dropped %d ratings whose response never arrived", dropped)
