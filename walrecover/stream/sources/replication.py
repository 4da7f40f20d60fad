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
import select
import struct
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import psycopg
from psycopg import pq

from ...db import Connection
from ..lsn import Lsn
from ..model import RawMessage
from ..notices import NoticeLog
from .base import ProgressCallback

#: Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
_PG_EPOCH_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
#: How often a status update is sent while reading (pg_recvlogical's default), seconds.
STATUS_INTERVAL = 10.0
#: Idle this long without a message, ask the server for a keepalive (its walEnd), seconds.
IDLE_PING = 0.5
_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QQB")
_U64 = struct.Struct(">Q")
_W, _K = ord("w"), ord("k")
_PGOUTPUT_BEGIN = struct.Struct(">QqI")
#: Longest WAL page header (a segment's first page): a record "starts" after it.
_LONG_PAGE_HEADER = 40
_TRUE = ("1", "true", "on", "yes", "t", "y")


def streamable(plugin: str, options: Sequence[tuple[str, str]]) -> bool:
    """Whether ``plugin`` with ``options`` can be streamed with the same result as pages: its
    Begin must say where the commit record starts, and the xid must be in the messages."""
    if plugin == "pgoutput":
        return True
    if plugin != "wal2json":
        return False
    given = dict(options)
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


def _begin_of(plugin: str, data: bytes) -> tuple[int, int] | None:
    """(commit record start, xid) if ``data`` is a transaction's Begin, else None."""
    if plugin == "pgoutput":
        if data[:1] != b"B":
            return None
        final_lsn, _, xid = _PGOUTPUT_BEGIN.unpack_from(data, 1)
        return final_lsn, xid
    if not data.startswith(b'{"action":"B"'):
        return None
    return int(_field(data, b'"lsn":"', b'"', hexlsn=True)), int(_field(data, b'"xid":', b","))


def _field(data: bytes, key: bytes, stop: bytes, *, hexlsn: bool = False) -> int:
    at = data.index(key) + len(key)
    end = data.find(stop, at)
    text = data[at : end if end >= 0 else len(data)].rstrip(b"}")
    return int(Lsn.parse(text.decode())) if hexlsn else int(text)


def _is_commit(plugin: str, data: bytes) -> bool:
    if plugin == "pgoutput":
        return data[:1] == b"C"
    return data.startswith(b'{"action":"C"')


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
        self._open_xid: int | None = None
        self._last_status = 0.0
        self._page_rows = 0
        conn.add_notice_handler(notices.handler)

    def messages(self) -> Iterator[RawMessage]:
        """The copy's messages up to the end LSN, whole transactions only."""
        pgconn = self.conn.pgconn
        pgconn.send_query(replication_command(self.copy, self.start, self.options).encode("utf-8"))
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise self._error(result)
        self.notices.start_page(self.start)
        total = max(int(self.end) - int(self.start), 0)
        count = 0
        end = int(self.end)
        # A message the walsender sends before the last of a callback's (pgoutput's Relation
        # and Type) has no LSN of its own; a page gives it the LSN of the message it precedes.
        held: list[tuple[bytes, int | None]] = []
        for kind, lsn, data in self._frames():
            if kind == "k":
                if self._open_xid is None and self._reached(lsn):
                    break
                continue
            begin = _begin_of(self.plugin, data)
            if begin is not None:
                if begin[0] >= end:
                    break
                self._open_xid = begin[1]
                if self.cuts and begin[0] >= self.cuts[0]:
                    while self.cuts and begin[0] >= self.cuts[0]:
                        self.cuts.pop(0)
                    self._new_page()
            elif self._open_xid is None and lsn > end:
                break
            if lsn == 0:
                held.append((data, self._open_xid))
                continue
            count += 1
            self._page_rows += 1 + len(held)
            if self.progress is not None and count % 2000 == 0:
                self.progress("read", min(max(lsn - int(self.start), 0), total), total)
            at = Lsn(lsn)
            for early, xid in held:
                yield RawMessage(early if self.binary else early.decode("utf-8"), at, xid)
            held.clear()
            message = RawMessage(data if self.binary else data.decode("utf-8"), at, self._open_xid)
            if self._open_xid is not None and _is_commit(self.plugin, data):
                self._open_xid = None
                yield message
                self._committed(at)
            else:
                yield message
        self._finish()
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

    def _frames(self) -> Iterator[tuple[str, int, bytes]]:
        """(``w``, dataStart, data) and (``k``, walEnd, b"") frames; answers keepalives, sends
        a status update now and then, and asks for a keepalive when the server goes quiet."""
        pgconn = self.conn.pgconn
        idle_since: float | None = None
        frames = 0
        while True:
            size, buffer = pgconn.get_copy_data(1)
            if size > 0:
                idle_since = None
                kind = buffer[0]
                if kind == _W:
                    start = _U64.unpack_from(buffer, 1)[0]
                    self.received = max(self.received, start)
                    yield "w", start, bytes(buffer[_XLOGDATA.size + 1 :])
                elif kind == _K:
                    wal_end, _, reply = _KEEPALIVE.unpack_from(buffer, 1)
                    if reply:
                        self._status(force=True)
                    yield "k", wal_end, b""
                frames += 1
                if frames & 0xFF == 0:
                    self._status()
                continue
            if size == 0:
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                elif now - idle_since > IDLE_PING:
                    self._status(force=True, reply=True)
                    idle_since = now
                self._wait(pgconn)
                continue
            raise self._error(pgconn.get_result())

    def _wait(self, pgconn: pq.abc.PGconn) -> None:
        ready, _, _ = select.select([pgconn.socket], [], [], IDLE_PING)
        if ready:
            pgconn.consume_input()

    def _status(self, *, force: bool = False, reply: bool = False) -> None:
        """A standby status update (``r``): written, flushed, applied positions, now."""
        now = time.monotonic()
        if not force and now - self._last_status < STATUS_INTERVAL:
            return
        self._last_status = now
        sent = int(time.time() * 1_000_000) - _PG_EPOCH_US
        message = b"r" + struct.pack(
            ">QQQqB", self.received, self.consumed, self.consumed, sent, 1 if reply else 0
        )
        pgconn = self.conn.pgconn
        if pgconn.put_copy_data(message) != 1 or pgconn.flush() != 0:
            raise self._error(None)

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
