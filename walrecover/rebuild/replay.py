"""Replay: apply committed changes, in commit order, to a rebuilt table.

The replay loop reads the event stream transaction by transaction and decides what each is:
already applied by an interrupted run (:class:`~.claim.Resume`), past the stop point (checked at
each transaction's Begin when the plugin says when it commits, as wal2json and pgoutput do,
otherwise at its Commit, a savepoint guarding a transaction too big to buffer), or to apply.
What it applies goes to the batch applier (:mod:`.apply`: COPY for inserts, pipelined updates
and deletes), after the table's shape follows the stream's definition (:mod:`.schema`). Each
batch commits together with a progress row (the :class:`~.progress.Counts` so far, and the
last applied commit LSN) in the target database, so a killed run resumes exactly where the last
commit left it, with no duplicate and no gap. Before reading, one call claims the target for
this recovery (:func:`~.claim.claim`). Only ``replay`` writes to the target; it never touches
the source.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypedDict, Unpack

import psycopg

from ..db import Connection
from ..errors import ReplayError, StopPointError, StreamCutShort, WalrecoverError
from ..stream.lsn import Lsn
from ..stream.model import (
    NO_STOP,
    Begin,
    Change,
    Commit,
    Event,
    Op,
    Relation,
    StopPoint,
    TableName,
)
from .applied import AppliedChange, AuditSink, Outcome, Txn
from .apply import Applier
from .claim import Claimant, Resume, claim
from .commits import Commits
from .ending import (
    AfterStop,
    ReplayResult,
    cut_reason,
    failure,
    not_in_stream,
    nothing_before_stop,
    recorded_unproven,
    replay_result,
    xid_not_committed,
)
from .idempotent import IdempotentApplier
from .progress import Counts
from .recreation import RecreationJudge
from .schema import Shape
from .target import PROGRESS_SCHEMA, Target

__all__ = ["AppliedChange", "AuditSink", "Outcome", "ReplayResult", "Replayer", "replay"]


class Replayer:
    """Applies an event stream to one target table. Use :func:`replay` unless you need steps."""

    def __init__(
        self,
        conn: Connection,
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
        self.conn, self.table, self.into, self.stop = conn, table, into, stop
        self.batch_size, self.sink = batch_size, sink
        #: Tells when the table's changes switch to a re-created table of the same name.
        self.judge = judge
        #: A capture may end inside a transaction (:class:`StreamCutShort`): it is left out.
        self.cut_ok = cut_ok
        self.target = Target(conn, into)
        # A run resumes only the same recovery: same source and same stop point.
        self.claimant = Claimant(f"{source} ({stop.describe()})", audit_id, command, stream_start)
        self.shape = Shape(self.target, table, ddl=ddl, on_created=on_created)
        # Over a baseline of unknown point, every change is applied idempotently.
        applier = IdempotentApplier if idempotent else Applier
        self.applier = applier(conn, self.shape, table, batch_size=batch_size, sink=sink, ddl=ddl)
        self.after_stop = AfterStop(table, batch_size=batch_size, cut_ok=cut_ok)
        self.resume = Resume(None, str(into))
        #: The counts, the read position, and each batch's commit with its progress row.
        self.commits = Commits(self.target, self.claimant, sink)
        #: Why the stream ended inside a transaction, when it did.
        self.cut: StreamCutShort | None = None
        #: Everything was applied by an earlier run (only its audit was left to publish).
        self.finished = False
        self.stopped_before: tuple[int | None, Lsn | None] | None = None
        #: Reasons the rebuilt table may differ from the truth (see :data:`EXIT_UNPROVEN`).
        self.unproven: list[str] = []
        #: What the user must know about the rebuilt table (see :attr:`ReplayResult.warnings`).
        self.warnings: list[str] = []
        #: Other tables seen in the stream (a few), to help when the asked-for one is absent.
        self.other_tables: set[str] = set()
        self._txn: Txn | None = None
        #: The transaction the stop point left out at its Commit, and its changes.
        self._stop_txn: Txn | None = None
        self._left_out: list[Change] = []
        #: The table's definition at its last change skipped as applied by an earlier run.
        self._applied_relation: Relation | None = None
        #: The last relations :meth:`_ours` found to be the table's and another table's, and
        #: the last one :meth:`_other` noted.
        self._ours_last: Relation | None = None
        self._theirs_last: Relation | None = None
        self._other_last: Relation | None = None

    @property
    def relation(self) -> Relation | None:
        return self.shape.relation

    @property
    def stream_relation(self) -> Relation | None:
        """The table's relation as the stream last showed it: the one replay applied changes
        to, else (a resumed run with nothing left to apply) that of the changes it skipped,
        which the checks after replay need (pgoutput's relation id)."""
        return self.shape.relation or self._applied_relation

    def prepare(self, *, force: bool) -> None:
        """Claim the target: lock it, check it is free (or resumable), set up the progress."""
        sink = self.sink
        got = claim(
            self.target,
            self.claimant,
            force=force,
            audit_unpublished=(lambda: sink.unpublished() is not None) if sink else None,
        )
        self.warnings.extend(got.warnings)
        progress = got.resumed
        if progress is not None:
            self.shape.created = True
            self.resume = Resume(progress, str(self.into))
            self.commits.resume(progress)
        self.finished = got.finished
        if got.finished and progress is not None:
            # Nothing is read again: what the checks after the earlier run's replay found
            # (a table replaced after its last change, lost changes) stands for this one.
            self.unproven.extend(recorded_unproven(progress.result, self.into))
        if sink is not None:
            sink.start(got.checkpoint, resuming=progress is not None)

    # -- the stream --------------------------------------------------------------------------

    def run(self, events: Iterable[Event]) -> None:
        """Apply ``events`` up to the stop point; commit the last batch; mark it complete."""
        if self.finished:
            return  # resumed only to publish the audit: everything is applied
        stream = iter(events)
        try:
            self._read(stream)
        except StreamCutShort as exc:
            if not self.cut_ok:
                raise
            self._cut_short(exc)
        self._finish(stream)

    def _read(self, stream: Iterator[Event]) -> None:
        for event in stream:
            if isinstance(event, Change):
                txn = self._txn
                if txn is None:
                    continue
                if not self._watch(event, txn):
                    if not txn.skip:
                        self._other(event)
                elif not txn.skip:
                    self._change(event)
                elif event.relation.complete:
                    self._applied_relation = event.relation
            elif isinstance(event, Begin) and self._begin(event):
                self._audit_after_stop(Txn.of(event), stream)
                return
            elif isinstance(event, Commit) and self._commit(event):
                self._audit_after_stop(self._stop_txn, stream)
                return

    def _finish(self, stream: Iterator[Event]) -> None:
        """After the loop: refuse what cannot be built, else commit the last batch."""
        if self._txn is not None and self.stopped_before is None:
            raise ReplayError(
                f"the stream ended inside transaction {self._txn.xid}: it is truncated",
                table=str(self.table),
            )
        nothing = self.counts.transactions == 0 and not self.commits.made
        if self.stopped_before is not None and nothing and not self.resume.resuming:
            self.conn.rollback()  # nothing to build: leave no empty table behind
            later = self.after_stop.first if self.relation is None else None
            if self.relation is None and later is None:
                later = self.after_stop.scan(stream, self.stopped_before, self._other)
                if later is None:
                    return  # not in the stream at all: replay() says so, listing what is there
            raise nothing_before_stop(self.table, self.stop, later)
        if self.stop.xid is not None and self.stopped_before is None and self.cut is None:
            self._xid_missing(self.stop.xid)
        if (self.relation is None or self.only_cut) and not self.resume.resuming:
            self.conn.rollback()  # the table never appeared: commit nothing, not even progress
            return
        self._commit_batch(complete=True)

    def _xid_missing(self, xid: int) -> None:
        """The stop xid never committed in the stream: nothing was left out."""
        if not self.commits.made and self.resume.after is None:
            self.conn.rollback()  # nothing of this run was committed: leave no trace
            raise xid_not_committed(xid, None)
        self._commit_batch(complete=False)
        raise xid_not_committed(xid, self.into)

    def _cut_short(self, exc: StreamCutShort) -> None:
        """The capture ends inside a transaction: leave it out (it never committed in the file),
        warn, and say the table is not proven at a stop point the file did not reach."""
        self.cut = exc
        self.warnings.append(exc.message)
        txn, self._txn = self._txn, None
        if txn is not None:
            self.commits.position -= 1
            if not txn.skip:
                self.applier.take_back()
                self.commits.left_out(txn)
        if self.stopped_before is not None or not self.stop.is_set:
            return  # the stop point came first, or the stop point is the file's end
        xid = exc.facts.get("xid")
        if self.stop.xid is not None and xid == self.stop.xid:
            self.stopped_before = (xid, None)  # it would have been left out anyway
            return
        self.unproven.append(cut_reason(exc, txn, self.stop, self.counts, self.table, self.into))

    def _audit_after_stop(self, txn: Txn | None, stream: Iterator[Event]) -> None:
        """Send the table's changes past the stop point to the audit as ``after_stop``.

        Only with an audit: without one, replay stops reading at the stop point."""
        if self.sink is None:
            return
        self.applier.flush()
        left_out, self._left_out = self._left_out, []
        self.after_stop.audit(self.sink, txn, left_out, stream)

    def _ours(self, change: Change) -> bool:
        relation = change.relation
        if relation is self._ours_last:
            return True  # the relation object of the table's last change (the common case)
        if relation is self._theirs_last:
            return False  # that of the last change of another table
        if relation.same_table(self.table.schema, self.table.name):
            self._ours_last = relation
            return True
        self._theirs_last = relation
        return False

    def _other(self, change: Change) -> None:
        """Note another table of the stream (a few), for the message when ours is absent."""
        relation = change.relation
        if relation is self._other_last:
            return  # noted at the table's last change (the common case)
        self._other_last = relation
        if len(self.other_tables) < 50 and relation.schema != PROGRESS_SCHEMA:
            self.other_tables.add(relation.qualified_name)

    def _watch(self, change: Change, txn: Txn) -> bool:
        """Ask the judge about every change of the table, applied or skipped by a resume: a
        change of a re-created table first empties what the earlier one left (a TRUNCATE).
        Whether the change is the table's."""
        txn.events += 1
        if not self._ours(change):
            return False
        txn.ours += 1
        if self.judge is None:
            return True
        recreated = self.judge.change(change, txn.xid, txn.commit_lsn)
        if recreated is None or txn.skip or not self.shape.created:
            return True
        if self.shape.relation is None:  # resumed: the earlier table's rows are in the target
            self.shape.adopt(change.relation, self.applier)
        assert self.shape.relation is not None
        self._change(Change(Op.TRUNCATE, self.shape.relation, lsn=recreated.lsn, xid=recreated.xid))
        return True

    def _begin(self, event: Begin) -> bool:
        """Open a transaction; True if the stop point says to stop here."""
        stops = self.stop.stops(event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
        if stops:
            self.stopped_before = (event.xid, event.commit_lsn or event.end_lsn)
            return True
        txn = Txn.of(event, decided=stops is False)
        self.commits.position += 1
        txn.skip, txn.skip_unsure = self.resume.already_applied(event, self.commits.position)
        self._txn = txn
        self.applier.begin(txn, guarded=not txn.decided or self.cut_ok)
        return False

    @property
    def only_cut(self) -> bool:
        """The table's only changes were in the transaction a cut capture ends inside."""
        return self.cut is not None and self.counts.transactions == 0 and not self.commits.made

    def _commit(self, event: Commit) -> bool:
        """Close the transaction; True if the stop point says it (and all after) is left out."""
        txn = self._txn
        if txn is None:
            raise ReplayError("a commit without a begin: the stream is damaged")
        self._txn = None
        txn.commit_lsn = txn.commit_lsn or event.commit_lsn
        txn.end_lsn = txn.end_lsn or event.end_lsn
        txn.commit_time = txn.commit_time or event.commit_time
        self.resume.check(txn)
        if not txn.skip and not txn.decided and self._past_stop(txn):
            if self.judge is not None:
                self.judge.discard()  # what it saw in this transaction is past the stop
            self._left_out = self.applier.take_back()
            self.commits.left_out(txn)
            self._stop_txn = txn
            self.stopped_before = (txn.xid, txn.commit_lsn or txn.end_lsn)
            return True
        if self.judge is not None:  # it committed before the stop point
            self.judge.commit(
                txn.xid, txn.commit_lsn, txn.end_lsn, events=txn.events, ours=txn.ours
            )
        self.applier.keep()
        if txn.skip:
            return False
        self.commits.applied(txn)
        if txn.changes and self.commits.since >= self.batch_size:
            self._commit_batch(complete=False)
        return False

    def _past_stop(self, txn: Txn) -> bool:
        """Whether a transaction the stop point could not decide at its Begin commits after it."""
        stops = self.stop.stops(txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time)
        if stops is None:
            raise StopPointError(
                f"the stream does not say when transaction {txn.xid} committed, so stop "
                f"point {self.stop.describe()} cannot be applied: use --stop-before-xid",
            )
        return stops

    def _change(self, change: Change) -> None:
        if not self._ours(change):
            self._other(change)
            return
        txn = self._txn
        assert txn is not None
        shape = self.shape
        if shape.relation is None and change.op is Op.TRUNCATE and not shape.created:
            return  # nothing was recovered before it: there is nothing to truncate
        if shape.relation is None:
            # Resumed: the target has the table's definition as of the last change the earlier
            # run applied; an ALTER TABLE after it is followed like any other.
            shape.adopt(self._applied_relation or change.relation, self.applier)
        shape.follow(change, txn, self.applier)
        txn.changes += 1
        self.commits.since += 1
        self.applier.add(change)

    # -- committing --------------------------------------------------------------------------

    def _commit_batch(self, *, complete: bool) -> None:
        """Send the batch, then commit it with its progress (see :meth:`.Commits.commit`)."""
        self.applier.flush()
        self.commits.commit(complete=complete, no_row=self.applier.take_no_row())

    @property
    def counts(self) -> Counts:
        return self.commits.counts

    @property
    def left_incomplete(self) -> bool:
        """The target holds committed work of a recovery not marked complete: under its final
        name, but not yet the table at the stop point."""
        built = self.commits.made > 0 or self.resume.resuming
        return built and not self.commits.complete and not self.finished

    def failure(self, exc: BaseException) -> WalrecoverError | None:
        """The error to end with after ``exc`` (see :func:`.ending.failure`)."""
        return failure(exc, self.target, self.left_incomplete, self.commits.committed)


class ReplayOptions(TypedDict, total=False):
    """The keyword options of :class:`Replayer` (and :func:`replay`)."""

    stop: StopPoint
    ddl: str | None
    source: str
    batch_size: int
    sink: AuditSink | None
    audit_id: str | None
    stream_start: Lsn | None
    judge: RecreationJudge | None
    cut_ok: bool
    command: str | None
    on_created: Callable[[Target], None] | None
    idempotent: bool


def replay(
    conn: Connection,
    events: Iterable[Event],
    table: TableName,
    into: TableName,
    *,
    force: bool = False,
    **options: Unpack[ReplayOptions],
) -> ReplayResult:
    """Rebuild ``table`` as ``into`` from ``events`` on the target connection ``conn``.

    ``options`` are :class:`Replayer`'s. ``stream_start`` is where the slot copy starts: a
    resume is refused when it lies past the point the unfinished recovery had read to (the
    user's slot moved). ``cut_ok``: the events are a capture's, which may end inside a
    transaction (:class:`StreamCutShort`); it is left out with a warning (not proven exact when
    a stop point was given and not reached). ``idempotent``: the table starts from a baseline
    whose point is not known exactly (see :mod:`.idempotent`)."""
    started = time.monotonic()
    replayer = Replayer(conn, table, into, **options)
    replayer.prepare(force=force)
    resumed_from = replayer.resume.after
    try:
        replayer.run(events)
    except BaseException as exc:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        error = replayer.failure(exc)
        if error is None:
            raise
        raise error from None
    if (
        (replayer.relation is None or replayer.only_cut)
        and resumed_from is None
        and not replayer.resume.by_position
    ):
        conn.rollback()
        raise not_in_stream(table, sorted(replayer.other_tables), replayer.cut)
    return replay_result(replayer, resumed_from, time.monotonic() - started)
