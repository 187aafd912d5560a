"""The adapter registry's states and the only transitions between them.

    candidate -> gated -> awaiting_approval -> approved -> canary -> active -> retired
                   |            |                 |          |         |         |
                   v            v                 |          v         v         |
                rejected     rejected             +------> active  rolled_back   +--> active (a rollback restores it)
                                                           (canary_share = 0)
    canary -> rolled_back

``gated`` keeps the gate's verdict (every check's value and threshold) on the adapter; only a passed
gate leads on to ``awaiting_approval``. ``rejected`` and ``rolled_back`` are final.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    CANDIDATE = "candidate"
    GATED = "gated"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANARY = "canary"
    ACTIVE = "active"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.CANDIDATE: frozenset({State.GATED}),
    State.GATED: frozenset({State.AWAITING_APPROVAL, State.REJECTED}),
    State.AWAITING_APPROVAL: frozenset({State.APPROVED, State.REJECTED}),
    State.APPROVED: frozenset({State.CANARY, State.ACTIVE}),
    State.CANARY: frozenset({State.ACTIVE, State.ROLLED_BACK}),
    State.ACTIVE: frozenset({State.RETIRED, State.ROLLED_BACK}),
    State.RETIRED: frozenset({State.ACTIVE}),
    State.REJECTED: frozenset(),
    State.ROLLED_BACK: frozenset(),
}


class IllegalTransition(ValueError):
    """A state change the registry does not allow."""


def check_transition(current: str, to: str) -> None:
    """Raise IllegalTransition unless ``current -> to`` is in TRANSITIONS."""
    try:
        src, dst = State(current), State(to)
    except ValueError as e:
        raise IllegalTransition(f"unknown state: {e}") from e
    if dst not in TRANSITIONS[src]:
        allowed = ", ".join(sorted(TRANSITIONS[src])) or "none (final state)"
        raise IllegalTransition(f"an adapter in state {src} cannot become {dst} (allowed: {allowed})")
