"""Transactions held until their outcome: streamed ones (protocol 2: Stream Start/Stop blocks,
then Stream Commit or Stream Abort) and prepared ones (protocol 3: Begin Prepare ... Prepare, or
Stream Prepare, then Commit Prepared or Rollback Prepared).

:class:`HeldTransactions` is the decoder's state between transactions and the handlers of these
messages; :class:`~.decoder.PgoutputDecoder` adds plain transactions, changes and relations.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ....errors import DecodeError
from ...lsn import Lsn
from ...model import Begin, Commit, Event, Relation
from .messages import (
    BeginPrepareMessage,
    CommitPreparedMessage,
    PrepareMessage,
    RollbackPreparedMessage,
    StreamAbortMessage,
    StreamCommitMessage,
    StreamPrepareMessage,
    StreamStartMessage,
)
from .reader import where
from .spill import Pending


class HeldTransactions:
    """Where the stream is (inside a plain transaction, a stream block, a transaction being
    prepared) and the streamed and prepared transactions waiting for their outcome.

    Each held transaction keeps at most ``spill_threshold`` changes in memory, the rest in an
    anonymous temporary file in ``spill_dir``.
    """

    def __init__(self, spill_dir: str | None, spill_threshold: int) -> None:
        if spill_threshold < 1:
            raise ValueError("spill_threshold must be at least 1")
        self._spill_dir = spill_dir
        self._spill_threshold = spill_threshold
        #: The relations known so far, by relation id (a committed stream adds its own).
        self._relations: dict[int, Relation] = {}
        #: The Begin of the plain transaction being passed through.
        self._open: Begin | None = None
        #: The transaction between Begin Prepare and Prepare.
        self._preparing: Pending | None = None
        #: The transaction of the current Stream Start/Stop block.
        self._stream: Pending | None = None
        self._streamed: dict[int, Pending] = {}
        self._prepared: dict[int, Pending] = {}
        #: Changes that went through a spill file, counted when their transaction ended.
        self.spilled_changes = 0

    # -- streamed transactions (protocol 2) ----------------------------------------------------

    def _on_stream_start(self, message: StreamStartMessage, lsn: Lsn | None) -> None:
        self._expect_between_transactions("Stream Start", lsn)
        pending = self._streamed.get(message.xid)
        if pending is None:
            pending = self._new_pending(message.xid, lsn, complete=message.first_segment)
            self._streamed[message.xid] = pending
        elif message.first_segment:
            raise DecodeError(
                f"pgoutput Stream Start{where(lsn)} opens transaction {message.xid} a second "
                "time: the stream is damaged",
                lsn=lsn,
                xid=message.xid,
            )
        self._stream = pending

    def _on_stream_stop(self, lsn: Lsn | None) -> None:
        if self._stream is None:
            raise DecodeError(
                f"pgoutput Stream Stop{where(lsn)} outside a stream block: the stream is damaged",
                lsn=lsn,
            )
        self._stream = None

    def _on_stream_commit(self, message: StreamCommitMessage, lsn: Lsn | None) -> Sequence[Event]:
        self._expect_between_transactions("Stream Commit", lsn)
        pending = self._take_streamed(message.xid, "Stream Commit", lsn)
        return self._emit(pending, message.commit_lsn, message.end_lsn, message.commit_time)

    def _on_stream_abort(self, message: StreamAbortMessage, lsn: Lsn | None) -> None:
        self._expect_between_transactions("Stream Abort", lsn)
        pending = self._streamed.get(message.xid)
        if pending is None:
            return  # nothing of it was seen: nothing to forget
        if message.subxid == message.xid:
            del self._streamed[message.xid]
            self._drop(pending)
        else:
            pending.abort_subtransaction(message.subxid)

    def _take_streamed(self, xid: int, what: str, lsn: Lsn | None) -> Pending:
        pending = self._streamed.pop(xid, None)
        if pending is None or not pending.complete:
            if pending is not None:
                self._drop(pending)
            raise DecodeError(
                f"pgoutput {what} of transaction {xid}{where(lsn)} but the stream does not hold "
                "all of its streamed changes (it starts after the transaction's first stream "
                "segment): read the slot from an earlier position",
                lsn=lsn,
                xid=xid,
            )
        return pending

    # -- two-phase transactions (protocol 3) ---------------------------------------------------

    def _on_begin_prepare(self, message: BeginPrepareMessage, lsn: Lsn | None) -> None:
        self._expect_between_transactions("Begin Prepare", lsn)
        self._preparing = self._new_pending(message.xid, lsn, complete=True)

    def _on_prepare(self, message: PrepareMessage, lsn: Lsn | None) -> None:
        pending = self._preparing
        if pending is None or pending.xid != message.xid:
            raise DecodeError(
                f"pgoutput Prepare of transaction {message.xid}{where(lsn)} without its Begin "
                "Prepare: the stream is damaged or starts mid-transaction",
                lsn=lsn,
                xid=message.xid,
            )
        self._preparing = None
        self._park(pending, message.gid, lsn)

    def _on_stream_prepare(self, message: StreamPrepareMessage, lsn: Lsn | None) -> None:
        self._expect_between_transactions("Stream Prepare", lsn)
        self._park(self._take_streamed(message.xid, "Stream Prepare", lsn), message.gid, lsn)

    def _park(self, pending: Pending, gid: str, lsn: Lsn | None) -> None:
        if pending.xid in self._prepared:
            self._drop(pending)
            raise DecodeError(
                f"pgoutput: transaction {pending.xid} is prepared twice{where(lsn)}: the stream "
                "is damaged",
                lsn=lsn,
                xid=pending.xid,
            )
        pending.gid = gid
        self._prepared[pending.xid] = pending

    def _on_commit_prepared(
        self, message: CommitPreparedMessage, lsn: Lsn | None
    ) -> Sequence[Event]:
        self._expect_between_transactions("Commit Prepared", lsn)
        pending = self._prepared.pop(message.xid, None)
        if pending is None:
            raise DecodeError(
                f"pgoutput Commit Prepared of transaction {message.xid} ({message.gid!r})"
                f"{where(lsn)} but the stream does not hold its PREPARE: read the slot from an "
                "earlier position (before PREPARE TRANSACTION)",
                lsn=lsn,
                xid=message.xid,
            )
        return self._emit(pending, message.commit_lsn, message.end_lsn, message.commit_time)

    def _on_rollback_prepared(self, message: RollbackPreparedMessage, lsn: Lsn | None) -> None:
        self._expect_between_transactions("Rollback Prepared", lsn)
        pending = self._prepared.pop(message.xid, None)
        if pending is not None:
            self._drop(pending)

    # -- buffered transactions -----------------------------------------------------------------

    def _new_pending(self, xid: int, lsn: Lsn | None, *, complete: bool) -> Pending:
        return Pending(xid, lsn, complete, self._spill_threshold, self._spill_dir)

    def _emit(
        self, pending: Pending, commit_lsn: Lsn, end_lsn: Lsn, commit_time: datetime
    ) -> Sequence[Event]:
        """A buffered transaction committed: its schema now counts, its events come out."""
        self._relations.update(pending.relations)
        self.spilled_changes += pending.spilled
        begin = Begin(pending.xid, commit_lsn, end_lsn, commit_time, pending.lsn)
        return pending.events(begin, Commit(pending.xid, commit_lsn, end_lsn, commit_time))

    def _drop(self, pending: Pending) -> None:
        self.spilled_changes += pending.spilled
        pending.discard()

    # -- state checks --------------------------------------------------------------------------

    def _inside(self) -> str | None:
        if self._stream is not None:
            return f"a stream block of transaction {self._stream.xid} (no Stream Stop)"
        if self._open is not None:
            return f"transaction {self._open.xid} (no Commit)"
        if self._preparing is not None:
            return f"prepared transaction {self._preparing.xid} (no Prepare)"
        return None

    def _current_xid(self) -> int | None:
        for pending in (self._stream, self._preparing):
            if pending is not None:
                return pending.xid
        return self._open.xid if self._open is not None else None

    def _expect_between_transactions(self, what: str, lsn: Lsn | None) -> None:
        inside = self._inside()
        if inside is not None:
            raise DecodeError(
                f"pgoutput {what}{where(lsn)} inside {inside}: the stream is damaged",
                lsn=lsn,
                xid=self._current_xid(),
            )
