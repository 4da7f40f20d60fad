"""How a replay ends: its result, or past the stop point, cut short, interrupted or failed.

The replay loop (:mod:`.replay`) stops reading at the stop point; :class:`AfterStop` then sends
the table's changes past it to the audit as ``after_stop`` (or, when nothing was built, finds
the table's first change to name it). The rest are the words for the other endings: a capture
cut inside a transaction before the stop point, updates and deletes that found no row, a table
with no change in the stream, Ctrl-C, and an error that leaves the target incomplete.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from ..errors import (
    ConnectionFailed,
    Interrupted,
    ReplayError,
    StopPointError,
    StreamCutShort,
    TableNotInStream,
    WalrecoverError,
    first_line,
)
from ..stream.lsn import Lsn
from ..stream.model import Begin, Change, Event, Relation, StopPoint, TableName
from .applied import AppliedChange, AuditSink, Outcome, Txn, named
from .progress import Counted, Counts
from .target import Target

if TYPE_CHECKING:
    from .replay import Replayer

#: A transaction for messages: (xid, commit LSN, end LSN).
Where = tuple[int | None, Lsn | None, Lsn | None]


class AfterStop:
    """The table's changes past the stop point: audited as ``after_stop``, or looked for."""

    def __init__(self, table: TableName, *, batch_size: int, cut_ok: bool) -> None:
        self.table = table
        self.batch_size = batch_size
        self.cut_ok = cut_ok
        #: Where the table's first change past the stop point is.
        self.first: Where | None = None

    def audit(
        self, sink: AuditSink, txn: Txn | None, left_out: list[Change], stream: Iterator[Event]
    ) -> None:
        """Send ``left_out`` (the changes of ``txn``, the transaction the stop point left out)
        and the table's changes in the rest of ``stream`` to the audit."""
        rows: list[AppliedChange] = [self._row(change, txn) for change in left_out]
        kept = 0  # rows of transactions that committed; the rest belong to an open one
        try:
            for event in stream:
                if isinstance(event, Change):
                    if event.relation.same_table(self.table.schema, self.table.name):
                        rows.append(self._row(event, txn))
                        if len(rows) >= self.batch_size:
                            sink.write(rows)
                            rows, kept = [], 0
                elif isinstance(event, Begin):
                    txn = Txn.of(event)
                elif txn is not None:
                    txn.commit_lsn = txn.commit_lsn or event.commit_lsn
                    txn.end_lsn = txn.end_lsn or event.end_lsn
                    txn.commit_time = txn.commit_time or event.commit_time
                    kept = len(rows)
        except StreamCutShort:
            if self.cut_ok and rows[:kept]:  # the cut transaction's rows never committed
                sink.write(rows[:kept])
            raise
        if rows:
            sink.write(rows)

    def _row(self, change: Change, txn: Txn | None) -> AppliedChange:
        if self.first is None:
            self.first = (txn.xid, txn.commit_lsn, txn.end_lsn) if txn else (change.xid, None, None)
        if txn is None:
            return AppliedChange(change, change.xid, None, None, None, Outcome.AFTER_STOP)
        return txn.applied(change, Outcome.AFTER_STOP)

    def scan(
        self,
        stream: Iterator[Event],
        stopped: tuple[int | None, Lsn | None] | None,
        other: Callable[[Change], None],
    ) -> Where | None:
        """Read on past the stop point to the table's first change (and its commit), telling
        ``other`` the other tables' changes; None if the table never appears."""
        xid, commit_lsn, end_lsn = (stopped[0], stopped[1], None) if stopped else (None, None, None)
        found = False
        for event in stream:
            if isinstance(event, Begin):
                xid, commit_lsn, end_lsn = event.xid, event.commit_lsn, event.end_lsn
            elif isinstance(event, Change):
                if event.relation.same_table(self.table.schema, self.table.name):
                    found = True
                else:
                    other(event)
            else:
                commit_lsn = commit_lsn or event.commit_lsn
                end_lsn = end_lsn or event.end_lsn
                if found:
                    return xid, commit_lsn, end_lsn
        return (xid, commit_lsn, end_lsn) if found else None


@dataclass(frozen=True, slots=True)
class ReplayResult(Counted):
    """What a replay did to the rebuilt table."""

    into: str
    relation: Relation
    counts: Counts
    rows: int
    #: The first transaction left out by the stop point: (xid, commit LSN), or None.
    stopped_before: tuple[int | None, Lsn | None] | None
    resumed_from: Lsn | None
    seconds: float
    #: ALTER TABLEs in the stream that the rebuilt table followed.
    schema_changes: tuple[str, ...] = ()
    #: What replay could not prove about the rebuilt table (the run ends with exit code 4).
    unproven: tuple[str, ...] = ()
    #: What the user must know about the rebuilt table (a publication now publishes it; a
    #: crash made this run start again; a re-created table left out).
    warnings: tuple[str, ...] = ()
    #: The files (database oid, relfilenode; the oids too, a relation's first file number) of
    #: earlier rebuilt tables of this name walrecover dropped (--force, or emptied by a crash;
    #: this run's and those the progress row kept): its own, not a re-creation of the table.
    dropped_files: frozenset[tuple[int, int]] = frozenset()


def replay_result(replayer: Replayer, resumed_from: Lsn | None, seconds: float) -> ReplayResult:
    """What ``replayer`` did, once it ran."""
    judge, table, into, counts = replayer.judge, replayer.table, replayer.into, replayer.counts
    applier = replayer.applier
    return ReplayResult(
        into=str(into),
        relation=replayer.stream_relation or Relation(table.schema, table.name, ()),
        counts=counts,
        rows=replayer.target.count_rows(),
        stopped_before=replayer.stopped_before,
        resumed_from=resumed_from,
        seconds=seconds,
        schema_changes=tuple(replayer.shape.schema_changes),
        unproven=(
            *replayer.shape.unproven,
            *replayer.unproven,
            *(judge.unproven if judge is not None else ()),
            # Over a baseline of unknown point, a missing row is expected (idempotent replay).
            *(no_row_reason(counts.no_row, table, into) if applier.no_row_unproven else ()),
        ),
        warnings=(
            *replayer.warnings,
            *replayer.target.publication_warnings(table),
            *(judge.warnings if judge is not None else ()),
        ),
        dropped_files=replayer.target.dropped_files,
    )


def unjudged_reason(into: TableName | str) -> str:
    """An earlier run was stopped after ``into`` was complete and before its result was
    recorded: the checks after replay (a table replaced after its last change, changes the
    plugin left out, the publication, the capture's identity) never ran to the end."""
    return (
        f"an earlier run of this command was stopped after {into} was complete and before it "
        "recorded its result, so the checks that follow the replay (a table dropped or "
        "replaced after its last change, changes the plugin left out) did not run for it; "
        "rerun the command with --force to rebuild and check it"
    )


def recorded_unproven(recorded: str | None, into: TableName | str) -> tuple[str, ...]:
    """What the checks after replay found, as a finished recovery recorded it with its
    progress row (JSON, see :func:`.complete.record_result`); without a record (stopped before
    it was written), :func:`unjudged_reason`."""
    try:
        stored = json.loads(recorded) if recorded else None
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        return (unjudged_reason(into),)
    return tuple(str(reason) for reason in stored.get("unproven") or ())


def nothing_before_stop(table: TableName, stop: StopPoint, later: Where | None) -> StopPointError:
    """The error for a table none of whose changes commits before the stop point."""
    where = f": its first change is in {named(*later)}" if later is not None else ""
    return StopPointError(
        f"no change of {table} commits before the stop point "
        f"({stop.describe()}){where}; nothing was built; check the stop point",
        table=str(table),
    )


def xid_not_committed(xid: int, built: TableName | None) -> StopPointError:
    """The error for a stop xid that never commits in the stream; ``built``: the target that
    holds every change (not marked complete), or None when nothing was built."""
    if built is None:
        return StopPointError(
            f"transaction {xid} does not commit in the stream: nothing was "
            "built; check --stop-before-xid",
            xid=xid,
            missing=True,
        )
    return StopPointError(
        f"transaction {xid} does not commit in the stream, so nothing was left"
        f" out: {built} holds every change and is not marked complete; check "
        "--stop-before-xid and rebuild with --force",
        xid=xid,
        table=str(built),
        missing=True,
    )


def cut_reason(
    exc: StreamCutShort,
    txn: Txn | None,
    stop: StopPoint,
    counts: Counts,
    table: TableName,
    into: TableName,
) -> str:
    """Why a capture cut inside a transaction, before the stop point, is not proven exact."""
    before = txn is not None and txn.decided
    last = (
        f"LSN {counts.last_lsn}"
        if counts.last_lsn is not None
        else f"transaction {counts.last_xid}"
        if counts.last_xid is not None
        else "its start"
    )
    return (
        f"the capture ends inside {exc.facts.get('what') or 'a transaction'}"
        + (", which committed before the stop point" if before else "")
        + f", and the stop point ({stop.describe()}) is not in the file: {into} "
        f"is {table} as of the last transaction that committed in the file ({last}), "
        "not at the stop point; the transactions that committed in between are missing. "
        "Capture again from a slot that still holds them, up to the stop point "
        "(pg_recvlogical --endpos), and rebuild with --force"
    )


def no_row_reason(count: int, table: TableName, into: TableName) -> list[str]:
    """Updates and deletes that found no row: the rebuilt table lacks rows the table had."""
    if not count:
        return []
    return [
        f"{count} update(s) or delete(s) of {table} found no row in {into} to change (the audit"
        " marks them no_row): the stream does not hold how those rows came to be (the slot "
        "began after they were written, or the plugin left a change out), so the table had rows"
        f" {into} lacks or holds differently; rebuild from a slot or capture that starts before"
        " the table's first row, or start from a backup of it"
    ]


def not_in_stream(
    table: TableName, seen: list[str], cut: StreamCutShort | None
) -> TableNotInStream:
    """The error for a table with no change in the stream, naming the tables it has."""
    return TableNotInStream(
        f"table {table} has no change in the stream: check --table"
        " and that the slot existed before its rows were written"
        + (f" (tables in the stream: {', '.join(seen[:20])})" if seen else "")
        + (f"; {cut.message}" if cut is not None else ""),
        table=str(table),
        tables=seen,
    )


def interrupted(target: Target, incomplete: bool, committed: Counts) -> Interrupted:
    """The error for Ctrl-C: what the target kept, and that the table is incomplete.

    What was kept is read back from the progress row: Ctrl-C during a commit may stop the
    client after the server committed, before the replayer counted it."""
    done, last = committed.transactions, committed.last_lsn
    with contextlib.suppress(psycopg.Error):
        kept = target.read_progress()
        if kept is not None and not kept.complete and kept.transactions >= done:
            incomplete, done, last = True, kept.transactions, kept.last_commit_lsn
    into = target.into
    if not incomplete:
        return Interrupted(
            "interrupted before anything was committed: nothing was built; rerun the same "
            "command to start again",
            table=str(into),
        )
    lsn = f", up to commit LSN {last}" if last is not None else ""
    return Interrupted(
        f"interrupted: {done} transactions committed{lsn}; "
        f"{into} is incomplete: rerun the same command to resume, or pass --force to "
        "rebuild it",
        table=str(into),
    )


def note_incomplete(exc: WalrecoverError, into: TableName, incomplete: bool) -> WalrecoverError:
    """Add to ``exc`` that the target is left incomplete under its final name, and how to
    go on (unless the message already says how to rebuild)."""
    if not incomplete or "--force" in exc.message:
        return exc
    if isinstance(exc, ConnectionFailed):
        note = f" ({into} is incomplete until then; --force rebuilds it instead)"
    else:
        note = (
            f"; {into} is left incomplete: once that is fixed the same command resumes"
            " it, or pass --force to rebuild it"
        )
    exc.extend(note)
    return exc


def failure(
    exc: BaseException, target: Target, incomplete: bool, committed: Counts
) -> WalrecoverError | None:
    """The error a replay that raised ``exc`` ends with (its transaction rolled back), or None
    to raise ``exc`` itself (a :class:`WalrecoverError`, told that the target is incomplete)."""
    into = target.into
    if isinstance(exc, KeyboardInterrupt):
        return interrupted(target, incomplete, committed)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return note_incomplete(target.privilege_error(exc), into, incomplete)
    if isinstance(exc, psycopg.OperationalError):
        return note_incomplete(
            ConnectionFailed(
                f"lost the target connection during the recovery into {into} "
                f"({first_line(exc)}): what was committed is kept; rerun the same command "
                "to resume",
                table=str(into),
            ),
            into,
            incomplete,
        )
    if isinstance(exc, psycopg.Error):
        return note_incomplete(
            ReplayError(
                f"the recovery into {into} failed: {exc.diag.message_primary or exc}",
                table=str(into),
            ),
            into,
            incomplete,
        )
    if isinstance(exc, WalrecoverError):
        note_incomplete(exc, into, incomplete)
    return None
