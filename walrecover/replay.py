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
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import psycopg
from psycopg import sql

from .errors import (
    ConnectionFailed,
    Interrupted,
    PrivilegeError,
    ReplayError,
    StopPointError,
    TableNotInStream,
    TargetExists,
    WalrecoverError,
    first_line,
)
from .lsn import Lsn
from .model import (
    NO_STOP,
    Begin,
    Change,
    Commit,
    Event,
    Op,
    Relation,
    StopPoint,
    TableName,
    Values,
)
from .sources import ProgressCallback
from .target import PROGRESS_SCHEMA, Progress, Target


class Outcome(StrEnum):
    """What replay did with a row change."""

    APPLIED = "applied"
    #: An update or delete found no row with its key (the row predates the stream).
    NO_ROW = "no_row"
    #: Applied, then overwritten by a later update of the same row (set when the audit closes).
    SUPERSEDED = "superseded"
    #: Applied, then removed by a later delete or truncate (set when the audit closes).
    REMOVED = "removed"
    #: Not applied: its transaction commits at or after the stop point.
    AFTER_STOP = "after_stop"


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

    :class:`~walrecover.audit.AuditWriter` is the implementation; replay calls ``commit`` just
    before it commits the same changes to the target, and mirrors its savepoints.
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


@dataclass(slots=True)
class _Txn:
    xid: int | None
    commit_lsn: Lsn | None
    end_lsn: Lsn | None
    commit_time: datetime | None
    decided: bool
    #: Already applied by an earlier, interrupted run: its changes are skipped.
    skip: bool = False
    changes: int = 0


@dataclass(slots=True)
class _Pending:
    change: Change
    txn: _Txn
    outcome: Outcome = Outcome.APPLIED
    after: Values | None = None


@dataclass(slots=True)
class _Batch:
    """Changes not yet sent, in stream order, with the indexes of inserts and other ops."""

    pending: list[_Pending] = field(default_factory=list)
    inserts: list[int] = field(default_factory=list)
    others: list[int] = field(default_factory=list)
    insert_keys: set[tuple[str | None, ...]] = field(default_factory=set)
    other_keys: set[tuple[str | None, ...]] = field(default_factory=set)

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
    ) -> None:
        self.conn = conn
        self.target = Target(conn, into)
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
        self.key: tuple[str, ...] = ()
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
        #: Other tables seen in the stream (a few), to help when the asked-for one is absent.
        self.other_tables: set[str] = set()
        self._left_out: list[Change] = []
        self._stop_txn: _Txn | None = None
        self.resume_after: Lsn | None = None
        self._batch = _Batch()
        self._txn: _Txn | None = None
        self._txn_mark = (0, 0, 0)
        self._savepoint = False
        self._created = False
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
            self._resume(progress)
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

    def _resume(self, progress: Progress) -> None:
        self._created = True
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
        for event in stream:
            if isinstance(event, Change):
                if self._txn is not None and not self._txn.skip:
                    self._change(event)
            elif isinstance(event, Begin):
                if self._begin(event):
                    self._audit_after_stop(event, stream)
                    break
            elif self._commit(event):
                self._audit_after_stop(None, stream)
                break
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
        if self.stop.xid is not None and self.stopped_before is None:
            if not self._committed and self.resume_after is None:
                self.conn.rollback()  # nothing of this run was committed: leave no trace
                raise StopPointError(
                    f"transaction {self.stop.xid} does not commit in the stream: nothing was "
                    "built; check --stop-before-xid",
                    xid=self.stop.xid,
                )
            self._commit_batch(complete=False)
            raise StopPointError(
                f"transaction {self.stop.xid} does not commit in the stream, so nothing was left"
                f" out: {self.into} holds every change and is not marked complete; check "
                "--stop-before-xid and rebuild with --force",
                xid=self.stop.xid,
                table=str(self.into),
            )
        if self.relation is None and self.resume_after is None and not self.resumed_by_position:
            self.conn.rollback()  # the table never appeared: commit nothing, not even progress
            return
        self._commit_batch(complete=True)

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
        for event in stream:
            if isinstance(event, Change):
                if event.relation.same_table(self.table.schema, self.table.name):
                    rows.append(self._left(event, txn))
                    if len(rows) >= self.batch_size:
                        sink.write(rows)
                        rows = []
            elif isinstance(event, Begin):
                txn = _Txn(event.xid, event.commit_lsn, event.end_lsn, event.commit_time, True)
            elif txn is not None:
                txn.commit_lsn = txn.commit_lsn or event.commit_lsn
                txn.end_lsn = txn.end_lsn or event.end_lsn
                txn.commit_time = txn.commit_time or event.commit_time
        if rows:
            sink.write(rows)

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
        txn.skip = self._already_applied(txn.commit_lsn, txn.end_lsn)
        self._txn = txn
        self._txn_mark = self._batch.mark()
        self._savepoint = False
        return False

    @property
    def resumed_by_position(self) -> bool:
        """Resuming a stream without LSNs (a capture), by transaction position."""
        return self.resume_after is None and self._resume_position > 0

    def _already_applied(self, commit_lsn: Lsn | None, end_lsn: Lsn | None) -> bool:
        """Applied by an interrupted run: by commit LSN, or by position where there are none."""
        if self.resume_after is not None:
            position = commit_lsn if commit_lsn is not None else end_lsn
            return position is not None and position <= self.resume_after
        return self._position <= self._resume_position

    def _commit(self, event: Commit) -> bool:
        """Close the transaction; True if the stop point says it (and all after) is left out."""
        txn = self._txn
        if txn is None:
            raise ReplayError("a commit without a begin: the stream is damaged")
        self._txn = None
        txn.commit_lsn = txn.commit_lsn or event.commit_lsn
        txn.end_lsn = txn.end_lsn or event.end_lsn
        txn.commit_time = txn.commit_time or event.commit_time
        if txn.skip:
            return False
        if not txn.decided:
            stops = self.stop.stops(txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time)
            if stops is None:
                raise StopPointError(
                    f"the stream does not say when transaction {txn.xid} committed, so stop "
                    f"point {self.stop.describe()} cannot be applied: use --stop-before-xid",
                )
            if stops:
                self._left_out = [p.change for p in self._batch.pending[self._txn_mark[0] :]]
                self._stop_txn = txn
                self._batch.truncate(self._txn_mark)
                if self._savepoint:
                    self.conn.execute("ROLLBACK TO SAVEPOINT walrecover_txn")
                    if self.sink is not None:
                        self.sink.rollback_to_savepoint()
                self.stopped_before = (txn.xid, txn.commit_lsn or txn.end_lsn)
                return True
        if self._savepoint:
            self.conn.execute("RELEASE SAVEPOINT walrecover_txn")
            if self.sink is not None:
                self.sink.release_savepoint()
            self._savepoint = False
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
            self._adopt(relation)
        elif relation is not self.relation:
            if relation.complete:
                self._check_schema(change)
            if not self.key and relation.key_columns:
                self._learn_key(relation.key_columns)
        txn.changes += 1
        self.changes += 1
        self._since_commit += 1
        batch = self._batch
        index = len(batch.pending)
        batch.pending.append(_Pending(change, txn))
        if change.op is Op.INSERT:
            key = self._new_identity(change)
            if key is not None and key in batch.other_keys:
                batch.pending.pop()
                self._flush_midway()
                batch = self._batch
                batch.pending.append(_Pending(change, txn))
                index = 0
            batch.inserts.append(index)
            if key is not None:
                batch.insert_keys.add(key)
        elif change.op is Op.TRUNCATE:
            # Nothing may move across a truncate: send what is before it, then it alone.
            batch.pending.pop()
            self._flush_midway()
            self._batch.pending.append(_Pending(change, txn))
            self._batch.others.append(0)
            self._flush_midway()
        else:
            batch.others.append(index)
            for key in (self._identity(change), self._new_identity(change)):
                if key is not None:
                    batch.other_keys.add(key)
        if len(batch) >= self.batch_size * 4:
            self._flush_midway()

    def _adopt(self, relation: Relation) -> None:
        if not self._created:
            self.target.create(relation, self.ddl, self.table)
            self._created = True
        self.relation = relation
        existing = self.target.columns()
        missing = [name for name in relation.column_names if name not in existing]
        if missing:
            raise ReplayError(
                f"{self.into} has no column {missing[0]!r} that the stream carries: "
                "fix the --ddl or drop the target and rebuild",
                table=str(self.into),
            )
        self.columns = relation.column_names
        self.key = self.target.primary_key() or relation.key_columns

    def _learn_key(self, key: tuple[str, ...]) -> None:
        """The stream revealed the key late (test_decoding): index it for updates and deletes."""
        self.key = key
        self.target.index(key)

    def _identity(self, change: Change) -> tuple[str | None, ...] | None:
        """The row's key values before the change, by the target's key; None if not known."""
        if not self.key:
            return None
        for image in (change.old, change.new):
            if image is not None and all(name in image for name in self.key):
                return tuple(image[name] for name in self.key)
        return None

    def _new_identity(self, change: Change) -> tuple[str | None, ...] | None:
        """The row's key values after the change (differs from before when a key changed)."""
        new = change.new
        if self.key and new is not None and all(name in new for name in self.key):
            return tuple(new[name] for name in self.key)
        return self._identity(change)

    def _at(self, change: Change) -> str:
        """Where a change is, for messages: its LSN, else its transaction (capture files)."""
        if change.lsn is not None:
            return f" at LSN {change.lsn}"
        xid = change.xid if change.xid is not None else (self._txn.xid if self._txn else None)
        return f" in transaction {xid}" if xid is not None else ""

    def _stop_hint(self) -> str:
        """The stop option that leaves out the open transaction."""
        txn = self._txn
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
            for name in retyped:
                self.target.retype_column(name, seen[name])
            for column in added:
                self.target.add_column(column)
            for name in dropped:
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
        self.columns = new.column_names

    # -- writing -----------------------------------------------------------------------------

    def _flush_midway(self) -> None:
        """Flush inside an open source transaction, guarding it with a savepoint if undecided."""
        txn = self._txn
        if txn is not None and not txn.decided and not self._savepoint:
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
            batch.insert_keys,
            batch.other_keys,
        )
        self._batch = rest
        return head

    def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        self._send(batch)

    def _send(self, batch: _Batch) -> None:
        if not batch.pending:
            return
        conn = self.conn
        try:
            if batch.inserts:
                self._copy([batch.pending[i].change for i in batch.inserts])
            if batch.others:
                self._apply_others([batch.pending[i] for i in batch.others])
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(
                f"lost the target connection while applying changes to {self.into} "
                f"({first_line(exc)}): what was committed is kept; rerun the same command to "
                "resume",
                table=str(self.into),
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PrivilegeError(
                f"cannot write to {self.into}: {exc.diag.message_primary}; grant the role "
                "INSERT, UPDATE, DELETE and TRUNCATE on it (or build it with another role)",
                table=str(self.into),
            ) from None
        except psycopg.errors.UniqueViolation as exc:
            raise ReplayError(
                f"applying changes to {self.into} failed: {exc.diag.message_primary}"
                f"{_where(exc)}: a row came back twice, which happens when the table was dropped "
                "and re-created within the stream; stop before the DROP with --stop-before-lsn",
                table=str(self.into),
            ) from None
        except psycopg.Error as exc:
            raise ReplayError(
                f"applying changes to {self.into} failed: {exc.diag.message_primary or exc}"
                f"{_where(exc)}; the last committed batch is kept, rerun to resume",
                table=str(self.into),
            ) from None
        del conn
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

    def _copy(self, changes: list[Change]) -> None:
        columns = self.columns
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self.target.ident, sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            for change in changes:
                new = change.new
                assert new is not None
                copy.write_row(tuple(new.get(name) for name in columns))

    def _apply_others(self, items: list[_Pending]) -> None:
        """Run updates, deletes and truncates in order, grouping runs of the same statement."""
        run: list[_Pending] = []
        run_sql: sql.Composed | None = None
        for item in items:
            statement = self._statement(item.change)
            if run and statement != run_sql:
                self._execute_run(run_sql, run)  # type: ignore[arg-type]
                run = []
            run_sql = statement
            run.append(item)
        if run:
            self._execute_run(run_sql, run)  # type: ignore[arg-type]

    def _statement(self, change: Change) -> sql.Composed:
        if change.op is Op.TRUNCATE:
            return sql.SQL("TRUNCATE {}").format(self.target.ident)
        where = self._where(change)
        if change.op is Op.DELETE:
            return sql.SQL("DELETE FROM {} WHERE {} RETURNING 1").format(self.target.ident, where)
        new = change.new or {}
        assigned = [name for name in self.columns if name in new]
        returning = (
            sql.SQL(", ").join(map(sql.Identifier, sorted(change.unchanged_toast)))
            if change.unchanged_toast
            else sql.SQL("1")
        )
        return sql.SQL("UPDATE {} SET {} WHERE {} RETURNING {}").format(
            self.target.ident,
            sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(name)) for name in assigned
            ),
            where,
            returning,
        )

    def _where(self, change: Change) -> sql.Composable:
        key = self._identity(change)
        if key is not None:
            return sql.SQL(" AND ").join(
                sql.SQL("{} IS NULL" if value is None else "{} = %s").format(sql.Identifier(name))
                for name, value in zip(self.key, key, strict=True)
            )
        old = change.old
        if old is None:
            raise ReplayError(
                f"the stream does not say which row the {change.op}{self._at(change)} of "
                f"{self.table} changes: its key is unknown (test_decoding prints key columns only"
                " with an old key) and no old row was logged; give --ddl FILE with the table's "
                "PRIMARY KEY (or, for a table without one, set REPLICA IDENTITY FULL on it)",
                table=str(self.table),
                lsn=change.lsn,
            )
        names = [name for name in self.columns if name in old]
        match = sql.SQL(" AND ").join(
            sql.SQL("{} IS NULL" if old[name] is None else "{} = %s").format(sql.Identifier(name))
            for name in names
        )
        return sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(
            self.target.ident, match
        )

    def _params(self, change: Change) -> list[str | None]:
        """Parameters for :meth:`_statement`: new values, then the non-NULL identity values."""
        params: list[str | None] = []
        if change.op is Op.TRUNCATE:
            return params
        if change.op is Op.UPDATE:
            new = change.new or {}
            params.extend(new[name] for name in self.columns if name in new)
        key = self._identity(change)
        if key is not None:
            params.extend(value for value in key if value is not None)
        else:
            old = change.old or {}
            params.extend(old[n] for n in self.columns if n in old and old[n] is not None)
        return params

    def _execute_run(self, statement: sql.Composed, run: list[_Pending]) -> None:
        with self.conn.cursor() as cur:
            if run[0].change.op is Op.TRUNCATE:
                for _ in run:
                    cur.execute(statement)
                return
            cur.executemany(statement, [self._params(p.change) for p in run], returning=True)
            for item in run:
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
        """Send the batch, record progress, seal the audit, then commit, in that order."""
        self._flush()
        self._save_progress(complete=complete)
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
            )
        )

    def count_rows(self) -> int:
        return self.target.count_rows()

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
) -> ReplayResult:
    """Rebuild ``table`` as ``into`` from ``events`` on the target connection ``conn``."""
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
    if replayer.relation is None and resumed_from is None and not replayer.resumed_by_position:
        conn.rollback()
        seen = sorted(replayer.other_tables)
        raise TableNotInStream(
            f"table {table} has no change in the stream: check --table"
            " and that the slot existed before its rows were written"
            + (f" (tables in the stream: {', '.join(seen[:20])})" if seen else ""),
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
        unproven=tuple(replayer.unproven),
    )
