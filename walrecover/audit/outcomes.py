"""What became of each recovered row change: the audit's ``outcome`` column, explained.

The values are the one enum :class:`~walrecover.stream.model.Outcome`. Replay knows two
outcomes when it applies a change (``applied``, ``no_row``) and marks changes it read past the
stop point ``after_stop``. Two more
are only known once later changes have been seen, so the audit computes them when it closes:
an applied change whose row a later applied change updated is ``superseded``; one whose row a
later applied delete or truncate took away is ``removed``. A change is *live* (its after-image is
in the rebuilt table) exactly when its outcome is ``applied`` and it is an insert or update: that
is what reconciling an audit file sums.
"""

from __future__ import annotations

from typing import Final

from ..stream.model import Outcome

#: Every outcome, in the order reports list them.
ALL: Final[tuple[Outcome, ...]] = (
    Outcome.APPLIED,
    Outcome.SUPERSEDED,
    Outcome.REMOVED,
    Outcome.NO_ROW,
    Outcome.AFTER_STOP,
)

#: One line per outcome for people reading a report (see :func:`describe` for a change's own).
DESCRIPTIONS: Final[dict[str, str]] = {
    Outcome.APPLIED: "applied to the rebuilt table",
    Outcome.SUPERSEDED: "applied, then replaced by a later change to the same row",
    Outcome.REMOVED: "applied, then removed by a later delete or truncate",
    Outcome.NO_ROW: "not applied: no row had its key (the row predates the slot)",
    Outcome.AFTER_STOP: "left out: committed at or after the stop point",
}

#: What an applied change of each op leaves in the rebuilt table.
_APPLIED: Final[dict[str, str]] = {
    "insert": "inserted; this row is in the rebuilt table",
    "update": "updated; this version of the row is in the rebuilt table",
    "delete": "deleted; the row is not in the rebuilt table",
    "truncate": "truncated; the rows before it are not in the rebuilt table",
}
_VERB: Final[dict[str, str]] = {
    "insert": "inserted",
    "update": "updated",
    "delete": "deleted",
    "truncate": "truncated",
}

#: Ops whose after-image a live row carries.
LIVE_OPS: Final[tuple[str, ...]] = ("insert", "update")


def is_live(op: str, outcome: str) -> bool:
    """True if a change with this op and outcome is a row of the rebuilt table."""
    return outcome == Outcome.APPLIED and op in LIVE_OPS


def describe(outcome: str, op: str | None = None) -> str:
    """A person's reading of what became of a change: by its op and outcome when the op is
    given (an applied delete removed its row, an applied insert is a row of the table), else by
    the outcome alone. Unknown values are returned as they are."""
    if op is None or op not in _VERB:
        return DESCRIPTIONS.get(outcome, outcome)
    if outcome == Outcome.APPLIED:
        return _APPLIED[op]
    if outcome in (Outcome.SUPERSEDED, Outcome.REMOVED) and op in LIVE_OPS:
        return f"{_VERB[op]}, then {DESCRIPTIONS[outcome].removeprefix('applied, then ')}"
    if outcome == Outcome.AFTER_STOP:
        return f"not applied: this {op} committed at or after the stop point"
    return DESCRIPTIONS.get(outcome, outcome)
