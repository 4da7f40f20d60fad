"""Read a slot copy through the streaming replication protocol, as ``pg_recvlogical`` does.

A walsender decodes the copy while the client parses and applies what it already sent (the
socket buffers the difference), and it costs the server about half the CPU of
``pg_logical_slot_get_changes`` pages. :class:`ReplicationStream` opens ``START_REPLICATION SLOT
<copy> LOGICAL`` on a ``replication=database`` connection, reads XLogData (``w``) and primary
keepalives (``k``) in COPY BOTH mode through psycopg's libpq wrapper, answers with standby status
updates (``r``) so ``wal_sender_timeout`` never fires, and confirms positions on the copy only.

**Where it stops.** A page read ends after the WAL record that reaches the end LSN (the insert
position seen at open, which no record straddles), so it holds exactly the transactions whose
commit record starts before it. The stream gives the same set: a transaction's Begin carries
where its commit record starts (pgoutput's ``final_lsn``, wal2json's ``lsn``), and the first
Begin at or past the end LSN ends the read before anything of it is yielded, so a transaction is
never cut. Without a transaction in flight, a message past the end LSN, or a keepalive whose
``walEnd`` reached it (the walsender has read every record before it), ends the read too. Only
plugins and options whose Begin says where the commit is, and whose messages carry the xid, are
streamed (:func:`streamable`); the others are read in pages.

**Notices.** They arrive in order between the CopyData messages, so each lands in the page of
the :class:`~..notices.NoticeLog` that is current when it arrives. The stream cuts its pages
where the page reader would: before the first transaction whose commit starts at or past a cut
LSN (the stop point, a baseline's point), and after the commit that brings a page to
``page_size`` messages. A page therefore holds the same transactions and the same notices as
the page reader's, and :class:`~..notices.LossWatch` decides exactly as it does there.
"""

from __future__ import annotations

import contextlib
import re
import select
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import pq

from ...db import Connection
from ..lsn import Lsn
from ..making import raw_message
from ..model import RawMessage
from ..notices import NoticeLog
from .base import ProgressCallback

#: Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
_PG_EPOCH_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
#: How often a status update is sent while reading (pg_recvlogical's default), seconds.
STATUS_INTERVAL = 10.0
#: Idle this long without a message, ask the server for a keepalive (its walEnd), seconds.
IDLE_PING = 0.5
#: After a status update the server refused, how long to wait for its error, seconds.
SEND_FAILED_WAIT = 2.0
_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QQB")
_U64 = struct.Struct(">Q")
_W, _K, _B, _C = ord("w"), ord("k"), ord("B"), ord("C")
#: Where an XLogData's payload starts (after 'w', dataStart, walEnd, sendTime).
_DATA_AT = 1 + _XLOGDATA.size
#: At most this many frames are taken from libpq at a time.
_BATCH = 512
_PGOUTPUT_BEGIN = struct.Struct(">QqI")
#: Longest WAL page header (a segment's first page): a record "starts" after it.
_LONG_PAGE_HEADER = 40
_TRUE = ("1", "true", "on", "yes", "t", "y")


def streamable(plugin: str, options: Sequence[tuple[str, str]]) -> bool:
    """Whether ``plugin`` with ``options`` can be streamed with the same result as pages: its
    Begin must say where the commit record starts, and the xid must be in the messages (a
    prepared transaction's Begin Prepare says neither where nor whether it commits)."""
    given = dict(options)
    if plugin == "pgoutput":
        return given.get("two_phase", "off").strip().lower() not in _TRUE
    if plugin != "wal2json":
        return False
    if given.get("format-version", "1") != "2":
        return False
    return all(
        given.get(name, "0").strip().lower() in _TRUE
        for name in ("include-xids", "include-lsn", "include-transaction")
    )


def replication_command(slot: str, start: Lsn, options: Sequence[tuple[str, str]]) -> str:
    """``START_REPLICATION SLOT "slot" LOGICAL start ("name" 'value', ...)``."""

    def ident(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    listed = ", ".join(f"{ident(name)} {literal(value)}" for name, value in options)
    return f"START_REPLICATION SLOT {ident(slot)} LOGICAL {start}" + (
        f" ({listed})" if listed else ""
    )


#: wal2json's one-line Begin with include-xids and include-lsn.
_W2J_BEGIN = re.compile(r'"xid":(\d+).*?"lsn":"([0-9A-Fa-f]+)/([0-9A-Fa-f]+)"')
_new_lsn = int.__new__  # a dataStart is a uint64: no range check needed


class _Kinds:
    """Which messages begin and commit a transaction, for one plugin: the ``mark`` at ``at``
    (``B`` or ``C``) of a message that :meth:`marked` says is of that kind."""

    def __init__(self, binary: bool) -> None:
        self.pgoutput = binary
        # pgoutput's kind is its first byte; wal2json's is at {"action":"B".
        self.at = 0 if binary else 11
        self.begin_mark: int | str = _B if binary else "B"
        self.commit_mark: int | str = _C if binary else "C"

    def marked(self, data: bytes | str) -> bool:
        """Whether a message whose mark is ``B`` or ``C`` is a Begin or Commit (wal2json's
        mark is that only in a message that starts with ``{"action":"``)."""
        return self.pgoutput or (isinstance(data, str) and data.startswith('{"action":"'))

    def begin(self, data: bytes | str) -> tuple[int, int]:
        """(where the commit record starts, xid) of a transaction's Begin."""
        if isinstance(data, bytes):
            final_lsn, _, xid = _PGOUTPUT_BEGIN.unpack_from(data, 1)
            return int(final_lsn), int(xid)
        match = _W2J_BEGIN.search(data)
        if match is None:
            raise StreamEnded(f"wal2json Begin without its xid and lsn: {data[:200]}")
        return (int(match[2], 16) << 32) | int(match[3], 16), int(match[1])


@dataclass(frozen=True, slots=True)
class _Notice:
    """What :meth:`NoticeLog.handler` reads of a notice."""

    severity_nonlocalized: str | None
    severity: str | None
    message_primary: str | None


class StreamEnded(psycopg.OperationalError):
    """The server ended the replication stream before the end LSN."""


class ReplicationStream:
    """One ``START_REPLICATION`` of a slot copy on a replication connection (see module doc)."""

    def __init__(
        self,
        conn: Connection,
        copy: str,
        *,
        plugin: str,
        options: Sequence[tuple[str, str]],
        start: Lsn,
        end: Lsn,
        notices: NoticeLog,
        binary: bool,
        block_size: int = 8192,
        cuts: Sequence[Lsn] = (),
        page_size: int = 20_000,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.conn = conn
        self.copy = copy
        self.plugin = plugin
        self.options = list(options)
        self.start = start
        self.end = end
        self.notices = notices
        self.binary = binary
        self.block_size = block_size
        self.progress = progress
        #: Where pages of notices are cut (see the module doc), ascending.
        self.cuts = sorted(int(c) for c in cuts if int(start) < int(c) < int(end))
        self.page_size = page_size
        #: The end of the last commit yielded (where the next page of notices starts).
        self.last_commit: Lsn = start
        #: The last position received (reported as written) and consumed (as flushed).
        self.received = int(start)
        self.consumed = int(start)
        self._last_status = 0.0
        self._page_rows = 0
        self._failed: psycopg.Error | None = None
        self._carry: tuple[int, bytes | str | None] | None = None
        self._notices: list[_Notice] = []
        self._noticed = False
        conn.add_notice_handler(self._on_notice)

    def messages(self) -> Iterator[RawMessage]:
        """The copy's messages up to the end LSN, whole transactions only."""
        pgconn = self.conn.pgconn
        pgconn.send_query(replication_command(self.copy, self.start, self.options).encode("utf-8"))
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise self._error(result)
        self.notices.start_page(self.start)
        start, end = int(self.start), int(self.end)
        total = max(end - start, 0)
        count = 0
        kinds = _Kinds(self.binary)
        at, begin_mark, commit_mark = kinds.at, kinds.begin_mark, kinds.commit_mark
        progress, open_xid = self.progress, None
        # A message the walsender sends before the last of a callback's (pgoutput's Relation
        # and Type) has no LSN of its own; a page gives it the LSN of the message it precedes.
        held: list[tuple[bytes | str, int | None]] = []
        while True:
            for lsn, data in self._batch():
                if data is None:  # a keepalive: lsn is the walsender's walEnd
                    if open_xid is None and self._reached(lsn):
                        return self._end(total)
                    continue
                mark = data[at] if len(data) > at else None
                commits = False
                if mark == begin_mark and kinds.marked(data):
                    commit, open_xid = kinds.begin(data)
                    if commit >= end:
                        return self._end(total)
                    if self.cuts and commit >= self.cuts[0]:
                        self._cut(commit)
                elif open_xid is None and lsn > end:
                    return self._end(total)
                else:
                    commits = mark == commit_mark and open_xid is not None and kinds.marked(data)
                if lsn == 0:
                    held.append((data, open_xid))
                    continue
                count += 1
                if progress is not None and count % 2000 == 0:
                    progress("read", min(max(lsn - start, 0), total), total)
                position: Lsn = _new_lsn(Lsn, lsn)
                if held:
                    self._page_rows += len(held)
                    yield from (raw_message(early, position, its) for early, its in held)
                    held.clear()
                self._page_rows += 1
                yield raw_message(data, position, open_xid)
                if commits:
                    open_xid = None
                    self._committed(position)

    def _cut(self, commit: int) -> None:
        """A transaction whose commit is at or past a cut LSN starts a page of notices."""
        while self.cuts and commit >= self.cuts[0]:
            self.cuts.pop(0)
        self._new_page()

    def _end(self, total: int) -> None:
        self._deliver()
        self._finish()
        self._deliver()
        self.notices.end_page(self.last_commit)
        if self.progress is not None:
            self.progress("read", total, total)

    def _committed(self, lsn: Lsn) -> None:
        """After a commit was consumed: a page that is full ends here."""
        self.last_commit = lsn
        self.consumed = int(lsn)
        if self._page_rows >= self.page_size:
            self._new_page()

    def _new_page(self) -> None:
        self.notices.end_page(self.last_commit)
        self.notices.start_page(self.last_commit)
        self._page_rows = 0

    def _reached(self, wal_end: int) -> bool:
        """Whether the walsender has read every record that starts before the end LSN (the
        end may be just past a page header that follows the last record)."""
        end = int(self.end)
        if wal_end >= end:
            return True
        return wal_end % self.block_size == 0 and end - wal_end <= _LONG_PAGE_HEADER

    def _batch(self) -> list[tuple[int, bytes | str | None]]:
        """The frames libpq holds now, waiting for some if it holds none: (dataStart, data) for
        XLogData (bytes for a binary plugin, else text), (walEnd, None) for a keepalive
        (answered at once when it asks for a reply). While the server is quiet, a status update
        asking for a reply now and then makes it say how far it has read.

        A batch ends at a notice: libpq reports it while taking the frame that follows it, and
        it is filed (:meth:`_deliver`) only once the frames before it were consumed, so it
        lands in the page it arrived in."""
        self._deliver()
        if self._failed is not None:
            raise self._failed
        get = self.conn.pgconn.get_copy_data
        frames: list[tuple[int, bytes | str | None]] = []
        if self._carry is not None:
            frames.append(self._carry)
            self._carry = None
        idle_since: float | None = None
        binary, unpack = self.binary, _U64.unpack_from
        while len(frames) < _BATCH:
            size, buffer = get(1)
            if self._noticed:
                if frames:
                    if size > 0:
                        self._carry = self._frame(buffer)
                    elif size < 0:
                        self._failed = self._error(self.conn.pgconn.get_result())
                    break
                self._deliver()
            if size > 0:
                if buffer[0] == _W:  # XLogData, as _frame reads it
                    payload = buffer[_DATA_AT:]
                    data = bytes(payload) if binary else str(payload, "utf-8")
                    frames.append((unpack(buffer, 1)[0], data))
                else:
                    frames.append(self._frame(buffer))
                continue
            if size < 0:
                error = self._error(self.conn.pgconn.get_result())
                if not frames:
                    raise error
                self._failed = error  # after what came before it
                break
            if frames:
                break
            idle_since = self._idle(idle_since)
        if frames:
            self.received = max(self.received, *(f[0] for f in frames))
        self._status()
        return frames

    def _idle(self, since: float | None) -> float:
        """Nothing to take: wait for the socket, asking for a reply after ``IDLE_PING`` of
        quiet since ``since``; when the quiet started (or the reply was asked)."""
        now = time.monotonic()
        if since is None:
            since = now
        elif now - since > IDLE_PING:
            self._status(force=True, reply=True)
            since = now
        self._wait()
        return since

    def _frame(self, buffer: memoryview) -> tuple[int, bytes | str | None]:
        if buffer[0] == _W:
            payload = buffer[_DATA_AT:]
            return (
                _U64.unpack_from(buffer, 1)[0],
                bytes(payload) if self.binary else str(payload, "utf-8"),
            )
        wal_end, _, reply = _KEEPALIVE.unpack_from(buffer, 1)  # 'k', the only other kind
        if reply:
            self._status(force=True)
        return wal_end, None

    def _on_notice(self, diag: Any) -> None:
        """Keep a notice until the frames before it were consumed (libpq's result behind
        ``diag`` is gone once this returns: copy what the log reads)."""
        self._notices.append(
            _Notice(diag.severity_nonlocalized, diag.severity, diag.message_primary)
        )
        self._noticed = True

    def _deliver(self) -> None:
        """File the notices kept so far in the current page."""
        if self._noticed:
            for notice in self._notices:
                self.notices.handler(notice)
            self._notices.clear()
            self._noticed = False

    def _wait(self) -> None:
        """Until the socket has data (or a while), then take it into libpq's buffer. No nap
        first to let messages gather: the socket holds few of the walsender's small messages,
        so it would stall the server (measured: 2 ms naps made a read three times slower)."""
        pgconn = self.conn.pgconn
        ready, _, _ = select.select([pgconn.socket], [], [], IDLE_PING)
        if ready:
            pgconn.consume_input()

    def _status(self, *, force: bool = False, reply: bool = False) -> None:
        """A standby status update (``r``): written, flushed, applied positions, now. None
        once the stream failed (its error is raised after the frames before it)."""
        if self._failed is not None:
            return
        now = time.monotonic()
        if not force and now - self._last_status < STATUS_INTERVAL:
            return
        self._last_status = now
        sent = int(time.time() * 1_000_000) - _PG_EPOCH_US
        message = b"r" + struct.pack(
            ">QQQqB", self.received, self.consumed, self.consumed, sent, 1 if reply else 0
        )
        pgconn = self.conn.pgconn
        try:
            sent = pgconn.put_copy_data(message) == 1 and pgconn.flush() == 0
        except psycopg.OperationalError:  # psycopg raises where libpq returns -1
            sent = False
        if not sent:
            raise self._send_failed()

    def _send_failed(self) -> psycopg.Error:
        """Why a status update could not be sent: the server's error if it sent one (a
        publication that does not exist ends the stream so), else the connection's."""
        pgconn = self.conn.pgconn
        deadline = time.monotonic() + SEND_FAILED_WAIT
        try:
            pgconn.consume_input()
            # The server's ErrorResponse may still be on its way: wait a little for it.
            while pgconn.is_busy() and time.monotonic() < deadline:
                select.select([pgconn.socket], [], [], 0.05)
                pgconn.consume_input()
        except (psycopg.Error, OSError):
            return self._error(None)
        if not pgconn.is_busy():
            while (result := pgconn.get_result()) is not None:
                if result.status == pq.ExecStatus.FATAL_ERROR:
                    return self._error(result)
        return self._error(None)

    def _finish(self) -> None:
        """CopyDone, then drain what the server still sends until its CopyDone and the
        command's end, so the walsender releases the copy."""
        pgconn = self.conn.pgconn
        self._status(force=True)
        pgconn.put_copy_end()
        pgconn.flush()
        while True:
            size, _ = pgconn.get_copy_data(0)
            if size < 0:
                break
        error = None
        while (result := pgconn.get_result()) is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                error = result
        if error is not None:
            raise self._error(error)
        self._finished = True

    def _error(self, result: pq.abc.PGresult | None) -> psycopg.Error:
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            return psycopg.errors.error_from_result(result, encoding="utf-8")
        message = self.conn.pgconn.get_error_message()
        return StreamEnded((message or "the replication stream ended before its end LSN").strip())

    def close(self) -> None:
        """Close the replication connection (the walsender then releases the copy)."""
        with contextlib.suppress(psycopg.Error, OSError):
            self.conn.close()
