"""What replay hands on: each change with its outcome (the audit's
:class:`~walrecover.stream.model.Outcome`), the audit that receives them, and the source
transaction being applied (with how messages name it).

Shared by the replay loop (:mod:`.replay`), the batch applier (:mod:`.apply`), the schema
follower (:mod:`.schema`) and the audit (:class:`~walrecover.audit.writer.AuditWriter`, the
:class:`AuditSink`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from ..stream.lsn import Lsn
from ..stream.model import Begin, Change, Outcome, Values

__all__ = [
    "AppliedChange",
    "AuditSink",
    "Outcome",
    "Txn",
    "applied_change",
    "at",
    "named",
    "stop_hint",
]


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """One recovered row change, its transaction, and what replay did with it."""

    change: Change
    xid: int | None
    commit_lsn: Lsn | None
    end_lsn: Lsn | None
    commit_time: datetime | None
    outcome: Outcome
    #: The whole after-image when replay learned values the stream left out (unchanged TOAST).
    after: Values | None = None


class _AppliedTwin:
    """:class:`AppliedChange`'s slots, with a plain ``__init__`` (see :func:`applied_change`)."""

    __slots__ = ("after", "change", "commit_lsn", "commit_time", "end_lsn", "outcome", "xid")

    def __init__(
        self,
        change: Change,
        xid: int | None,
        commit_lsn: Lsn | None,
        end_lsn: Lsn | None,
        commit_time: datetime | None,
        outcome: Outcome,
        after: Values | None,
    ) -> None:
        self.change = change
        self.xid = xid
        self.commit_lsn = commit_lsn
        self.end_lsn = end_lsn
        self.commit_time = commit_time
        self.outcome = outcome
        self.after = after


def applied_change(
    change: Change,
    xid: int | None,
    commit_lsn: Lsn | None,
    end_lsn: Lsn | None,
    commit_time: datetime | None,
    outcome: Outcome,
    after: Values | None = None,
) -> AppliedChange:
    """``AppliedChange(...)`` made about three times faster, for the applier's every change: a
    twin with the same slots, filled, becomes an :class:`AppliedChange` (the way
    :mod:`walrecover.stream.making` makes a :class:`Change`)."""
    made: Any = _AppliedTwin(change, xid, commit_lsn, end_lsn, commit_time, outcome, after)
    made.__class__ = AppliedChange
    return cast(AppliedChange, made)


class AuditSink(Protocol):
    """Receives applied changes in stream order, in step with the target's transactions.

    :class:`~walrecover.audit.writer.AuditWriter` is the implementation; replay calls ``commit``
    just before it commits the same changes to the target, and mirrors its savepoints.
    """

    def start(self, committed: Lsn | None, resuming: bool) -> None:
        """Keep what the target committed up to ``committed`` when resuming; else start empty."""

    def write(self, batch: Sequence[AppliedChange]) -> None:
        """Take a batch of applied changes."""

    def savepoint(self) -> None:
        """Changes from here on may be taken back."""

    def rollback_to_savepoint(self) -> None:
        """Take back the changes since the savepoint."""

    def release_savepoint(self) -> None:
        """Keep the changes since the savepoint."""

    def commit(self, upto: Lsn | None) -> None:
        """Seal everything taken so far as committed with the target at ``upto``."""

    def unpublished(self) -> Lsn | None:
        """The checkpoint of sealed parts an earlier run left unpublished, or None."""


@dataclass(slots=True)
class Txn:
    """A source transaction as replay reads it (its commit facts fill in at its Commit)."""

    xid: int | None
    commit_lsn: Lsn | None
    end_lsn: Lsn | None
    commit_time: datetime | None
    #: The stop point was decided at its Begin (else only its Commit tells).
    decided: bool
    #: Already applied by an earlier, interrupted run: its changes are skipped.
    skip: bool = False
    #: Skipped before its commit position was known (test_decoding's Begin): its Commit must
    #: prove it was applied.
    skip_unsure: bool = False
    changes: int = 0
    #: Changes of any table, and of the table, seen in it (skipped or not).
    events: int = 0
    ours: int = 0

    @classmethod
    def of(cls, begin: Begin, *, decided: bool = True) -> Txn:
        return cls(begin.xid, begin.commit_lsn, begin.end_lsn, begin.commit_time, decided)

    def applied(
        self, change: Change, outcome: Outcome, after: Values | None = None
    ) -> AppliedChange:
        """``change`` of this transaction, for the audit."""
        return applied_change(
            change, self.xid, self.commit_lsn, self.end_lsn, self.commit_time, outcome, after
        )


def at(change: Change, txn: Txn | None) -> str:
    """Where a change is, for messages: its LSN, else its transaction (capture files)."""
    if change.lsn is not None:
        return f" at LSN {change.lsn}"
    xid = change.xid if change.xid is not None else (txn.xid if txn else None)
    return f" in transaction {xid}" if xid is not None else ""


def stop_hint(txn: Txn | None) -> str:
    """The stop option that leaves out ``txn``."""
    if txn is not None and txn.commit_lsn is not None:
        return f"--stop-before-lsn {txn.commit_lsn}"
    if txn is not None and txn.xid is not None:
        return f"--stop-before-xid {txn.xid}"
    return "a --stop-before option"


def named(xid: int | None, commit_lsn: Lsn | None, end_lsn: Lsn | None) -> str:
    """A transaction for messages: its xid and the LSN the stream gives (commit, else end)."""
    lsn = f"commit LSN {commit_lsn}" if commit_lsn is not None else None
    if lsn is None and end_lsn is not None:
        lsn = f"end LSN {end_lsn}"
    if xid is None:
        return f"the transaction at {lsn}" if lsn else "a later transaction"
    return f"transaction {xid}" + (f" ({lsn})" if lsn else "")
