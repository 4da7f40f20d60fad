"""The replay's commits to the target: how far it got, committed with the data.

:class:`Commits` keeps the :class:`~.progress.Counts` of the recovery (a resumed run starts
from its progress row's), where the stream was read to (the resume point saved with each
batch), and commits each batch in one order: the progress row, the final ``SET LOGGED`` of an
unlogged build, the check that no publication reached the table, the audit's seal, then the
target's commit. See "Progress in the target" in docs/architecture.md.
"""

from __future__ import annotations

from ..db import Connection
from ..stream.lsn import Lsn
from .applied import AuditSink, Txn
from .claim import Claimant
from .progress import Counts, Progress
from .target import Target


class Commits:
    """The committed state of one replay, and its next commit."""

    def __init__(self, target: Target, claimant: Claimant, sink: AuditSink | None) -> None:
        self.target, self.claimant, self.sink = target, claimant, sink
        self.conn: Connection = target.conn
        #: What the recovery applied so far (a resumed run's included), and what the last
        #: target commit holds (for the message when interrupted).
        self.counts = self.committed = Counts()
        #: Where the recovery's first copy of the slot started (kept across resumes), and the
        #: end of the last transaction read (the resume point saved with each batch).
        self.first_stream_start = self.read_end = claimant.stream_start
        #: Source transactions seen (the resume position for streams without LSNs).
        self.position = 0
        #: Commits made by this run, whether the last one marked the recovery complete, and
        #: row changes taken in since it.
        self.made = 0
        self.complete = False
        self.since = 0

    def resume(self, progress: Progress) -> None:
        """Go on from the progress row of an unfinished (or unpublished) recovery."""
        if progress.stream_start_lsn is not None:
            self.first_stream_start = progress.stream_start_lsn
        self.read_end = progress.resume_lsn or progress.last_commit_lsn or self.read_end
        self.counts = self.committed = progress.counts

    def applied(self, txn: Txn) -> None:
        """A transaction committed before the stop point and was applied."""
        if txn.end_lsn is not None and (self.read_end is None or txn.end_lsn > self.read_end):
            self.read_end = txn.end_lsn
        if txn.changes:
            self.counts = self.counts.committed(txn.changes, txn.commit_lsn or txn.end_lsn, txn.xid)

    def left_out(self, txn: Txn) -> None:
        """A transaction was left out after its changes were taken in (they still count)."""
        self.counts = self.counts.plus(changes=txn.changes)

    def commit(self, *, complete: bool, no_row: int) -> None:
        """Record progress (with ``no_row`` more updates or deletes that found no row), seal
        the audit, then commit, in that order. The last commit makes an unlogged build logged."""
        self.counts = self.counts.plus(no_row=no_row)
        claimant, target = self.claimant, self.target
        target.write_progress(
            Progress(
                source=claimant.source,
                counts=self.counts,
                audit=claimant.audit,
                position=self.position,
                complete=complete,
                stream_start_lsn=self.first_stream_start,
                resume_lsn=self.read_end,
                command=claimant.command,
            )
        )
        if complete:
            target.finish()
        # After every write of the batch: a publication committed later than this check is
        # later in the WAL than the batch's rows too, so it cannot publish them.
        target.check_unpublished()
        if self.sink is not None:
            self.sink.commit(self.checkpoint)
        self.conn.commit()
        self.made += 1
        self.complete = complete
        self.since = 0
        self.committed = self.counts

    @property
    def checkpoint(self) -> Lsn | None:
        """Where the committed work ends: the last commit LSN, or the stream position when the
        stream has no LSNs (capture files of text plugins). The audit seals its parts with it."""
        if self.counts.last_lsn is not None:
            return self.counts.last_lsn
        return Lsn(self.position) if self.position else None
