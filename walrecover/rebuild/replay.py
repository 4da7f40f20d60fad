"""Replay: apply committed changes, in commit order, to a rebuilt table.

Changes are buffered across source transactions and flushed in batches: inserts go through COPY,
updates and deletes through pipelined statements keyed by the old row identity. Inserts are
flushed before the batch's updates and deletes, which is safe because an insert whose key an
earlier update or delete touched forces a flush first. Each batch commits together with a progress
row (last applied commit LSN) in the target database, so a killed run resumes exactly where the
last commit left it, with no duplicate and no gap.

The stop point is checked at each transaction's Begin when the plugin says when it commits
(wal2json, pgoutput), otherwise at its Commit, with a savepoint guarding a transaction too big to
buffer (test_decoding). Only ``replay`` writes to the target; it never touches the source.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql

from ..db import connection_lost
from ..errors import (
    ConnectionFailed,
    Interrupted,
    PrivilegeError,
    ReplayError,
    SlotError,
    StopPointError,
    StreamCutShort,
    TableNotInStream,
    TargetExists,
    WalrecoverError,
    first_line,
)
from ..stream.lsn import Lsn
from ..stream.model import (
    NO_STOP,
    Begin,
    Change,
    Column,
    Commit,
    Event,
    Op,
    Outcome,
    Relation,
    StopPoint,
    TableName,
    Values,
)
from ..stream.sources import ProgressCallback
from .idempotent import upsert
from .preflight import command_differences
from .recreation import RecreationJudge
from .target import PROGRESS_SCHEMA, Progress, Target


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


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did to the rebuilt table."""

    into: str
    relation: Relation
    transactions: int
    changes: int
    rows: int
    no_row: int
    first_lsn: Lsn | None
    last_lsn: Lsn | None
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


@dataclass(slots=True)
class _Txn:
    xid: int | None
    commit_lsn: Lsn | None
    end_lsn: Lsn | None
    commit_time: datetime | None
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


@dataclass(slots=True)
class _Pending:
    change: Change
    txn: _Txn
    outcome: Outcome = Outcome.APPLIED
    after: Values | None = None


#: A row's identity for reordering: its key values, or its whole row (keyless tables).
_Identity = tuple[str | None, ...]


@dataclass(slots=True)
class _Batch:
    """Changes not yet sent, in stream order, with the indexes of inserts and other ops.

    ``other_keys`` holds the identities of the rows the buffered updates and deletes touch;
    ``unknown`` is set when one of them touches a row whose identity is not known (no key
    yet, a partial old image): then no insert may be copied ahead of them.
    """

    pending: list[_Pending] = field(default_factory=list)
    inserts: list[int] = field(default_factory=list)
    others: list[int] = field(default_factory=list)
    other_keys: set[_Identity] = field(default_factory=set)
    unknown: bool = False

    def __len__(self) -> int:
        return len(self.pending)

    def mark(self) -> tuple[int, int, int]:
        return len(self.pending), len(self.inserts), len(self.others)

    def truncate(self, mark: tuple[int, int, int]) -> None:
        del self.pending[mark[0] :], self.inserts[mark[1] :], self.others[mark[2] :]


class Replayer:
    """Applies an event stream to one target table. Use :func:`replay` unless you need steps."""

    def __init__(
        self,
        conn: Any,
        table: TableName,
        into: TableName,
        *,
        stop: StopPoint = NO_STOP,
        ddl: str | None = None,
        source: str = "",
        batch_size: int = 20_000,
        sink: AuditSink | None = None,
        audit_id: str | None = None,
        stream_start: Lsn | None = None,
        judge: RecreationJudge | None = None,
        cut_ok: bool = False,
        command: str | None = None,
        on_created: Callable[[Target], None] | None = None,
        idempotent: bool = False,
    ) -> None:
        self.conn = conn
        #: Replay over a baseline whose point is not known exactly (see :mod:`.idempotent`).
        self.idempotent = idempotent
        #: Tells when the table's changes switch to a re-created table of the same name.
        self.judge = judge
        #: The command's identity (JSON), kept in the progress row (see :mod:`.preflight`).
        self.command = command
        #: Called right after the target table is created, before its first batch commits
        #: (a check that fails there leaves nothing committed of the table).
        self.on_created = on_created
        self.target = Target(conn, into)
        #: Where this run's copy of the slot starts (None for a capture), and where the
        #: recovery's first copy started (kept across resumes).
        self.stream_start = stream_start
        self.first_stream_start = stream_start
        #: A capture may end inside a transaction (:class:`StreamCutShort`): it is left out.
        self.cut_ok = cut_ok
        #: Why the stream ended inside a transaction, when it did.
        self.cut: StreamCutShort | None = None
        #: The end of the last transaction read (the resume point saved with each batch).
        self._read_end: Lsn | None = stream_start
        self.audit_id = audit_id
        self.table = table
        self.into = into
        self.stop = stop
        self.ddl = ddl
        # A run resumes only the same recovery: same source and same stop point.
        self.source = f"{source} ({stop.describe()})"
        self.batch_size = batch_size
        self.sink = sink
        self.relation: Relation | None = None
        self.columns: tuple[str, ...] = ()
        #: A real key (the target's primary key, or one the server declared): updates and
        #: deletes find their row by ``key = value``.
        self.key: tuple[str, ...] = ()
        #: A key inferred from old images (test_decoding) while there is no real one: only a
        #: hypothesis, used to index and to order, never to match by ``=`` alone.
        self._guess: tuple[str, ...] = ()
        #: The target's columns: SQL type, and whether values of it always fit an index entry.
        self._types: dict[str, str] = {}
        self._fixed_length: frozenset[str] = frozenset()
        #: Columns an index can narrow by ``=`` (see :meth:`Target.equality_indexed`).
        self._indexed: frozenset[str] = frozenset()
        #: Resuming by LSN: a commit at or after the resume point was seen, so every later
        #: transaction is new (the stream is in commit order).
        self._past_resume = False
        self.transactions = 0
        self.changes = 0
        self.no_row = 0
        self.first_lsn: Lsn | None = None
        self.last_lsn: Lsn | None = None
        self.stopped_before: tuple[int | None, Lsn | None] | None = None
        self._last_xid: int | None = None
        self._committed = 0
        #: Everything was applied by an earlier run (only its audit was left to publish).
        self.finished = False
        #: What the last target commit holds (for the message when interrupted).
        self.committed_lsn: Lsn | None = None
        self.committed_transactions = 0
        self._since_commit = 0
        #: Source transactions seen (the resume position for streams without LSNs).
        self._position = 0
        self._resume_position = 0
        #: ALTER TABLEs followed in the rebuilt table, for the result.
        self.schema_changes: list[str] = []
        #: Reasons the rebuilt table may differ from the truth (see :data:`EXIT_UNPROVEN`).
        self.unproven: list[str] = []
        #: What the user must know about the rebuilt table (see :attr:`ReplayResult.warnings`).
        self.warnings: list[str] = []
        #: Other tables seen in the stream (a few), to help when the asked-for one is absent.
        self.other_tables: set[str] = set()
        self._left_out: list[Change] = []
        self._stop_txn: _Txn | None = None
        self.resume_after: Lsn | None = None
        self._batch = _Batch()
        #: Generated columns of the target (from --ddl): never written.
        self._generated: frozenset[str] = frozenset()
        self._txn: _Txn | None = None
        #: The table's definition at its last change skipped as applied by an earlier run.
        self._applied_relation: Relation | None = None
        self._txn_mark = (0, 0, 0)
        self._savepoint = False
        self._created = False
        #: The change the target refused, when a send fails (for the error message).
        self._failed: _Pending | None = None
        #: The last commit marked the recovery complete.
        self._complete = False
        #: Where the table's first change past the stop point is: (xid, commit LSN, end LSN).
        self._first_after_stop: tuple[int | None, Lsn | None, Lsn | None] | None = None

    # -- setup -------------------------------------------------------------------------------

    def prepare(self, *, force: bool) -> None:
        """Lock the target, check it is free (or resumable), and set up the progress table."""
        target = self.target
        target.lock()
        target.check_privileges(force=force)
        target.ensure_bookkeeping()
        exists = target.exists()
        progress = target.read_progress()
        if exists and progress is None and target.reset_by_crash():
            target.drop()
            self.conn.commit()
            exists = False
            self.warnings.append(
                f"the server crashed (or stopped without a clean shutdown) during an earlier run,"
                f" which emptied the unlogged {self.into} it was building and its progress: "
                f"{self.into} is rebuilt from the start"
            )
        if (
            exists
            and progress is not None
            and progress.complete
            and not force
            and self.sink is not None
            and progress.source == self.source
            and progress.audit == self.audit_id
            and self.sink.unpublished() is not None
        ):
            # Killed after the last commit, before the audit was published: publish it now.
            self._resume(progress)
            self.finished = True
            self.sink.start(self.resume_after or Lsn(self._resume_position), resuming=True)
            return
        self._prepare_target(progress, exists, force=force)

    def _prepare_target(self, progress: Progress | None, exists: bool, *, force: bool) -> None:
        """Resume an unfinished recovery of the same source, or start afresh (if allowed)."""
        if exists and progress is not None and not progress.complete and not force:
            differs = command_differences(progress.command, self.command)
            if differs:
                raise TargetExists(
                    f"{self.into} holds an unfinished recovery made by another command: "
                    f"{'; '.join(differs)}; rerun that command to resume, or pass --force to "
                    "rebuild",
                    table=str(self.into),
                    differs=differs,
                )
            if progress.source != self.source:
                raise TargetExists(
                    f"{self.into} holds an unfinished recovery from {progress.source}, not "
                    f"{self.source}: rerun that command to resume, or pass --force to rebuild",
                    table=str(self.into),
                )
            if progress.audit != self.audit_id:
                started = f"with --audit {progress.audit}" if progress.audit else "without --audit"
                raise TargetExists(
                    f"the unfinished recovery into {self.into} was started {started}: rerun it "
                    "the same way to resume, or pass --force to rebuild",
                    table=str(self.into),
                )
            self._check_slot_position(progress)
            self._resume(progress)
            # Begun in logged mode before a publication reached it: go on unpublished.
            self.target.make_unlogged()
            self.conn.commit()
            if self.sink is not None:
                self.sink.start(self.resume_after or Lsn(self._resume_position), resuming=True)
            return
        if exists and not force:
            raise TargetExists(
                f"target table {self.into} already exists: choose another --into, or pass --force"
                " to drop and rebuild it",
                table=str(self.into),
            )
        if exists:
            self.target.drop()
        self.target.forget_progress()
        self.conn.commit()
        if self.sink is not None:
            self.sink.start(None, resuming=False)

    def _check_slot_position(self, progress: Progress) -> None:
        """Refuse to resume from a copy that starts past where the unfinished recovery got to.

        Decoding skips every transaction whose commit record starts before the copy's start,
        so when the user's slot was advanced (its consumer confirmed) past the end of the last
        transaction the recovery read, the transactions in between are gone from it.
        """
        start = self.stream_start
        point = progress.resume_lsn or progress.last_commit_lsn or progress.stream_start_lsn
        if start is None or point is None or start <= point:
            return
        began = progress.stream_start_lsn or point
        raise SlotError(
            f"the slot has moved past the resume point of the unfinished recovery into "
            f"{self.into}: a copy of it now starts at LSN {start}, but the recovery read the "
            f"stream only up to LSN {point}, so the transactions in between are no longer in the "
            f"slot and resuming would lose them; nothing was changed. A rebuild with --force can "
            f"only work from another slot or a capture that still holds the changes from LSN "
            f"{began}",
            table=str(self.into),
            lsn=start,
        )

    def _resume(self, progress: Progress) -> None:
        self._created = True
        if progress.stream_start_lsn is not None:
            self.first_stream_start = progress.stream_start_lsn
        self._read_end = progress.resume_lsn or progress.last_commit_lsn or self._read_end
        self.resume_after = progress.last_commit_lsn
        self.transactions = progress.transactions
        self.changes = progress.changes
        self.no_row = progress.no_row
        self.first_lsn = progress.first_lsn
        self.last_lsn = self.committed_lsn = self.resume_after
        self.committed_transactions = self.transactions
        self._resume_position = progress.position

    # -- the stream --------------------------------------------------------------------------

    def run(self, events: Iterable[Event], progress: ProgressCallback | None = None) -> None:
        """Apply ``events`` up to the stop point; commit the last batch; mark it complete."""
        if self.finished:
            return  # resumed only to publish the audit: everything is applied
        stream = iter(events)
        try:
            for event in stream:
                if isinstance(event, Change):
                    if self._txn is not None:
                        self._watch(event, self._txn)
                        if not self._txn.skip:
                            self._change(event)
                        elif event.relation.complete and event.relation.same_table(
                            self.table.schema, self.table.name
                        ):
                            self._applied_relation = event.relation
                elif isinstance(event, Begin):
                    if self._begin(event):
                        self._audit_after_stop(event, stream)
                        break
                elif self._commit(event):
                    self._audit_after_stop(None, stream)
                    break
        except StreamCutShort as exc:
            if not self.cut_ok:
                raise
            self._cut_short(exc)
        if self._txn is not None and self.stopped_before is None:
            raise ReplayError(
                f"the stream ended inside transaction {self._txn.xid}: it is truncated",
                table=str(self.table),
            )
        if (
            self.stopped_before is not None
            and self.transactions == 0
            and not self._committed
            and self.resume_after is None
            and not self._resume_position
        ):
            self.conn.rollback()  # nothing to build: leave no empty table behind
            later = self._first_after_stop if self.relation is None else None
            if self.relation is None and later is None:
                later = self._scan_after_stop(stream)
            if self.relation is None and later is None:
                return  # not in the stream at all: replay() says so, listing what is there
            where = f": its first change is in {_named(*later)}" if later is not None else ""
            raise StopPointError(
                f"no change of {self.table} commits before the stop point "
                f"({self.stop.describe()}){where}; nothing was built; check the stop point",
                table=str(self.table),
            )
        if self.stop.xid is not None and self.stopped_before is None and self.cut is None:
            if not self._committed and self.resume_after is None:
                self.conn.rollback()  # nothing of this run was committed: leave no trace
                raise StopPointError(
                    f"transaction {self.stop.xid} does not commit in the stream: nothing was "
                    "built; check --stop-before-xid",
                    xid=self.stop.xid,
                    missing=True,
                )
            self._commit_batch(complete=False)
            raise StopPointError(
                f"transaction {self.stop.xid} does not commit in the stream, so nothing was left"
                f" out: {self.into} holds every change and is not marked complete; check "
                "--stop-before-xid and rebuild with --force",
                xid=self.stop.xid,
                table=str(self.into),
                missing=True,
            )
        if (
            (self.relation is None or self.only_cut)
            and self.resume_after is None
            and not self.resumed_by_position
        ):
            self.conn.rollback()  # the table never appeared: commit nothing, not even progress
            return
        self._commit_batch(complete=True)

    def _cut_short(self, exc: StreamCutShort) -> None:
        """The capture ends inside a transaction: leave it out (it never committed in the file),
        warn, and say the table is not proven at a stop point the file did not reach."""
        self.cut = exc
        self.warnings.append(exc.message)
        txn, self._txn = self._txn, None
        if txn is not None:
            self._position -= 1
            if not txn.skip:
                self._batch.truncate(self._txn_mark)
                if self._savepoint:
                    self.conn.execute("ROLLBACK TO SAVEPOINT walrecover_txn")
                    if self.sink is not None:
                        self.sink.rollback_to_savepoint()
                    self._savepoint = False
        if self.stopped_before is not None or not self.stop.is_set:
            return  # the stop point came first, or the stop point is the file's end
        xid = exc.facts.get("xid")
        if self.stop.xid is not None and xid == self.stop.xid:
            self.stopped_before = (xid, None)  # it would have been left out anyway
            return
        before = txn is not None and txn.decided
        last = (
            f"LSN {self.last_lsn}"
            if self.last_lsn is not None
            else f"transaction {self._last_xid}"
            if self._last_xid is not None
            else "its start"
        )
        self.unproven.append(
            f"the capture ends inside {exc.facts.get('what') or 'a transaction'}"
            + (", which committed before the stop point" if before else "")
            + f", and the stop point ({self.stop.describe()}) is not in the file: {self.into} "
            f"is {self.table} as of the last transaction that committed in the file ({last}), "
            "not at the stop point; the transactions that committed in between are missing. "
            "Capture again from a slot that still holds them, up to the stop point "
            "(pg_recvlogical --endpos), and rebuild with --force"
        )

    def _audit_after_stop(self, begin: Begin | None, stream: Iterator[Event]) -> None:
        """Send the table's changes past the stop point to the audit as ``after_stop``.

        Only with an audit: without one, replay stops reading at the stop point.
        """
        sink = self.sink
        if sink is None:
            return
        self._flush()
        txn = self._stop_txn
        if begin is not None:
            txn = _Txn(begin.xid, begin.commit_lsn, begin.end_lsn, begin.commit_time, True)
        rows: list[AppliedChange] = [self._left(change, txn) for change in self._left_out]
        self._left_out = []
        kept = 0  # rows of transactions that committed; the rest belong to an open one
        try:
            for event in stream:
                if isinstance(event, Change):
                    if event.relation.same_table(self.table.schema, self.table.name):
                        rows.append(self._left(event, txn))
                        if len(rows) >= self.batch_size:
                            sink.write(rows)
                            rows, kept = [], 0
                elif isinstance(event, Begin):
                    txn = _Txn(event.xid, event.commit_lsn, event.end_lsn, event.commit_time, True)
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

    def _watch(self, change: Change, txn: _Txn) -> None:
        """Ask the judge about every change of the table, applied or skipped by a resume: a
        change of a re-created table first empties what the earlier one left (a TRUNCATE)."""
        txn.events += 1
        if not change.relation.same_table(self.table.schema, self.table.name):
            return
        txn.ours += 1
        if self.judge is None:
            return
        recreated = self.judge.change(change, txn.xid, txn.commit_lsn)
        if recreated is None or txn.skip or not self._created:
            return
        if self.relation is None:  # resumed: the earlier table's rows are in the target
            self._adopt(change.relation)
        assert self.relation is not None
        self._change(Change(Op.TRUNCATE, self.relation, lsn=recreated.lsn, xid=recreated.xid))

    def _scan_after_stop(
        self, stream: Iterator[Event]
    ) -> tuple[int | None, Lsn | None, Lsn | None] | None:
        """Read on past the stop point to the table's first change (and its commit), noting the
        other tables seen; None if the table never appears."""
        stopped = self.stopped_before
        xid, commit_lsn, end_lsn = (stopped[0], stopped[1], None) if stopped else (None, None, None)
        found = False
        for event in stream:
            if isinstance(event, Begin):
                xid, commit_lsn, end_lsn = event.xid, event.commit_lsn, event.end_lsn
            elif isinstance(event, Change):
                relation = event.relation
                if relation.same_table(self.table.schema, self.table.name):
                    found = True
                elif len(self.other_tables) < 50 and relation.schema != PROGRESS_SCHEMA:
                    self.other_tables.add(relation.qualified_name)
            else:
                commit_lsn = commit_lsn or event.commit_lsn
                end_lsn = end_lsn or event.end_lsn
                if found:
                    return xid, commit_lsn, end_lsn
        return (xid, commit_lsn, end_lsn) if found else None

    def _left(self, change: Change, txn: _Txn | None) -> AppliedChange:
        if self._first_after_stop is None:
            self._first_after_stop = (
                (txn.xid, txn.commit_lsn, txn.end_lsn) if txn else (change.xid, None, None)
            )
        if txn is None:
            return AppliedChange(change, change.xid, None, None, None, Outcome.AFTER_STOP)
        return AppliedChange(
            change, txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time, Outcome.AFTER_STOP
        )

    def _begin(self, event: Begin) -> bool:
        """Open a transaction; True if the stop point says to stop here."""
        stops = self.stop.stops(event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
        if stops:
            self.stopped_before = (event.xid, event.commit_lsn or event.end_lsn)
            return True
        txn = _Txn(event.xid, event.commit_lsn, event.end_lsn, event.commit_time, stops is False)
        self._position += 1
        txn.skip, txn.skip_unsure = self._already_applied(event)
        self._txn = txn
        self._txn_mark = self._batch.mark()
        self._savepoint = False
        return False

    @property
    def only_cut(self) -> bool:
        """The table's only changes were in the transaction a cut capture ends inside."""
        return self.cut is not None and self.transactions == 0 and not self._committed

    @property
    def resumed_by_position(self) -> bool:
        """Resuming a stream without LSNs (a capture), by transaction position."""
        return self.resume_after is None and self._resume_position > 0

    def _already_applied(self, begin: Begin) -> tuple[bool, bool]:
        """(applied by an interrupted run, only presumed so until the Commit tells).

        By commit LSN, or by position in a stream without LSNs. test_decoding's Begin has no
        commit LSN: a transaction whose first record (``Begin.lsn``) is after the resume point,
        or that starts after a commit at or past it was seen, is new. Any other precedes the
        resume point's commit in commit order, so it was applied: it is skipped without being
        buffered or sent (sending it again could only collide with the rows it wrote), and its
        Commit proves the presumption (:meth:`_commit`).
        """
        resume = self.resume_after
        if resume is None:
            return self._position <= self._resume_position, False
        if self._past_resume:
            return False, False
        position = begin.commit_lsn if begin.commit_lsn is not None else begin.end_lsn
        if position is not None:
            return position <= resume, False
        if begin.lsn is not None and begin.lsn > resume:
            return False, False
        return True, True

    def _commit(self, event: Commit) -> bool:
        """Close the transaction; True if the stop point says it (and all after) is left out."""
        txn = self._txn
        if txn is None:
            raise ReplayError("a commit without a begin: the stream is damaged")
        self._txn = None
        txn.commit_lsn = txn.commit_lsn or event.commit_lsn
        txn.end_lsn = txn.end_lsn or event.end_lsn
        txn.commit_time = txn.commit_time or event.commit_time
        if self.resume_after is not None and not self._past_resume:
            self._check_resume(txn)
        if txn.skip:
            self._judged(txn)
            return False
        if not txn.decided:
            stops = self.stop.stops(txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time)
            if stops is None:
                raise StopPointError(
                    f"the stream does not say when transaction {txn.xid} committed, so stop "
                    f"point {self.stop.describe()} cannot be applied: use --stop-before-xid",
                )
            if stops:
                if self.judge is not None:
                    self.judge.discard()  # what it saw in this transaction is past the stop
                self._left_out = [p.change for p in self._batch.pending[self._txn_mark[0] :]]
                self._stop_txn = txn
                self._batch.truncate(self._txn_mark)
                if self._savepoint:
                    self.conn.execute("ROLLBACK TO SAVEPOINT walrecover_txn")
                    if self.sink is not None:
                        self.sink.rollback_to_savepoint()
                self.stopped_before = (txn.xid, txn.commit_lsn or txn.end_lsn)
                return True
        self._judged(txn)
        if self._savepoint:
            self.conn.execute("RELEASE SAVEPOINT walrecover_txn")
            if self.sink is not None:
                self.sink.release_savepoint()
            self._savepoint = False
        if txn.end_lsn is not None and (self._read_end is None or txn.end_lsn > self._read_end):
            self._read_end = txn.end_lsn
        if txn.changes:
            self.transactions += 1
            position = txn.commit_lsn or txn.end_lsn
            if self.first_lsn is None:
                self.first_lsn = position
            self.last_lsn = position
            self._last_xid = txn.xid
            if self._since_commit >= self.batch_size:
                self._commit_batch(complete=False)
        return False

    def _check_resume(self, txn: _Txn) -> None:
        """Note when the stream passes the resume point; refuse a transaction skipped as applied
        that commits after it (the stream lacks the commit the interrupted run stopped at)."""
        resume = self.resume_after
        assert resume is not None
        position = txn.commit_lsn if txn.commit_lsn is not None else txn.end_lsn
        if position is not None and position >= resume:
            self._past_resume = True
        if txn.skip_unsure and (position is None or position > resume):
            raise ReplayError(
                f"transaction {txn.xid} began before the point the interrupted recovery into "
                f"{self.into} had committed (LSN {resume}) and commits "
                + (f"after it (LSN {position})" if position is not None else "at no known LSN")
                + ", but the stream does not hold that point's commit: the source no longer "
                "holds what the interrupted run read; rebuild with --force from a slot or "
                "capture that starts at or before it",
                table=str(self.into),
                xid=txn.xid,
                lsn=resume,
            )

    def _judged(self, txn: _Txn) -> None:
        """Tell the judge a transaction committed before the stop point."""
        if self.judge is not None:
            self.judge.commit(
                txn.xid, txn.commit_lsn, txn.end_lsn, events=txn.events, ours=txn.ours
            )

    def _change(self, change: Change) -> None:
        relation = change.relation
        if not relation.same_table(self.table.schema, self.table.name):
            if len(self.other_tables) < 50 and relation.schema != PROGRESS_SCHEMA:
                self.other_tables.add(relation.qualified_name)
            return
        txn = self._txn
        assert txn is not None
        if self.relation is None and change.op is Op.TRUNCATE and not self._created:
            return  # nothing was recovered before it: there is nothing to truncate
        if self.relation is None:
            # Resumed: the target has the table's definition as of the last change the earlier
            # run applied; an ALTER TABLE after it is followed like any other.
            self._adopt(self._applied_relation or relation)
        if relation is not self.relation:
            if relation.complete:
                self._check_schema(change)
            if not self.key and relation.key_columns:
                self._learn_identity(relation)
        txn.changes += 1
        self.changes += 1
        self._since_commit += 1
        batch = self._batch
        index = len(batch.pending)
        batch.pending.append(_Pending(change, txn))
        if change.op is Op.INSERT:
            # Copied ahead of the buffered updates and deletes only if none can touch its row.
            if batch.others and (
                batch.unknown
                or (identity := self._row_identity(change.new)) is None
                or identity in batch.other_keys
            ):
                batch.pending.pop()
                self._flush_midway()
                batch = self._batch
                batch.pending.append(_Pending(change, txn))
                index = 0
            batch.inserts.append(index)
        elif change.op is Op.TRUNCATE:
            # Nothing may move across a truncate: send what is before it, then it alone.
            batch.pending.pop()
            self._flush_midway()
            self._batch.pending.append(_Pending(change, txn))
            self._batch.others.append(0)
            self._flush_midway()
        else:
            batch.others.append(index)
            before = self._old_identity(change)
            if before is None:
                batch.unknown = True
            else:
                batch.other_keys.add(before)
            after = self._row_identity(change.new)
            if after is not None:
                batch.other_keys.add(after)
        if len(batch) >= self.batch_size * 4:
            self._flush_midway()

    def _adopt(self, relation: Relation) -> None:
        if not self._created:
            self.target.create(relation, self.ddl, self.table)
            self._created = True
            if self.on_created is not None:
                self.on_created(self.target)
        self.relation = relation
        existing = self.target.columns()
        missing = [name for name in relation.column_names if name not in existing]
        if missing:
            raise ReplayError(
                f"{self.into} has no column {missing[0]!r} that the stream carries: "
                "fix the --ddl or drop the target and rebuild",
                table=str(self.into),
            )
        self._generated = self.target.generated_columns()
        self.columns = self._written(relation)
        self._load_columns()
        self.key = self.target.primary_key()
        if not self.key and relation.key_columns:
            self._learn_identity(relation)

    def _written(self, relation: Relation) -> tuple[str, ...]:
        """The stream's columns that replay writes: not the target's generated ones (a --ddl
        with GENERATED ALWAYS ... STORED), which the server computes and refuses to take."""
        return tuple(name for name in relation.column_names if name not in self._generated)

    def _load_columns(self) -> None:
        """Read the target's column types and indexes (after creating or altering it)."""
        types = self.target.column_types()
        self._types = {name: type_sql for name, (type_sql, _) in types.items()}
        self._fixed_length = frozenset(name for name, (_, length) in types.items() if length > 0)
        self._indexed = self.target.equality_indexed()

    def _learn_identity(self, relation: Relation) -> None:
        """The stream names key columns while the target has no primary key.

        A key the server declared (pgoutput's and wal2json's key flags) is a real key, unless
        it is ``REPLICA IDENTITY FULL`` (:attr:`Relation.keyed`): then the table is keyless. A
        key inferred from old images (test_decoding) is only a guess. Either is indexed so
        updates and deletes find their rows without scanning the table.
        """
        key = relation.key_columns
        full = set(self.columns) <= set(key)
        if relation.key_inferred:
            guess = () if full else key
            if guess != self._guess:
                self._identity_changes()
                self._guess = guess
                if guess:
                    self._index_guess(guess)
            return
        if not relation.keyed:
            return
        self._identity_changes()
        self.key = key
        self.target.try_index(key)
        self._indexed = self.target.equality_indexed()

    def _identity_changes(self) -> None:
        """Identities of buffered updates and deletes were computed another way: let no insert
        overtake them."""
        if self._batch.others:
            self._batch.unknown = True

    def _index_guess(self, guess: tuple[str, ...]) -> None:
        """Index an inferred key so that an index never fails the recovery: a btree over its
        fixed-length columns (their values always fit), else a hash index (no size limit) on
        its first column; without either (no operator class), no index."""
        fixed = tuple(name for name in guess if name in self._fixed_length)
        if not (fixed and self.target.try_index(fixed)):
            self.target.try_index(guess[:1], method="hash")
        self._indexed = self.target.equality_indexed()

    def _identity(self, change: Change) -> tuple[str | None, ...] | None:
        """The row's key values before the change, by the real key; None if not known."""
        if not self.key:
            return None
        for image in (change.old, change.new):
            if image is not None and all(name in image for name in self.key):
                return tuple(image[name] for name in self.key)
        return None

    def _identity_columns(self) -> tuple[str, ...]:
        """What identifies a row for reordering: the key, the guessed key, or the whole row."""
        return self.key or self._guess or self.columns

    def _row_identity(self, image: Values | None) -> _Identity | None:
        """The identity of a row image (see :meth:`_identity_columns`), if it holds it all."""
        if image is None:
            return None
        try:
            return tuple(image[name] for name in self._identity_columns())
        except KeyError:
            return None

    def _old_identity(self, change: Change) -> _Identity | None:
        """The identity of the row an update or delete touches, None if it cannot be known."""
        if self.key:
            return self._identity(change)
        if change.old is not None:
            return self._row_identity(change.old)
        return self._row_identity(change.new) if change.op is Op.UPDATE else None

    def _at(self, change: Change, txn: _Txn | None = None) -> str:
        """Where a change is, for messages: its LSN, else its transaction (capture files)."""
        if change.lsn is not None:
            return f" at LSN {change.lsn}"
        txn = txn or self._txn
        xid = change.xid if change.xid is not None else (txn.xid if txn else None)
        return f" in transaction {xid}" if xid is not None else ""

    def _stop_hint(self, txn: _Txn | None = None) -> str:
        """The stop option that leaves out ``txn`` (by default the open transaction)."""
        txn = txn or self._txn
        if txn is not None and txn.commit_lsn is not None:
            return f"--stop-before-lsn {txn.commit_lsn}"
        if txn is not None and txn.xid is not None:
            return f"--stop-before-xid {txn.xid}"
        return "a --stop-before option"

    def _check_schema(self, change: Change) -> None:
        """Follow an ALTER TABLE in the stream, or stop with an error naming its LSN.

        Added and dropped columns are applied to the rebuilt table (after sending what was
        buffered under the old definition); a column whose type changed, or a table dropped
        and re-created under the same name (a new relation id), stops the replay: guessing
        would misalign data.
        """
        assert self.relation is not None
        old, new = self.relation, change.relation
        if new.relation_id is not None and old.relation_id not in (None, new.relation_id):
            raise ReplayError(
                f"{self.table} was dropped and re-created{self._at(change)} (relation id "
                f"{old.relation_id}, then {new.relation_id}): stop before it with "
                f"{self._stop_hint()}",
                table=str(self.table),
                lsn=change.lsn,
            )
        current = {c.name: c.type_name for c in old.columns}
        seen = {c.name: c.type_name for c in new.columns}
        if current == seen:
            self.relation = new
            return
        changed = [name for name in current.keys() & seen.keys() if current[name] != seen[name]]
        if changed and not all(_same_type(current[n], seen[n]) for n in changed):
            raise ReplayError(
                f"the type of {self.table}.{changed[0]} changes{self._at(change)} "
                f"({current[changed[0]]} to {seen[changed[0]]}): stop before it with "
                f"{self._stop_hint()}, or rebuild from a --ddl of the new definition",
                table=str(self.table),
                lsn=change.lsn,
            )
        added = [c for c in new.columns if c.name not in current]
        dropped = [name for name in current if name not in seen]
        # Same type with another modifier on both sides (numeric(12,2) -> numeric(14,2)).
        retyped = [n for n in changed if "(" in current[n] and "(" in seen[n]]
        if added or dropped or retyped:
            self._flush_midway()
            existing = self.target.columns()
            for name in retyped:
                self.target.retype_column(name, seen[name])
            for column in added:
                self._add_column(column, change, defined=column.name in existing)
            for name in dropped:
                if name in existing:
                    self.target.drop_column(name)
            self.schema_changes.append(
                f"{self._at(change).strip() or 'in the stream'}: "
                + ", ".join(
                    [f"added {c.name}" for c in added]
                    + [f"dropped {n}" for n in dropped]
                    + [f"{n} became {seen[n]}" for n in retyped]
                )
            )
        self.relation = new
        self.columns = self._written(new)
        if added or dropped or retyped:
            self._load_columns()

    def _add_column(self, column: Column, change: Change, *, defined: bool) -> None:
        """Follow an ADD COLUMN; say so when the rows that existed then may differ.

        PostgreSQL keeps an added column's DEFAULT for the rows that existed at the ALTER TABLE
        in the catalog, not in the WAL: the stream shows them with no value for it. A column
        the target already has (from --ddl) keeps its definition: those rows were copied
        without the column, so they hold its DEFAULT, which is exact when it is a constant.
        """
        if not defined:
            self.target.add_column(column)
        rows = self.target.count_rows(commit=False)
        if not rows:
            return
        added = (
            f"column {column.name} of {self.table} first appears{self._at(change)}, added by "
            f"an ALTER TABLE when {rows} rows existed"
        )
        if not defined:
            self.unproven.append(
                f"{added}: {self.into} holds NULL in it for those rows, but the dropped table "
                "may hold the column's DEFAULT there (kept in the catalog, not in the WAL); "
                f"give --ddl FILE defining {column.name} with the DEFAULT of that ALTER TABLE "
                "to rebuild them exactly"
            )
        elif self.target.constant_default(column.name) is None:
            self.unproven.append(
                f"{added}: those rows took the --ddl DEFAULT of {column.name}, which is not a "
                "constant, when walrecover wrote them, not when the ALTER TABLE ran; give the "
                "value the ALTER TABLE gave them as a constant DEFAULT in the --ddl file"
            )

    # -- writing -----------------------------------------------------------------------------

    def _flush_midway(self) -> None:
        """Flush inside an open source transaction, guarding it with a savepoint if undecided."""
        txn = self._txn
        if txn is not None and (not txn.decided or self.cut_ok) and not self._savepoint:
            head = self._split(self._txn_mark)
            self._send(head)
            self.conn.execute("SAVEPOINT walrecover_txn")
            if self.sink is not None:
                self.sink.savepoint()
            self._savepoint = True
        self._flush()
        self._txn_mark = (0, 0, 0)

    def _split(self, mark: tuple[int, int, int]) -> _Batch:
        """Take the part of the batch before ``mark`` out, keeping the rest re-indexed."""
        batch = self._batch
        head = _Batch(batch.pending[: mark[0]], batch.inserts[: mark[1]], batch.others[: mark[2]])
        rest = _Batch(
            batch.pending[mark[0] :],
            [i - mark[0] for i in batch.inserts[mark[1] :]],
            [i - mark[0] for i in batch.others[mark[2] :]],
            batch.other_keys,
            batch.unknown,
        )
        self._batch = rest
        return head

    def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        self._send(batch)

    def _send(self, batch: _Batch) -> None:
        if not batch.pending:
            return
        inserts = [batch.pending[i] for i in batch.inserts]
        self._failed = None
        try:
            if inserts and self.idempotent:
                self._apply_others(inserts)
            elif inserts:
                self._copy(inserts)
            if batch.others:
                self._apply_others([batch.pending[i] for i in batch.others])
        except psycopg.Error as exc:
            raise self._failure(exc) from None
        if self.sink is not None:
            self.sink.write(
                [
                    AppliedChange(
                        p.change,
                        p.txn.xid,
                        p.txn.commit_lsn,
                        p.txn.end_lsn,
                        p.txn.commit_time,
                        p.outcome,
                        p.after,
                    )
                    for p in batch.pending
                ]
            )

    def _failure(self, exc: psycopg.Error) -> WalrecoverError:
        """The error to raise when the target refused a batch: only a lost connection can be
        cured by a rerun; anything else names the change it refused and what to do."""
        if connection_lost(exc, self.conn):
            return ConnectionFailed(
                f"lost the target connection while applying changes to {self.into} "
                f"({first_line(exc)}): what was committed is kept; rerun the same command to "
                "resume",
                table=str(self.into),
            )
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return PrivilegeError(
                f"cannot write to {self.into}: {exc.diag.message_primary}; grant the role "
                "INSERT, UPDATE, DELETE and TRUNCATE on it (or build it with another role)",
                table=str(self.into),
            )
        failed = self._failed
        what = "a change"
        facts: dict[str, Any] = {"table": str(self.into)}
        if failed is not None:
            what = f"the {failed.change.op}{self._at(failed.change, failed.txn)}"
            if failed.change.lsn is not None and failed.txn.xid is not None:
                what += f" (transaction {failed.txn.xid})"
            facts.update(lsn=failed.change.lsn, xid=failed.txn.xid)
        reason = f"{exc.diag.message_primary or first_line(exc)}{_where(exc)}"
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return ReplayError(
                f"{what} cannot be applied to {self.into}: {reason}: a row came back twice, "
                "which happens when the table was dropped and re-created within the stream; "
                "stop before the DROP with --stop-before-lsn (with pg_walinspect in the source "
                "database walrecover finds the DROP itself and rebuilds only the later table)",
                **facts,
            )
        if self.ddl is not None:
            advice = (
                "check the --ddl file: its constraints, indexes and column types must accept "
                "every row the table ever held"
            )
        else:
            advice = "the rebuilt table cannot hold it; stop before it with " + self._stop_hint(
                failed.txn if failed is not None else None
            )
        return ReplayError(f"{what} cannot be applied to {self.into}: {reason}; {advice}", **facts)

    def _copy(self, inserts: list[_Pending]) -> None:
        columns = self.columns
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self.target.ident, sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        try:
            with self.conn.cursor() as cur, cur.copy(statement) as copy:
                for item in inserts:
                    new = item.change.new
                    assert new is not None
                    copy.write_row(tuple(new.get(name) for name in columns))
        except psycopg.Error as exc:
            # COPY's error context names the line (1-based) it stopped at.
            line = _COPY_LINE.search(getattr(exc.diag, "context", None) or "")
            if line is not None and 0 < int(line.group(1)) <= len(inserts):
                self._failed = inserts[int(line.group(1)) - 1]
            raise

    def _apply_others(self, items: list[_Pending]) -> None:
        """Run updates, deletes and truncates in order, grouping runs of the same statement."""
        run: list[tuple[_Pending, list[str | None]]] = []
        run_sql: sql.Composed | None = None
        for item in items:
            statement, params = self._statement(item.change)
            if run and statement != run_sql:
                self._execute_run(run_sql, run)  # type: ignore[arg-type]
                run = []
            run_sql = statement
            run.append((item, params))
        if run:
            self._execute_run(run_sql, run)  # type: ignore[arg-type]

    def _statement(self, change: Change) -> tuple[sql.Composed, list[str | None]]:
        """The statement of an update, delete or truncate, and its parameters: new values,
        then what identifies the row."""
        if change.op is Op.TRUNCATE:
            return sql.SQL("TRUNCATE {}").format(self.target.ident), []
        if self.idempotent and change.op is not Op.DELETE:
            old, new = self._identity(change), change.new or {}
            moved = change.old is not None and old != tuple(new.get(k) for k in self.key)
            row = self._where(change) if moved else None
            return upsert(self.target.ident, self.columns, self.key, self._types, change, row)
        where, params = self._where(change)
        if change.op is Op.DELETE:
            statement = sql.SQL("DELETE FROM {} WHERE {} RETURNING 1").format(
                self.target.ident, where
            )
            return statement, params
        new = change.new or {}
        assigned = [name for name in self.columns if name in new]
        # As text, like every value the stream carries (bytea as the session prints it, jsonb's
        # 1.50 as 1.50): the audit's after image holds what the table holds.
        returning = (
            sql.SQL(", ").join(
                sql.SQL("{}::text").format(sql.Identifier(name))
                for name in sorted(change.unchanged_toast)
            )
            if change.unchanged_toast
            else sql.SQL("1")
        )
        statement = sql.SQL("UPDATE {} SET {} WHERE {} RETURNING {}").format(
            self.target.ident,
            sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(name)) for name in assigned
            ),
            where,
            returning,
        )
        return statement, [new[name] for name in assigned] + params

    def _where(self, change: Change) -> tuple[sql.Composable, list[str | None]]:
        """Which row the change touches, as a condition and its parameters.

        With a real key: ``key = value`` (the hot path). Otherwise the old row image names ONE
        row, by the text of its values (``=`` finds 1.50 for 1.5 and does not exist for json):
        ``ctid = (SELECT ctid ... LIMIT 1)``, preferring rows whose columns the image did not
        print are NULL (test_decoding skips NULLs in old images, so printed columns alone may
        look like a key that is not one).
        """
        key = self._identity(change)
        if key is not None:
            condition = sql.SQL(" AND ").join(
                sql.SQL("{} IS NULL" if value is None else "{} = %s").format(sql.Identifier(name))
                for name, value in zip(self.key, key, strict=True)
            )
            return condition, [value for value in key if value is not None]
        image = change.old
        new = change.new
        if (
            image is None
            and change.op is Op.UPDATE
            and self._guess
            and new is not None
            and all(name in new for name in self._guess)
        ):
            # test_decoding prints no old key when the key did not change: the new row has it.
            image = {name: new[name] for name in self._guess}
        if image is None and change.op is Op.DELETE:
            raise ReplayError(
                f"the stream does not say which row the delete{self._at(change)} of "
                f"{self.table} removed (test_decoding prints (no-tuple-data); pgoutput and "
                "wal2json leave such a delete out): the table had no usable replica identity "
                "(REPLICA IDENTITY NOTHING, a DEFERRABLE primary key, or no primary key), so "
                "no plugin's stream can rebuild it past this point; stop before it with "
                + (
                    f"--stop-before-xid {change.xid}"
                    if change.xid is not None
                    else f"--stop-before-lsn {change.lsn}"
                    if change.lsn is not None
                    else self._stop_hint()
                ),
                table=str(self.table),
                lsn=change.lsn,
            )
        if image is None:
            raise ReplayError(
                f"the stream does not say which row the {change.op}{self._at(change)} of "
                f"{self.table} changes: its key is unknown (test_decoding prints key columns only"
                " with an old key) and no old row was logged; give --ddl FILE with the table's "
                "PRIMARY KEY (or, for a table without one, set REPLICA IDENTITY FULL on it)",
                table=str(self.table),
                lsn=change.lsn,
            )
        conditions: list[sql.Composable] = []
        params: list[str | None] = []
        for name in self.columns:
            if name not in image:
                continue
            value, column = image[name], sql.Identifier(name)
            if value is None:
                conditions.append(sql.SQL("{} IS NULL").format(column))
                continue
            if name in self._indexed:
                conditions.append(sql.SQL("{} = %s").format(column))
                params.append(value)
            conditions.append(
                sql.SQL("{}::text = CAST(%s AS {})::text").format(
                    column, sql.SQL(self._types[name])
                )
            )
            params.append(value)
        unprinted = [name for name in self.columns if name not in image]
        order = (
            sql.SQL(" ORDER BY ({}) DESC").format(
                sql.SQL(" AND ").join(
                    sql.SQL("{} IS NULL").format(sql.Identifier(name)) for name in unprinted
                )
            )
            if unprinted
            else sql.SQL("")
        )
        condition = sql.SQL("ctid = (SELECT ctid FROM {} WHERE {}{} LIMIT 1)").format(
            self.target.ident,
            sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true"),
            order,
        )
        return condition, params

    def _execute_run(
        self, statement: sql.Composed, run: list[tuple[_Pending, list[str | None]]]
    ) -> None:
        with self.conn.cursor() as cur:
            if run[0][0].change.op is Op.TRUNCATE:
                for item, _ in run:
                    self._failed = item
                    cur.execute(statement)
                return
            try:
                cur.executemany(statement, [params for _, params in run], returning=True)
            except psycopg.Error:
                # The results that came back before the error: the next statement failed.
                done = _results(cur)
                self._failed = run[done][0] if done < len(run) else run[0][0]
                raise
            for item, _ in run:
                row = cur.fetchone()
                if row is None:
                    item.outcome = Outcome.NO_ROW
                    self.no_row += 1
                elif item.change.unchanged_toast:
                    after = dict(item.change.new or {})
                    after.update(zip(sorted(item.change.unchanged_toast), row, strict=True))
                    item.after = after
                cur.nextset()

    def _commit_batch(self, *, complete: bool) -> None:
        """Send the batch, record progress, seal the audit, then commit, in that order. The
        last commit makes an unlogged build logged."""
        self._flush()
        self._save_progress(complete=complete)
        if complete:
            self.target.finish()
        # After every write of the batch: a publication committed later than this check is
        # later in the WAL than the batch's rows too, so it cannot publish them.
        self.target.check_unpublished()
        if self.sink is not None:
            self.sink.commit(self.checkpoint)
        self.conn.commit()
        self._committed += 1
        self._complete = complete
        self._since_commit = 0
        self.committed_lsn = self.last_lsn
        self.committed_transactions = self.transactions

    @property
    def checkpoint(self) -> Lsn | None:
        """Where the committed work ends: the last commit LSN, or the stream position when the
        stream has no LSNs (capture files of text plugins). The audit seals its parts with it."""
        if self.last_lsn is not None:
            return self.last_lsn
        return Lsn(self._position) if self._position else None

    def _save_progress(self, *, complete: bool) -> None:
        self.target.write_progress(
            Progress(
                source=self.source,
                last_commit_lsn=self.last_lsn,
                last_xid=self._last_xid,
                transactions=self.transactions,
                changes=self.changes,
                no_row=self.no_row,
                first_lsn=self.first_lsn,
                audit=self.audit_id,
                position=self._position,
                complete=complete,
                stream_start_lsn=self.first_stream_start,
                resume_lsn=self._read_end,
                command=self.command,
            )
        )

    def count_rows(self) -> int:
        return self.target.count_rows()

    def publication_warnings(self) -> list[str]:
        """The warning that a publication now publishes the finished table (built unlogged,
        so no subscriber received it), or nothing."""
        if not self.target.unlogged:
            return []
        publications = self.target.published_by()
        self.conn.commit()
        if not publications:
            return []
        names = ", ".join(str(p) for p in publications)
        return [
            f"{self.into} was built unlogged, so no subscriber received its rows; now complete "
            f"and logged, it is published by {names}: do not write to it until you swap it in "
            f"for {self.table}, since subscribers have no {self.into} (a write would stop them)"
            f", and create {self.into} on a subscriber before its REFRESH PUBLICATION or a new "
            "CREATE SUBSCRIPTION"
        ]

    @property
    def left_incomplete(self) -> bool:
        """The target holds committed work of a recovery not marked complete: under its final
        name, but not yet the table at the stop point."""
        built = self._committed > 0 or self.resume_after is not None or self._resume_position > 0
        return built and not self._complete and not self.finished

    def interrupted(self) -> Interrupted:
        """The error for Ctrl-C: what the target kept, and that the table is incomplete.

        What was kept is read back from the progress row: Ctrl-C during a commit may stop the
        client after the server committed, before this object counted it."""
        incomplete, done, last = (
            self.left_incomplete,
            self.committed_transactions,
            self.committed_lsn,
        )
        with contextlib.suppress(psycopg.Error):
            kept = self.target.read_progress()
            if kept is not None and not kept.complete and kept.transactions >= done:
                incomplete, done, last = True, kept.transactions, kept.last_commit_lsn
        if not incomplete:
            return Interrupted(
                "interrupted before anything was committed: nothing was built; rerun the same "
                "command to start again",
                table=str(self.into),
            )
        lsn = f", up to commit LSN {last}" if last is not None else ""
        return Interrupted(
            f"interrupted: {done} transactions committed{lsn}; "
            f"{self.into} is incomplete: rerun the same command to resume, or pass --force to "
            "rebuild it",
            table=str(self.into),
        )

    def note_incomplete(self, exc: WalrecoverError) -> WalrecoverError:
        """Add to ``exc`` that the target is left incomplete under its final name, and how to
        go on (unless the message already says how to rebuild)."""
        if not self.left_incomplete or "--force" in exc.message:
            return exc
        if isinstance(exc, ConnectionFailed):
            note = f" ({self.into} is incomplete until then; --force rebuilds it instead)"
        else:
            note = (
                f"; {self.into} is left incomplete: once that is fixed the same command resumes"
                " it, or pass --force to rebuild it"
            )
        exc.extend(note)
        return exc


def _no_row(count: int, table: TableName, into: TableName) -> list[str]:
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


def _named(xid: int | None, commit_lsn: Lsn | None, end_lsn: Lsn | None) -> str:
    """A transaction for messages: its xid and the LSN the stream gives (commit, else end)."""
    lsn = f"commit LSN {commit_lsn}" if commit_lsn is not None else None
    if lsn is None and end_lsn is not None:
        lsn = f"end LSN {end_lsn}"
    if xid is None:
        return f"the transaction at {lsn}" if lsn else "a later transaction"
    return f"transaction {xid}" + (f" ({lsn})" if lsn else "")


def _where(exc: psycopg.Error) -> str:
    context = getattr(exc.diag, "context", None)
    return f" ({context.splitlines()[0]})" if context else ""


#: Where COPY stopped, in its error context: ``COPY t, line 5, column note: "..."``.
_COPY_LINE = re.compile(r"^COPY .*?, line (\d+)")


def _results(cur: Any) -> int:
    """How many statements of a failed ``executemany`` returned before the failing one."""
    if cur.pgresult is None:
        return 0
    count = 1
    with contextlib.suppress(psycopg.Error):
        while cur.nextset():
            count += 1
    return count


def _same_type(a: str, b: str) -> bool:
    """Two spellings of one type (a plugin that omits modifiers, or qualifies names)."""

    def base(name: str) -> str:
        return name.split("(", maxsplit=1)[0].rsplit(".", 1)[-1].strip('"')

    return base(a) == base(b)


def replay(
    conn: Any,
    events: Iterable[Event],
    table: TableName,
    into: TableName,
    *,
    stop: StopPoint = NO_STOP,
    ddl: str | None = None,
    force: bool = False,
    source: str = "",
    batch_size: int = 20_000,
    sink: AuditSink | None = None,
    audit_id: str | None = None,
    stream_start: Lsn | None = None,
    judge: RecreationJudge | None = None,
    cut_ok: bool = False,
    command: str | None = None,
    on_created: Callable[[Target], None] | None = None,
    idempotent: bool = False,
) -> ReplayResult:
    """Rebuild ``table`` as ``into`` from ``events`` on the target connection ``conn``.

    ``stream_start`` is where the slot copy starts: a resume is refused when it lies past the
    point the unfinished recovery had read to (the user's slot moved). ``cut_ok``: the events
    are a capture's, which may end inside a transaction (:class:`StreamCutShort`); it is left
    out with a warning (not proven exact when a stop point was given and not reached)."""
    started = time.monotonic()
    replayer = Replayer(
        conn,
        table,
        into,
        stop=stop,
        ddl=ddl,
        source=source,
        batch_size=batch_size,
        sink=sink,
        audit_id=audit_id,
        stream_start=stream_start,
        judge=judge,
        cut_ok=cut_ok,
        command=command,
        on_created=on_created,
        idempotent=idempotent,
    )
    replayer.prepare(force=force)
    resumed_from = replayer.resume_after
    try:
        replayer.run(events)
    except BaseException as exc:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        if isinstance(exc, KeyboardInterrupt):
            raise replayer.interrupted() from None
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise replayer.note_incomplete(replayer.target.privilege_error(exc)) from None
        if isinstance(exc, psycopg.OperationalError):
            raise replayer.note_incomplete(
                ConnectionFailed(
                    f"lost the target connection during the recovery into {into} "
                    f"({first_line(exc)}): what was committed is kept; rerun the same command "
                    "to resume",
                    table=str(into),
                )
            ) from None
        if isinstance(exc, psycopg.Error):
            raise replayer.note_incomplete(
                ReplayError(
                    f"the recovery into {into} failed: {exc.diag.message_primary or exc}",
                    table=str(into),
                )
            ) from None
        if isinstance(exc, WalrecoverError):
            replayer.note_incomplete(exc)
        raise
    if (
        (replayer.relation is None or replayer.only_cut)
        and resumed_from is None
        and not replayer.resumed_by_position
    ):
        conn.rollback()
        seen = sorted(replayer.other_tables)
        raise TableNotInStream(
            f"table {table} has no change in the stream: check --table"
            " and that the slot existed before its rows were written"
            + (f" (tables in the stream: {', '.join(seen[:20])})" if seen else "")
            + (f"; {replayer.cut.message}" if replayer.cut is not None else ""),
            table=str(table),
            tables=seen,
        )
    return ReplayResult(
        into=str(into),
        relation=replayer.relation or Relation(table.schema, table.name, ()),
        transactions=replayer.transactions,
        changes=replayer.changes,
        rows=replayer.count_rows(),
        no_row=replayer.no_row,
        first_lsn=replayer.first_lsn,
        last_lsn=replayer.last_lsn,
        stopped_before=replayer.stopped_before,
        resumed_from=resumed_from,
        seconds=time.monotonic() - started,
        schema_changes=tuple(replayer.schema_changes),
        unproven=(
            *replayer.unproven,
            *(judge.unproven if judge is not None else ()),
            # Over a baseline of unknown point, a missing row is expected (idempotent replay).
            *(() if idempotent else _no_row(replayer.no_row, table, into)),
        ),
        warnings=(
            *replayer.warnings,
            *replayer.publication_warnings(),
            *(judge.warnings if judge is not None else ()),
        ),
    )
