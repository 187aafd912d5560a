"""What the re-derivation of a prompt group reads, bounded: each batch re-derives the groups it
changed, and one popular group (any app key can make one by varying ``user_ref``) must not make that
grow without limit. A group's earliest ``limit`` ratings and choices are read (``pairs.py`` rule 0),
in one query for all the batch's groups. Functions take a Session and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import column, func, or_, select, true, values
from sqlalchemy.orm import Session

from rlhf_loop.preferences.comparisons import Choice
from rlhf_loop.preferences.pairs import PairRules, Vote
from schemas.tables import ComparisonChoice, Feedback, Response
from workers.aggregator.store import is_postgresql

GROUP_READ_LIMIT = PairRules().max_votes_per_group


def _planner(setting: str):  # noqa: ANN202 - a select
    """Sorting and bitmap scans off (or back on) for the rest of the transaction. The planner sizes a
    group by the average group: for the one huge group it would read all of it and sort, where the
    index scan in order stops at the limit, and that is the right plan for a group of any size.
    JIT compilation stays off for the rest of the transaction: the penalty on the one sort the read
    needs (rule 1's rank) inflates its estimated cost past the JIT threshold, and compiling costs more
    than any of these short statements."""
    return select(
        func.set_config("enable_sort", setting, True),
        func.set_config("enable_bitmapscan", setting, True),
        func.set_config("jit", "off", True),
    )


def _bounded_by_group(session: Session, hashes: list[str], rows, group_col, limit: int, then=None, last=None):  # noqa: ANN001, ANN202
    """``rows`` (a select of one table, ordered, to which the ``group_col`` filter is added) limited to
    ``limit`` per prompt group, for every group of ``hashes``; ``then(rows_subquery)``, if given,
    builds a select from those rows (a join), and ``last(that_subquery)``, if given, the final select
    over it. On PostgreSQL one query (a LATERAL per group, each an index range scan that stops at the
    limit), elsewhere one query per group."""
    then = then or (lambda sub: select(sub))
    last = last or (lambda stmt: stmt)
    if not is_postgresql(session):
        return [
            row
            for h in hashes
            for row in session.connection().execute(last(then(rows.where(group_col == h).limit(limit).subquery())))
        ]
    wanted = values(column("h", group_col.type), name="wanted").data([(h,) for h in hashes])
    per_group = rows.where(group_col == wanted.c.h).limit(limit).lateral()
    session.execute(_planner("off"))
    found = session.connection().execute(last(then(per_group).select_from(wanted.join(per_group, true())))).all()
    session.execute(_planner("on"))
    return found


def votes_by_group(
    session: Session, prompt_hashes: Iterable[str], limit: int = GROUP_READ_LIMIT, per_rater: int | None = None
) -> dict[str, list[Vote]]:
    """Current votes of each prompt group on responses that have arrived: of the group's earliest
    ``limit`` stored ratings by (created_at, response_id, user_ref), those whose response is stored
    (a rating waiting for its response holds its place in the window but counts only once the
    response arrives; ``pairs.counted_votes`` is the same rule once every response has arrived).
    One group's read is bounded however popular its prompt (an index covers the order).

    With ``per_rater``, a user's votes beyond their earliest ``per_rater`` in the group (by created_at,
    response_id: ``pairs.capped_votes``) are left out unless their response is in a comparison group:
    the pairs derived from what is returned are the same (prompt-group pairs count only a rater's
    earliest votes, comparison pairs every vote in a comparison), and the database drops the rest
    instead of Python building votes that count for nothing."""
    hashes = sorted(set(prompt_hashes))
    groups: dict[str, list[Vote]] = {h: [] for h in hashes}
    if not hashes:
        return groups
    rows = select(
        Feedback.prompt_hash, Feedback.response_id, Feedback.user_ref, Feedback.rating, Feedback.created_at
    ).order_by(Feedback.created_at, Feedback.response_id, Feedback.user_ref)

    def with_response(sub):  # noqa: ANN001, ANN202 - the limited ratings, a (lateral) subquery
        # Python's order of ids (code points) is the C collation's, whatever the database's default
        by_id = sub.c.response_id.collate("C") if is_postgresql(session) else sub.c.response_id
        rater = (sub.c.prompt_hash, sub.c.user_ref)
        rank = func.row_number().over(partition_by=rater, order_by=(sub.c.created_at, by_id))
        return select(sub, Response.text_key, Response.comparison_id, rank.label("rater_rank")).join(
            Response, Response.response_id == sub.c.response_id
        )

    def counted(stmt):  # noqa: ANN001, ANN202 - the ratings with their responses
        found = stmt.subquery()
        kept = select(*[found.c[n] for n in ("prompt_hash", "response_id", "user_ref", "rating", "created_at")])
        kept = kept.add_columns(found.c.text_key, found.c.comparison_id).order_by(
            found.c.prompt_hash, found.c.created_at, found.c.response_id, found.c.user_ref
        )
        if per_rater is None:
            return kept
        return kept.where(or_(found.c.rater_rank <= per_rater, found.c.comparison_id.is_not(None)))

    for group, r, u, rating, at, key, comparison in _bounded_by_group(
        session, hashes, rows, Feedback.prompt_hash, limit, with_response, counted
    ):
        groups[group].append(Vote(r, u, rating, at, key, comparison))
    return groups


def choices_by_group(
    session: Session, prompt_hashes: Iterable[str], limit: int = GROUP_READ_LIMIT
) -> dict[str, list[Choice]]:
    """Current choices of each prompt group (its earliest ``limit`` by created_at, comparison, user),
    each with only the candidates that have arrived and belong to its comparison and its user (a
    choice whose chosen response is missing makes no pair until it arrives). Two queries for all
    groups, the second only if there are choices."""
    hashes = sorted(set(prompt_hashes))
    groups: dict[str, list[Choice]] = {h: [] for h in hashes}
    if not hashes:
        return groups
    rows = select(
        ComparisonChoice.prompt_hash,
        ComparisonChoice.comparison_id,
        ComparisonChoice.user_ref,
        ComparisonChoice.chosen_response_id,
        ComparisonChoice.candidate_response_ids,
    ).order_by(ComparisonChoice.created_at, ComparisonChoice.comparison_id, ComparisonChoice.user_ref)
    stored = _bounded_by_group(session, hashes, rows, ComparisonChoice.prompt_hash, limit)
    if not stored:
        return groups
    in_comparisons = Response.comparison_id.in_(sorted({c for _, c, _, _, _ in stored}))
    members = {
        tuple(row)
        for row in session.execute(
            select(Response.comparison_id, Response.user_ref, Response.response_id).where(in_comparisons)
        )
    }
    for group, comparison, user, chosen, candidates in stored:
        arrived = tuple(r for r in candidates if (comparison, user, r) in members)
        groups[group].append(Choice(comparison, user, chosen, arrived))
    return groups
