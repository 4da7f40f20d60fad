"""pgoutput, PostgreSQL's built-in binary output plugin, protocol versions 1 to 4.

Written from the protocol documentation ("Logical Replication Message Formats" in PostgreSQL's
``protocol.sgml``). Each message comes as :func:`pg_logical_slot_get_binary_changes` returns it:
one ``bytea`` starting with the message type byte. The module has two layers:

- :func:`parse_message` turns the bytes of one message into a small frozen dataclass
  (:class:`BeginMessage`, :class:`InsertMessage`, ...), checking every length, count and string
  terminator, so a damaged stream raises :class:`~walrecover.errors.DecodeError` naming the LSN
  and the byte offset, never ``IndexError`` or ``struct.error``.
- :class:`PgoutputDecoder` keeps the state the protocol needs (relations by relation id, the open
  transaction, streamed and prepared transactions waiting for their outcome) and produces the
  canonical events in commit order.

What counts as committed:

- a plain transaction (Begin ... Commit) is passed through change by change;
- a streamed transaction (protocol 2: Stream Start/Stop blocks, then Stream Commit or Stream
  Abort) is buffered and emitted whole at its Stream Commit; a Stream Abort of a subtransaction
  drops only that subtransaction's changes, of the top-level xid the whole transaction;
- a prepared transaction (protocol 3: Begin Prepare ... Prepare, or Stream Prepare) is buffered
  and emitted whole at its Commit Prepared; Rollback Prepared discards it.

Buffered transactions keep at most ``spill_threshold`` changes in memory each; the rest is
pickled to an anonymous temporary file (unlinked at creation, so nothing is left behind even if
the process dies) and streamed back in order when the transaction commits.

Values are pgoutput's text mode (``binary`` off): the type's output function, exactly what COPY
and test_decoding print, so they are kept as sent. Binary mode is refused: it would need a
decoder per type.
"""

from __future__ import annotations

import pickle
import struct
import tempfile
import weakref
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from itertools import accumulate
from typing import IO, Final, overload

from ...errors import DecodeError, StreamCutShort
from ..lsn import Lsn
from ..model import Begin, Change, Column, Commit, Event, Op, RawMessage, Relation

__all__ = [
    "MAX_PROTO_VERSION",
    "UNCHANGED",
    "BeginMessage",
    "BeginPrepareMessage",
    "CommitMessage",
    "CommitPreparedMessage",
    "DeleteMessage",
    "InsertMessage",
    "LogicalMessage",
    "Message",
    "OriginMessage",
    "PgoutputDecoder",
    "PrepareMessage",
    "RelationColumn",
    "RelationMessage",
    "RollbackPreparedMessage",
    "StreamAbortMessage",
    "StreamCommitMessage",
    "StreamPrepareMessage",
    "StreamStartMessage",
    "StreamStopMessage",
    "TruncateFlags",
    "TruncateMessage",
    "TupleData",
    "TypeMessage",
    "Unchanged",
    "UpdateMessage",
    "format_type",
    "parse_message",
    "server_options",
]

#: The newest protocol version this module reads.
MAX_PROTO_VERSION: Final = 4

_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


# -- the message layer -----------------------------------------------------------------------


class Unchanged(Enum):
    """An unchanged TOASTed value (tuple data kind ``u``): the server did not send it."""

    TOAST = "u"


#: The marker :func:`parse_message` puts in a tuple for an unchanged TOASTed value.
UNCHANGED: Final = Unchanged.TOAST

#: One column of TupleData: text as sent, None for NULL (``n``), or :data:`UNCHANGED`.
Datum = str | Unchanged | None
TupleData = tuple[Datum, ...]


@dataclass(frozen=True, slots=True)
class BeginMessage:
    """``B``: a transaction starts; ``final_lsn`` is where its commit record starts."""

    final_lsn: Lsn
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class CommitMessage:
    """``C``: the transaction opened by the last Begin committed."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class OriginMessage:
    """``O``: the transaction came from another node (cascaded replication)."""

    commit_lsn: Lsn
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One published column of a Relation message."""

    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def is_key(self) -> bool:
        """Part of the replica identity (every column under REPLICA IDENTITY FULL)."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class RelationMessage:
    """``R``: the schema of a relation, sent before its first change and after invalidations."""

    xid: int | None
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeMessage:
    """``Y``: the name of a non-built-in type a Relation message refers to."""

    xid: int | None
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class InsertMessage:
    """``I``: a new row."""

    xid: int | None
    relation_id: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class UpdateMessage:
    """``U``: a row changed; ``key`` (``K``) or ``old`` (``O``, identity FULL) or neither."""

    xid: int | None
    relation_id: int
    key: TupleData | None
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    """``D``: a row was deleted; exactly one of ``key`` (``K``) and ``old`` (``O``) is set."""

    xid: int | None
    relation_id: int
    key: TupleData | None
    old: TupleData | None


@dataclass(frozen=True, slots=True)
class TruncateFlags:
    """The options of a TRUNCATE: ``CASCADE`` and ``RESTART IDENTITY``."""

    cascade: bool = False
    restart_identity: bool = False


@dataclass(frozen=True, slots=True)
class TruncateMessage:
    """``T``: one TRUNCATE statement over one or more relations."""

    xid: int | None
    options: int
    relation_ids: tuple[int, ...]

    @property
    def flags(self) -> TruncateFlags:
        return TruncateFlags(
            cascade=bool(self.options & 1), restart_identity=bool(self.options & 2)
        )


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """``M``: a ``pg_logical_emit_message`` message (ignored by recovery)."""

    xid: int | None
    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStartMessage:
    """``S``: the changes that follow, up to Stream Stop, belong to in-progress ``xid``."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStopMessage:
    """``E``: the current stream block ends."""


@dataclass(frozen=True, slots=True)
class StreamCommitMessage:
    """``c``: streamed transaction ``xid`` committed."""

    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class StreamAbortMessage:
    """``A``: streamed (sub)transaction ``subxid`` of ``xid`` aborted; the LSN and time since v4."""

    xid: int
    subxid: int
    abort_lsn: Lsn | None = None
    abort_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class BeginPrepareMessage:
    """``b``: a transaction that will be prepared starts (two-phase, v3)."""

    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class PrepareMessage:
    """``P``: the transaction opened by Begin Prepare was prepared (not yet committed)."""

    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPreparedMessage:
    """``K``: COMMIT PREPARED: the prepared transaction counts from here."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPreparedMessage:
    """``r``: ROLLBACK PREPARED: the prepared transaction never happened."""

    flags: int
    prepare_end_lsn: Lsn
    rollback_end_lsn: Lsn
    prepare_time: datetime
    rollback_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepareMessage:
    """``p``: streamed transaction ``xid`` was prepared."""

    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: datetime
    xid: int
    gid: str


Message = (
    BeginMessage
    | CommitMessage
    | OriginMessage
    | RelationMessage
    | TypeMessage
    | InsertMessage
    | UpdateMessage
    | DeleteMessage
    | TruncateMessage
    | LogicalMessage
    | StreamStartMessage
    | StreamStopMessage
    | StreamCommitMessage
    | StreamAbortMessage
    | BeginPrepareMessage
    | PrepareMessage
    | CommitPreparedMessage
    | RollbackPreparedMessage
    | StreamPrepareMessage
)


def _where(lsn: Lsn | None) -> str:
    return f" at LSN {lsn}" if lsn is not None else ""


class _Reader:
    """Reads the fields of one message, failing with :class:`DecodeError` on any shortfall."""

    __slots__ = ("data", "in_stream", "lsn", "pos", "version", "what")

    def __init__(
        self,
        data: bytes,
        *,
        what: str,
        lsn: Lsn | None,
        version: int,
        in_stream: bool,
        start: int = 0,
    ) -> None:
        self.data = data
        self.pos = start + 1  # after the type byte
        self.what = what
        self.lsn = lsn
        self.version = version
        self.in_stream = in_stream

    def fail(
        self, problem: str, why: str = "the stream is damaged or is not pgoutput output"
    ) -> DecodeError:
        return DecodeError(
            f"pgoutput {self.what}{_where(self.lsn)} {problem} (byte {self.pos} of "
            f"{len(self.data)}): {why}",
            lsn=self.lsn,
            offset=self.pos,
        )

    def _take(self, size: int) -> int:
        start = self.pos
        if start + size > len(self.data):
            error = self.fail(f"is truncated: {size} more bytes expected")
            error.overrun = True  # type: ignore[attr-defined]
            raise error
        self.pos = start + size
        return start

    def u8(self) -> int:
        return int(_U8.unpack_from(self.data, self._take(1))[0])

    def i16(self) -> int:
        return int(_I16.unpack_from(self.data, self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.data, self._take(4))[0])

    def i32(self) -> int:
        return int(_I32.unpack_from(self.data, self._take(4))[0])

    def lsn_field(self) -> Lsn:
        return Lsn(int(_U64.unpack_from(self.data, self._take(8))[0]))

    def time(self) -> datetime:
        start = self.pos
        micros = int(_I64.unpack_from(self.data, self._take(8))[0])
        try:
            return _PG_EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            self.pos = start
            raise self.fail(f"has a timestamp out of range ({micros} µs since 2000)") from None

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            self.pos -= 1
            raise self.fail(f"has {value} where a boolean (0 or 1) belongs")
        return value == 1

    def count(self, size: int, noun: str, per_item: int = 1) -> int:
        """A non-negative count or length (Int16 or Int32) whose items fit in the message."""
        start = self.pos
        value = self.i16() if size == 2 else self.i32()
        if value < 0 or value * per_item > self.remaining():
            self.pos = start
            error = self.fail(f"has an impossible {noun} {value}")
            # Past the end of the data: where a capture's end cut the message (or damage).
            error.overrun = value >= 0  # type: ignore[attr-defined]
            raise error
        return value

    def raw(self, size: int) -> bytes:
        start = self._take(size)
        return self.data[start : start + size]

    def text(self, size: int) -> str:
        start = self._take(size)
        try:
            return self.data[start : start + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            self.pos = start + exc.start
            raise self.fail(
                "has a value that is not UTF-8",
                "a SQL_ASCII database stores text in any encoding and pg_recvlogical writes its "
                "bytes as they are, but walrecover reads text as UTF-8 only, so it cannot be "
                "carried (or the stream is damaged)",
            ) from None

    def string(self) -> str:
        """A NUL-terminated UTF-8 string (PostgreSQL always writes the terminator)."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            error = self.fail("has a string without its NUL terminator")
            error.overrun = True  # type: ignore[attr-defined]
            raise error
        value = self.text(end - self.pos)
        self.pos += 1
        return value

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def xid_prefix(self) -> int | None:
        """The xid that messages inside a Stream Start/Stop block carry first (protocol 2+)."""
        return self.u32() if self.in_stream else None

    def tuple_data(self) -> TupleData:
        count = self.count(2, "column count")
        values: list[Datum] = []
        for _ in range(count):
            kind = self.u8()
            if kind == 0x74:  # 't'
                values.append(self.text(self.count(4, "value length")))
            elif kind == 0x6E:  # 'n'
                values.append(None)
            elif kind == 0x75:  # 'u'
                values.append(UNCHANGED)
            elif kind == 0x62:  # 'b'
                self.pos -= 1
                raise self.fail(
                    "carries a binary-format value: walrecover reads pgoutput's text mode, "
                    "read the slot with the option binary 'false'"
                )
            else:
                self.pos -= 1
                raise self.fail(f"has an unknown column kind {kind:#04x}")
        return tuple(values)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"has {len(self.data) - self.pos} unexpected trailing bytes")


def _parse_begin(r: _Reader) -> BeginMessage:
    return BeginMessage(final_lsn=r.lsn_field(), commit_time=r.time(), xid=r.u32())


def _parse_commit(r: _Reader) -> CommitMessage:
    return CommitMessage(
        flags=r.u8(), commit_lsn=r.lsn_field(), end_lsn=r.lsn_field(), commit_time=r.time()
    )


def _parse_origin(r: _Reader) -> OriginMessage:
    return OriginMessage(commit_lsn=r.lsn_field(), name=r.string())


def _parse_relation(r: _Reader) -> RelationMessage:
    xid, relation_id, namespace, name = r.xid_prefix(), r.u32(), r.string(), r.string()
    identity = chr(r.u8())
    if identity not in "dnfi":
        r.pos -= 1
        raise r.fail(f"has an unknown replica identity {identity!r}")
    # A column takes at least 10 bytes: flags, the name's NUL, type oid, typmod.
    columns = tuple(_parse_column(r) for _ in range(r.count(2, "column count", per_item=10)))
    return RelationMessage(xid, relation_id, namespace, name, identity, columns)


def _parse_column(r: _Reader) -> RelationColumn:
    return RelationColumn(flags=r.u8(), name=r.string(), type_oid=r.u32(), typmod=r.i32())


def _parse_type(r: _Reader) -> TypeMessage:
    return TypeMessage(xid=r.xid_prefix(), type_oid=r.u32(), namespace=r.string(), name=r.string())


def _expect_part(r: _Reader, allowed: bytes) -> int:
    """The submessage byte that introduces a tuple (``N``, ``K`` or ``O``)."""
    part = r.u8()
    if part not in allowed:
        r.pos -= 1
        wanted = " or ".join(repr(chr(b)) for b in allowed)
        raise r.fail(f"has {part:#04x} where {wanted} belongs")
    return part


def _parse_insert(r: _Reader) -> InsertMessage:
    xid, relation_id = r.xid_prefix(), r.u32()
    _expect_part(r, b"N")
    return InsertMessage(xid, relation_id, r.tuple_data())


def _parse_update(r: _Reader) -> UpdateMessage:
    xid, relation_id = r.xid_prefix(), r.u32()
    key = old = None
    part = _expect_part(r, b"KON")
    if part != ord("N"):
        if part == ord("K"):
            key = r.tuple_data()
        else:
            old = r.tuple_data()
        _expect_part(r, b"N")
    return UpdateMessage(xid, relation_id, key, old, r.tuple_data())


def _parse_delete(r: _Reader) -> DeleteMessage:
    xid, relation_id = r.xid_prefix(), r.u32()
    if _expect_part(r, b"KO") == ord("K"):
        return DeleteMessage(xid, relation_id, key=r.tuple_data(), old=None)
    return DeleteMessage(xid, relation_id, key=None, old=r.tuple_data())


def _parse_truncate(r: _Reader) -> TruncateMessage:
    xid = r.xid_prefix()
    count = r.count(4, "relation count", per_item=4)
    options = r.u8()
    return TruncateMessage(xid, options, tuple(r.u32() for _ in range(count)))


def _parse_message(r: _Reader) -> LogicalMessage:
    xid, transactional, lsn, prefix = r.xid_prefix(), r.flag(), r.lsn_field(), r.string()
    return LogicalMessage(xid, transactional, lsn, prefix, r.raw(r.count(4, "content length")))


def _parse_stream_start(r: _Reader) -> StreamStartMessage:
    return StreamStartMessage(xid=r.u32(), first_segment=r.flag())


def _parse_stream_stop(r: _Reader) -> StreamStopMessage:
    return StreamStopMessage()


def _parse_stream_commit(r: _Reader) -> StreamCommitMessage:
    return StreamCommitMessage(
        xid=r.u32(),
        flags=r.u8(),
        commit_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        commit_time=r.time(),
    )


def _parse_stream_abort(r: _Reader) -> StreamAbortMessage:
    xid, subxid = r.u32(), r.u32()
    # Version 4 adds the abort LSN and time, but only when streaming is 'parallel': the
    # message's length tells which form this is.
    if r.version >= 4 and r.remaining() == 16:
        return StreamAbortMessage(xid, subxid, abort_lsn=r.lsn_field(), abort_time=r.time())
    return StreamAbortMessage(xid, subxid)


def _parse_begin_prepare(r: _Reader) -> BeginPrepareMessage:
    return BeginPrepareMessage(
        prepare_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_prepare(r: _Reader) -> PrepareMessage:
    return PrepareMessage(
        flags=r.u8(),
        prepare_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_commit_prepared(r: _Reader) -> CommitPreparedMessage:
    return CommitPreparedMessage(
        flags=r.u8(),
        commit_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        commit_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_rollback_prepared(r: _Reader) -> RollbackPreparedMessage:
    return RollbackPreparedMessage(
        flags=r.u8(),
        prepare_end_lsn=r.lsn_field(),
        rollback_end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        rollback_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_stream_prepare(r: _Reader) -> StreamPrepareMessage:
    return StreamPrepareMessage(
        flags=r.u8(),
        prepare_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


#: Type byte -> (message name, first protocol version that has it, parser).
_PARSERS: Final[dict[int, tuple[str, int, Callable[[_Reader], Message]]]] = {
    ord("B"): ("Begin", 1, _parse_begin),
    ord("C"): ("Commit", 1, _parse_commit),
    ord("O"): ("Origin", 1, _parse_origin),
    ord("R"): ("Relation", 1, _parse_relation),
    ord("Y"): ("Type", 1, _parse_type),
    ord("I"): ("Insert", 1, _parse_insert),
    ord("U"): ("Update", 1, _parse_update),
    ord("D"): ("Delete", 1, _parse_delete),
    ord("T"): ("Truncate", 1, _parse_truncate),
    ord("M"): ("Message", 1, _parse_message),
    ord("S"): ("Stream Start", 2, _parse_stream_start),
    ord("E"): ("Stream Stop", 2, _parse_stream_stop),
    ord("c"): ("Stream Commit", 2, _parse_stream_commit),
    ord("A"): ("Stream Abort", 2, _parse_stream_abort),
    ord("b"): ("Begin Prepare", 3, _parse_begin_prepare),
    ord("P"): ("Prepare", 3, _parse_prepare),
    ord("K"): ("Commit Prepared", 3, _parse_commit_prepared),
    ord("r"): ("Rollback Prepared", 3, _parse_rollback_prepared),
    ord("p"): ("Stream Prepare", 3, _parse_stream_prepare),
}


def parse_message(
    data: bytes, proto_version: int = 1, in_stream: bool = False, lsn: Lsn | None = None
) -> Message:
    """Parse one pgoutput message (type byte first) into its dataclass.

    ``in_stream`` says the message sits inside a Stream Start/Stop block, where Relation, Type,
    Insert, Update, Delete, Truncate and Message carry the (sub)transaction's xid first.
    ``lsn`` only serves the error message. Raises :class:`DecodeError` for anything malformed:
    unknown type byte, a message newer than ``proto_version``, a short or overlong message, a
    bad count, a missing NUL terminator, non-UTF-8 text, or a binary-format value.
    """
    if not data:
        raise DecodeError(f"pgoutput message{_where(lsn)} is empty: the stream is damaged", lsn=lsn)
    entry = _PARSERS.get(data[0])
    if entry is None:
        raise DecodeError(
            f"pgoutput message{_where(lsn)} has an unknown type byte {data[0]:#04x} "
            f"({chr(data[0])!r}): the stream is damaged or is not pgoutput output",
            lsn=lsn,
            offset=0,
        )
    name, since, parse = entry
    if proto_version < since:
        raise DecodeError(
            f"pgoutput {name} message{_where(lsn)} needs protocol version {since} but the "
            f"stream is decoded as proto_version {proto_version}: give the proto_version the "
            "slot was read with",
            lsn=lsn,
            offset=0,
        )
    reader = _Reader(
        data, what=f"{name} message", lsn=lsn, version=proto_version, in_stream=in_stream
    )
    message = parse(reader)
    reader.end()
    return message


class CaptureEndsMidMessage(DecodeError):
    """The capture's last message runs past the end of the file, or lacks its newline:
    pg_recvlogical was stopped while writing it. ``offset`` is where that message starts."""


def split_capture(data: bytes, proto_version: int = 1) -> Iterator[bytes]:
    """Cut a ``pg_recvlogical -f`` capture of pgoutput into its messages.

    pg_recvlogical writes each message followed by a newline and no length, and a message can
    itself contain newline bytes, so each message is measured by parsing its structure.
    ``data`` may be an ``mmap`` of the file, so a large capture is not read into memory.
    A last message that the file's end cuts raises :class:`CaptureEndsMidMessage` after every
    whole message was yielded; one cut by anything else is damage (:class:`DecodeError`).
    """
    pos, size, in_stream = 0, len(data), False
    while pos < size:
        kind = data[pos]
        entry = _PARSERS.get(kind)
        where = f"at byte {pos} of the capture"
        if entry is None:
            raise DecodeError(
                f"pgoutput capture has an unknown message type byte {kind:#04x} {where}: the "
                "file is damaged, or was not written by pg_recvlogical with pgoutput",
                offset=pos,
            )
        name, since, parse = entry
        if proto_version < since:
            raise DecodeError(
                f"pgoutput {name} message {where} needs protocol version {since}: give the "
                "proto_version the capture was made with (-o proto_version=N)",
                offset=pos,
            )
        reader = _Reader(
            data,
            what=f"{name} message {where}",
            lsn=None,
            version=proto_version,
            in_stream=in_stream,
            start=pos,
        )
        if kind == 0x41 and proto_version >= 4:  # Stream Abort: 9 or 25 bytes, by its layout
            end = pos + 25 if pos + 25 < size and data[pos + 25] == 0x0A else pos + 9
        else:
            try:
                parse(reader)
            except DecodeError as exc:
                if not getattr(exc, "overrun", False):
                    raise
                end = size
            else:
                end = reader.pos
        if end >= size:
            raise CaptureEndsMidMessage(
                f"the capture ends inside the {name} message {where} ({size - pos} bytes, "
                "without its newline): pg_recvlogical was stopped while writing it",
                offset=pos,
            )
        if data[end] != 0x0A:
            raise DecodeError(
                f"pgoutput capture is truncated or damaged after the {name} message {where}: "
                "pg_recvlogical ends every message with a newline",
                offset=end,
            )
        if kind == 0x53:  # Stream Start
            in_stream = True
        elif kind == 0x45:  # Stream Stop
            in_stream = False
        yield bytes(data[pos:end])
        pos = end + 1


# -- type names ------------------------------------------------------------------------------

#: Built-in scalar types: oid -> (internal name, what ``format_type`` prints without a typmod).
_SCALARS: Final[dict[int, tuple[str, str]]] = {
    16: ("bool", "boolean"),
    17: ("bytea", "bytea"),
    18: ("char", '"char"'),
    19: ("name", "name"),
    20: ("int8", "bigint"),
    21: ("int2", "smallint"),
    23: ("int4", "integer"),
    24: ("regproc", "regproc"),
    25: ("text", "text"),
    26: ("oid", "oid"),
    27: ("tid", "tid"),
    28: ("xid", "xid"),
    29: ("cid", "cid"),
    114: ("json", "json"),
    142: ("xml", "xml"),
    600: ("point", "point"),
    601: ("lseg", "lseg"),
    602: ("path", "path"),
    603: ("box", "box"),
    604: ("polygon", "polygon"),
    628: ("line", "line"),
    650: ("cidr", "cidr"),
    700: ("float4", "real"),
    701: ("float8", "double precision"),
    718: ("circle", "circle"),
    774: ("macaddr8", "macaddr8"),
    790: ("money", "money"),
    829: ("macaddr", "macaddr"),
    869: ("inet", "inet"),
    1042: ("bpchar", "bpchar"),
    1043: ("varchar", "character varying"),
    1082: ("date", "date"),
    1083: ("time", "time without time zone"),
    1114: ("timestamp", "timestamp without time zone"),
    1184: ("timestamptz", "timestamp with time zone"),
    1186: ("interval", "interval"),
    1266: ("timetz", "time with time zone"),
    1560: ("bit", '"bit"'),
    1562: ("varbit", "bit varying"),
    1700: ("numeric", "numeric"),
    2205: ("regclass", "regclass"),
    2206: ("regtype", "regtype"),
    2950: ("uuid", "uuid"),
    3220: ("pg_lsn", "pg_lsn"),
    3614: ("tsvector", "tsvector"),
    3615: ("tsquery", "tsquery"),
    3802: ("jsonb", "jsonb"),
    3904: ("int4range", "int4range"),
    3906: ("numrange", "numrange"),
    3908: ("tsrange", "tsrange"),
    3910: ("tstzrange", "tstzrange"),
    3912: ("daterange", "daterange"),
    3926: ("int8range", "int8range"),
    4072: ("jsonpath", "jsonpath"),
    5069: ("xid8", "xid8"),
}

#: Built-in array types: array oid -> element oid (``format_type`` prints the element + ``[]``).
_ARRAYS: Final[dict[int, int]] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1008: 24, 1009: 25,
    1028: 26, 1010: 27, 1011: 28, 1012: 29, 199: 114, 143: 142, 1017: 600, 1018: 601, 1019: 602,
    1020: 603, 1027: 604, 629: 628, 651: 650, 1021: 700, 1022: 701, 719: 718, 775: 774,
    791: 790, 1040: 829, 1041: 869, 1014: 1042, 1015: 1043, 1182: 1082, 1183: 1083, 1115: 1114,
    1185: 1184, 1187: 1186, 1270: 1266, 1561: 1560, 1563: 1562, 1231: 1700, 2210: 2205,
    2211: 2206, 2951: 2950, 3221: 3220, 3643: 3614, 3645: 3615, 3807: 3802, 3905: 3904,
    3907: 3906, 3909: 3908, 3911: 3910, 3913: 3912, 3927: 3926, 4073: 4072, 271: 5069,
}  # fmt: skip

_BUILTIN_BY_NAME: Final[dict[str, int]] = {
    **{internal: oid for oid, (internal, _) in _SCALARS.items()},
    **{"_" + _SCALARS[element][0]: oid for oid, element in _ARRAYS.items()},
}

# Interval typmod: range bits (PostgreSQL's INTERVAL_MASK) -> the fields format_type prints.
_MONTH, _YEAR, _DAY, _HOUR, _MINUTE, _SECOND = (1 << 1, 1 << 2, 1 << 3, 1 << 10, 1 << 11, 1 << 12)
_INTERVAL_FIELDS: Final[dict[int, str]] = {
    _YEAR: " year",
    _MONTH: " month",
    _DAY: " day",
    _HOUR: " hour",
    _MINUTE: " minute",
    _SECOND: " second",
    _YEAR | _MONTH: " year to month",
    _DAY | _HOUR: " day to hour",
    _DAY | _HOUR | _MINUTE: " day to minute",
    _DAY | _HOUR | _MINUTE | _SECOND: " day to second",
    _HOUR | _MINUTE: " hour to minute",
    _HOUR | _MINUTE | _SECOND: " hour to second",
    _MINUTE | _SECOND: " minute to second",
    0x7FFF: "",
}


def _numeric(typmod: int) -> str:
    # PostgreSQL 15+ packs a signed 11-bit scale; earlier versions never set its high bits.
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024
    return f"numeric({precision},{scale})"


def _interval(typmod: int) -> str:
    fields = _INTERVAL_FIELDS.get((typmod >> 16) & 0x7FFF, "")
    precision = typmod & 0xFFFF
    return f"interval{fields}" + (f"({precision})" if precision != 0xFFFF else "")


#: Types whose typmod ``format_type`` prints: oid -> formatter for a typmod >= 0.
_MODIFIERS: Final[dict[int, Callable[[int], str]]] = {
    1042: lambda t: f"character({t - 4})",
    1043: lambda t: f"character varying({t - 4})",
    1700: _numeric,
    1083: lambda t: f"time({t}) without time zone",
    1266: lambda t: f"time({t}) with time zone",
    1114: lambda t: f"timestamp({t}) without time zone",
    1184: lambda t: f"timestamp({t}) with time zone",
    1186: _interval,
    1560: lambda t: f"bit({t})",
    1562: lambda t: f"bit varying({t})",
}


def format_type(type_oid: int, typmod: int = -1) -> str:
    """The type name PostgreSQL's ``format_type(oid, typmod)`` prints, for built-in types.

    ``numeric(12,2)``, ``character varying(20)``, ``timestamp(3) with time zone``,
    ``integer[]``; ``""`` for a type this table does not know (a custom type: see
    :class:`PgoutputDecoder`'s ``type_name`` hook and Type messages).
    """
    element = _ARRAYS.get(type_oid)
    if element is not None:
        name = _format_scalar(element, typmod)
        return name + "[]" if name else ""
    return _format_scalar(type_oid, typmod)


def _format_scalar(type_oid: int, typmod: int) -> str:
    known = _SCALARS.get(type_oid)
    if known is None:
        return ""
    modifier = _MODIFIERS.get(type_oid)
    return modifier(typmod) if modifier is not None and typmod >= 0 else known[1]


def _quote_ident(name: str) -> str:
    """An identifier as ``format_type`` would print it (quoted unless plain lower case)."""
    plain = (
        name
        and (name[0].islower() or name[0] == "_")
        and all(ch.islower() or ch.isdigit() or ch == "_" for ch in name)
        and name.isascii()
    )
    return name if plain else '"' + name.replace('"', '""') + '"'


def _custom_type_name(namespace: str, name: str, typmod: int) -> str:
    """A type named by a Type message (the base type's name, for a domain)."""
    if not namespace:  # pg_catalog: a domain over a built-in type
        builtin = _BUILTIN_BY_NAME.get(name)
        return format_type(builtin, typmod) if builtin is not None else _quote_ident(name)
    if namespace == "public":
        return _quote_ident(name)
    return f"{_quote_ident(namespace)}.{_quote_ident(name)}"


def server_options(
    publications: Iterable[str],
    proto_version: int = 1,
    *,
    streaming: bool = False,
    two_phase: bool = False,
) -> list[tuple[str, str]]:
    """Options for ``pg_logical_slot_peek_binary_changes`` on a pgoutput slot.

    Text mode (``binary`` is never turned on); ``streaming`` needs protocol 2, ``two_phase``
    protocol 3 and a slot created with two-phase decoding.
    """
    names = ",".join(_quote_ident(name) for name in publications)
    if not names:
        raise DecodeError("pgoutput needs at least one publication name (publication_names)")
    options = [("proto_version", str(proto_version)), ("publication_names", names)]
    if streaming:
        options.append(("streaming", "on"))
    if two_phase:
        options.append(("two_phase", "on"))
    return options


# -- the decoder -----------------------------------------------------------------------------

#: A buffered change and the (sub)transaction that made it.
_Entry = tuple[int, Change]


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One pickled batch of entries in a spill file: where it starts, how many per subxid."""

    offset: int
    counts: Counter[int]


@dataclass(slots=True)
class _Pending:
    """A streamed or prepared transaction waiting for its outcome, with bounded memory.

    At most ``threshold`` entries stay in ``memory``; each full batch is pickled to an anonymous
    temporary file. Aborted subtransactions are dropped from memory at once and filtered out of
    the spilled batches when they are read back.
    """

    xid: int
    #: The LSN of the message that opened it (Stream Start or Begin Prepare): its Begin's ``lsn``.
    lsn: Lsn | None
    #: False when the stream began after the transaction's first stream segment.
    complete: bool
    threshold: int
    spill_dir: str | None
    gid: str | None = None
    #: Relation messages sent inside its stream blocks (they only count if it commits).
    relations: dict[int, Relation] = field(default_factory=dict)
    memory: list[_Entry] = field(default_factory=list)
    chunks: list[_Chunk] = field(default_factory=list)
    file: IO[bytes] | None = None
    aborted: set[int] = field(default_factory=set)
    spilled: int = 0

    def add(self, subxid: int, change: Change) -> None:
        if subxid in self.aborted:
            return
        self.memory.append((subxid, change))
        if len(self.memory) >= self.threshold:
            self._spill()

    def _spill(self) -> None:
        if self.file is None:
            # Lives as long as the transaction (or its lazy events): closed by discard() or
            # by _SpilledTransaction; anonymous, so the OS reclaims it even after a crash.
            self.file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="walrecover-pgoutput-", dir=self.spill_dir
            )
        offset = self.file.seek(0, 2)
        pickle.dump(self.memory, self.file, protocol=pickle.HIGHEST_PROTOCOL)
        self.chunks.append(_Chunk(offset, Counter(subxid for subxid, _ in self.memory)))
        self.spilled += len(self.memory)
        self.memory = []

    def abort_subtransaction(self, subxid: int) -> None:
        self.aborted.add(subxid)
        self.memory = [entry for entry in self.memory if entry[0] != subxid]

    def events(self, begin: Begin, commit: Commit) -> Sequence[Event]:
        """Begin, the surviving changes in order, Commit; lazy when part of it is on disk."""
        if self.file is None:
            return [begin, *(change for _, change in self.memory), commit]
        tail = [change for _, change in self.memory]
        return _SpilledTransaction(begin, commit, self.file, self.chunks, tail, self.aborted)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()


class _SpilledTransaction(Sequence[Event]):
    """A committed transaction whose changes partly live in a spill file, read back lazily.

    Iterating reads one batch at a time, so memory stays bounded however big the transaction;
    indexing loads the one batch that holds the item. The file is closed (and, being anonymous,
    gone) when this object is garbage-collected or :meth:`close` is called.
    """

    def __init__(
        self,
        begin: Begin,
        commit: Commit,
        file: IO[bytes],
        chunks: list[_Chunk],
        tail: list[Change],
        aborted: set[int],
    ) -> None:
        self._begin, self._commit, self._file, self._chunks = begin, commit, file, chunks
        self._tail = tail
        self._aborted = frozenset(aborted)
        kept = (sum(n for sub, n in c.counts.items() if sub not in self._aborted) for c in chunks)
        #: Index (among the changes) of each batch's first change; the last is the spilled total.
        self._starts = [0, *accumulate(kept)]
        self._length = 2 + self._starts[-1] + len(tail)
        self._finalizer = weakref.finalize(self, file.close)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Event]:
        yield self._begin
        for index in range(len(self._chunks)):
            yield from self._load(index)
        yield from self._tail
        yield self._commit

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | Sequence[Event]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        position = index + self._length if index < 0 else index
        if not 0 <= position < self._length:
            raise IndexError("transaction event index out of range")
        if position == 0:
            return self._begin
        if position == self._length - 1:
            return self._commit
        position -= 1
        if position >= self._starts[-1]:
            return self._tail[position - self._starts[-1]]
        chunk = bisect_right(self._starts, position) - 1
        return self._load(chunk)[position - self._starts[chunk]]

    def _load(self, index: int) -> list[Change]:
        self._file.seek(self._chunks[index].offset)
        entries: list[_Entry] = pickle.load(self._file)
        return [change for subxid, change in entries if subxid not in self._aborted]

    def close(self) -> None:
        """Close the spill file now instead of at garbage collection."""
        self._finalizer()


Row = dict[str, str | None]


def _image(
    relation: Relation, values: TupleData, *, key_only: bool, what: str, lsn: Lsn | None
) -> tuple[Row, frozenset[str]]:
    """A tuple as column name -> text, plus the columns sent as unchanged TOAST.

    In a key tuple (``K``) ``n`` marks a column outside the replica identity, not a NULL, so it
    is left out (key columns are never NULL).
    """
    columns = relation.columns
    if len(values) != len(columns):
        raise DecodeError(
            f"pgoutput {what}{_where(lsn)} has {len(values)} columns but relation "
            f"{relation.qualified_name} (id {relation.relation_id}) has {len(columns)}: the "
            "stream is damaged or a Relation message is missing",
            lsn=lsn,
            relation_id=relation.relation_id,
        )
    image: Row = {}
    unchanged: list[str] = []
    for column, value in zip(columns, values, strict=True):
        if isinstance(value, Unchanged):
            unchanged.append(column.name)
        elif value is not None or not key_only:
            image[column.name] = value
    return image, frozenset(unchanged)


ChangeMessage = InsertMessage | UpdateMessage | DeleteMessage | TruncateMessage


class PgoutputDecoder:
    """Decoder for pgoutput (text mode), protocol versions 1 to 4.

    ``proto_version`` must be the one the slot was read with: it decides which messages may
    appear and how Stream Abort is laid out. ``type_name(oid, typmod)`` names column types
    (e.g. from the source's ``format_type``); without it, built-in types are named by
    :func:`format_type` and custom types from the stream's Type messages (``public`` types
    unqualified; a domain appears as its base type, as pgoutput sends it), else ``""``.

    Streamed and prepared transactions are buffered until their outcome, ``spill_threshold``
    changes per transaction in memory, the rest in anonymous temporary files in ``spill_dir``.

    TRUNCATE options are not in the model yet: the decoder records them per truncated relation
    (:meth:`truncate_flags`) and the last Truncate message's in :attr:`last_truncate_flags`.
    """

    plugin = "pgoutput"

    def __init__(
        self,
        proto_version: int = 1,
        *,
        type_name: Callable[[int, int], str] | None = None,
        spill_dir: str | None = None,
        spill_threshold: int = 10_000,
    ) -> None:
        if not 1 <= proto_version <= MAX_PROTO_VERSION:
            raise DecodeError(
                f"pgoutput proto_version {proto_version} is not supported: use 1 to "
                f"{MAX_PROTO_VERSION}",
                plugin="pgoutput",
            )
        if spill_threshold < 1:
            raise ValueError("spill_threshold must be at least 1")
        self.proto_version = proto_version
        self._type_name_hook = type_name
        self._spill_dir = spill_dir
        self._spill_threshold = spill_threshold
        self._relations: dict[int, Relation] = {}
        self._types: dict[int, tuple[str, str]] = {}
        #: The Begin of the plain transaction being passed through.
        self._open: Begin | None = None
        #: The transaction between Begin Prepare and Prepare.
        self._preparing: _Pending | None = None
        #: The transaction of the current Stream Start/Stop block.
        self._stream: _Pending | None = None
        self._streamed: dict[int, _Pending] = {}
        self._prepared: dict[int, _Pending] = {}
        self._truncations: dict[tuple[Lsn | None, int | None], TruncateFlags] = {}
        #: The options of the last Truncate message decoded (see :meth:`truncate_flags`).
        self.last_truncate_flags: TruncateFlags | None = None
        #: Changes that went through a spill file, counted when their transaction ended.
        self.spilled_changes = 0
        #: Streamed or prepared transactions still undecided when :meth:`finish` ran.
        self.unfinished_xids: tuple[int, ...] = ()
        #: What a reader should know once the stream was read (prepared transactions left out).
        self.notes: list[str] = []

    # -- public API ----------------------------------------------------------------------------

    def decode(self, message: RawMessage) -> Sequence[Event]:
        """Decode one message (bytes, type byte first); return the events it completes."""
        data = message.data
        if not isinstance(data, bytes):
            raise DecodeError(
                f"pgoutput message{_where(message.lsn)} is text, not bytes: read the slot with "
                "pg_logical_slot_peek_binary_changes",
                lsn=message.lsn,
            )
        parsed = parse_message(
            data, self.proto_version, in_stream=self._stream is not None, lsn=message.lsn
        )
        return self._dispatch(parsed, message.lsn)

    def finish(self) -> Sequence[Event]:
        """End of stream: raise if it stops inside a transaction or a stream block.

        Streamed or prepared transactions whose outcome never came were not committed within
        the stream: they are dropped (their xids are kept in :attr:`unfinished_xids`).
        """
        inside = self._inside()
        if inside is not None:
            xid = self._current_xid()
            raise StreamCutShort(
                f"the pgoutput stream ends inside {inside}: the capture is truncated",
                xid=xid,
                what=inside.split(" (")[0],
                begun="",
            )
        pending = [*self._streamed.values(), *self._prepared.values()]
        self.unfinished_xids = tuple(p.xid for p in pending)
        for prepared in self._prepared.values():
            self.notes.append(
                f"prepared transaction '{prepared.gid}' (xid {prepared.xid}) is neither "
                "committed nor rolled back in the stream, so its changes were left out: if it "
                "was committed later (COMMIT PREPARED), they are missing"
            )
        for transaction in pending:
            self._drop(transaction)
        self._streamed.clear()
        self._prepared.clear()
        return ()

    def truncate_flags(self, change: Change) -> TruncateFlags | None:
        """The CASCADE / RESTART IDENTITY options of a TRUNCATE change this decoder produced."""
        return self._truncations.get((change.lsn, change.relation.relation_id))

    @property
    def relations(self) -> dict[int, Relation]:
        """The relations known so far, by relation id (a copy)."""
        return dict(self._relations)

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, message: Message, lsn: Lsn | None) -> Sequence[Event]:
        match message:
            case InsertMessage() | UpdateMessage() | DeleteMessage() | TruncateMessage():
                return self._on_change(message, lsn)
            case BeginMessage():
                return self._on_begin(message, lsn)
            case CommitMessage():
                return self._on_commit(message, lsn)
            case RelationMessage():
                self._on_relation(message)
            case TypeMessage():
                self._types[message.type_oid] = (message.namespace, message.name)
            case StreamStartMessage():
                self._on_stream_start(message, lsn)
            case StreamStopMessage():
                self._on_stream_stop(lsn)
            case StreamCommitMessage():
                return self._on_stream_commit(message, lsn)
            case StreamAbortMessage():
                self._on_stream_abort(message, lsn)
            case BeginPrepareMessage():
                self._on_begin_prepare(message, lsn)
            case PrepareMessage():
                self._on_prepare(message, lsn)
            case StreamPrepareMessage():
                self._on_stream_prepare(message, lsn)
            case CommitPreparedMessage():
                return self._on_commit_prepared(message, lsn)
            case RollbackPreparedMessage():
                self._on_rollback_prepared(message, lsn)
            case OriginMessage() | LogicalMessage():
                pass  # no row data: nothing to recover
        return ()

    # -- plain transactions --------------------------------------------------------------------

    def _on_begin(self, message: BeginMessage, lsn: Lsn | None) -> Sequence[Event]:
        self._expect_between_transactions("Begin", lsn)
        self._open = Begin(
            xid=message.xid,
            commit_lsn=message.final_lsn,
            commit_time=message.commit_time,
            lsn=lsn,
        )
        return (self._open,)

    def _on_commit(self, message: CommitMessage, lsn: Lsn | None) -> Sequence[Event]:
        begin = self._open
        if begin is None:
            raise DecodeError(
                f"pgoutput Commit{_where(lsn)} without its Begin: the stream is damaged or "
                "starts mid-transaction",
                lsn=lsn,
            )
        self._open = None
        return (Commit(begin.xid, message.commit_lsn, message.end_lsn, message.commit_time),)

    # -- changes -------------------------------------------------------------------------------

    def _on_change(self, message: ChangeMessage, lsn: Lsn | None) -> Sequence[Event]:
        if self._stream is not None:
            pending = self._stream
            if not pending.complete:
                # Its start is missing (and maybe its Relation messages): if it commits, that is
                # an error at its Stream Commit; if it aborts, nothing was lost.
                return ()
            subxid = message.xid if message.xid is not None else pending.xid
            for change in self._changes(message, lsn, pending.xid, pending.relations):
                pending.add(subxid, change)
            return ()
        if self._preparing is not None:
            pending = self._preparing
            for change in self._changes(message, lsn, pending.xid, None):
                pending.add(pending.xid, change)
            return ()
        if self._open is not None:
            return self._changes(message, lsn, self._open.xid, None)
        raise DecodeError(
            f"pgoutput {_kind(message)}{_where(lsn)} outside a transaction: the stream is "
            "damaged or starts mid-transaction",
            lsn=lsn,
        )

    def _changes(
        self,
        message: ChangeMessage,
        lsn: Lsn | None,
        xid: int | None,
        overlay: dict[int, Relation] | None,
    ) -> list[Change]:
        what = _kind(message)
        if isinstance(message, TruncateMessage):
            return self._truncates(message, lsn, xid, overlay)
        relation = self._relation(message.relation_id, what, lsn, overlay)
        if isinstance(message, InsertMessage):
            new, unchanged = _image(relation, message.new, key_only=False, what=what, lsn=lsn)
            return [Change(Op.INSERT, relation, new, None, unchanged, lsn, xid)]
        old = self._old_image(relation, message.key, message.old, what, lsn)
        if isinstance(message, DeleteMessage):
            return [Change(Op.DELETE, relation, None, old, frozenset(), lsn, xid)]
        new, unchanged = _image(relation, message.new, key_only=False, what=what, lsn=lsn)
        return [Change(Op.UPDATE, relation, new, old, unchanged, lsn, xid)]

    @staticmethod
    def _old_image(
        relation: Relation,
        key: TupleData | None,
        old: TupleData | None,
        what: str,
        lsn: Lsn | None,
    ) -> Row | None:
        if key is not None:
            return _image(relation, key, key_only=True, what=what, lsn=lsn)[0]
        if old is not None:
            return _image(relation, old, key_only=False, what=what, lsn=lsn)[0]
        return None

    def _truncates(
        self,
        message: TruncateMessage,
        lsn: Lsn | None,
        xid: int | None,
        overlay: dict[int, Relation] | None,
    ) -> list[Change]:
        flags = message.flags
        self.last_truncate_flags = flags
        changes = []
        for relation_id in message.relation_ids:
            relation = self._relation(relation_id, "Truncate", lsn, overlay)
            self._truncations[(lsn, relation_id)] = flags
            changes.append(Change(Op.TRUNCATE, relation, None, None, frozenset(), lsn, xid))
        return changes

    # -- relations and types -------------------------------------------------------------------

    def _on_relation(self, message: RelationMessage) -> None:
        relation = Relation(
            schema=message.namespace or "pg_catalog",
            name=message.name,
            columns=tuple(
                Column(
                    name=column.name,
                    type_name=self._type_name(column.type_oid, column.typmod),
                    type_oid=column.type_oid,
                    typmod=column.typmod,
                    is_key=column.is_key,
                )
                for column in message.columns
            ),
            relation_id=message.relation_id,
            identity_full=message.replica_identity == "f",
        )
        # Inside a stream block the schema belongs to that transaction until it commits.
        target = self._stream.relations if self._stream is not None else self._relations
        if target.get(message.relation_id) != relation:  # keep the object when resent unchanged
            target[message.relation_id] = relation

    def _relation(
        self,
        relation_id: int,
        what: str,
        lsn: Lsn | None,
        overlay: dict[int, Relation] | None,
    ) -> Relation:
        relation = overlay.get(relation_id) if overlay else None
        if relation is None:
            relation = self._relations.get(relation_id)
        if relation is None:
            raise DecodeError(
                f"pgoutput {what} for relation id {relation_id}{_where(lsn)} before its "
                "Relation message: the stream starts mid-transaction or is damaged",
                lsn=lsn,
                relation_id=relation_id,
            )
        return relation

    def _type_name(self, type_oid: int, typmod: int) -> str:
        if self._type_name_hook is not None:
            name = self._type_name_hook(type_oid, typmod)
            if name:
                return name
        name = format_type(type_oid, typmod)
        if name:
            return name
        custom = self._types.get(type_oid)
        if custom is None:
            return ""
        namespace, type_name = custom
        # An array of a custom type is named "_" + its element's name, as PostgreSQL names it.
        if type_name.startswith("_") and (namespace, type_name[1:]) in self._types.values():
            return _custom_type_name(namespace, type_name[1:], typmod) + "[]"
        return _custom_type_name(namespace, type_name, typmod)

    # -- streamed transactions (protocol 2) ----------------------------------------------------

    def _on_stream_start(self, message: StreamStartMessage, lsn: Lsn | None) -> None:
        self._expect_between_transactions("Stream Start", lsn)
        pending = self._streamed.get(message.xid)
        if pending is None:
            pending = self._new_pending(message.xid, lsn, complete=message.first_segment)
            self._streamed[message.xid] = pending
        elif message.first_segment:
            raise DecodeError(
                f"pgoutput Stream Start{_where(lsn)} opens transaction {message.xid} a second "
                "time: the stream is damaged",
                lsn=lsn,
                xid=message.xid,
            )
        self._stream = pending

    def _on_stream_stop(self, lsn: Lsn | None) -> None:
        if self._stream is None:
            raise DecodeError(
                f"pgoutput Stream Stop{_where(lsn)} outside a stream block: the stream is damaged",
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

    def _take_streamed(self, xid: int, what: str, lsn: Lsn | None) -> _Pending:
        pending = self._streamed.pop(xid, None)
        if pending is None or not pending.complete:
            if pending is not None:
                self._drop(pending)
            raise DecodeError(
                f"pgoutput {what} of transaction {xid}{_where(lsn)} but the stream does not hold "
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
                f"pgoutput Prepare of transaction {message.xid}{_where(lsn)} without its Begin "
                "Prepare: the stream is damaged or starts mid-transaction",
                lsn=lsn,
                xid=message.xid,
            )
        self._preparing = None
        self._park(pending, message.gid, lsn)

    def _on_stream_prepare(self, message: StreamPrepareMessage, lsn: Lsn | None) -> None:
        self._expect_between_transactions("Stream Prepare", lsn)
        self._park(self._take_streamed(message.xid, "Stream Prepare", lsn), message.gid, lsn)

    def _park(self, pending: _Pending, gid: str, lsn: Lsn | None) -> None:
        if pending.xid in self._prepared:
            self._drop(pending)
            raise DecodeError(
                f"pgoutput: transaction {pending.xid} is prepared twice{_where(lsn)}: the stream "
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
                f"{_where(lsn)} but the stream does not hold its PREPARE: read the slot from an "
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

    def _new_pending(self, xid: int, lsn: Lsn | None, *, complete: bool) -> _Pending:
        return _Pending(xid, lsn, complete, self._spill_threshold, self._spill_dir)

    def _emit(
        self, pending: _Pending, commit_lsn: Lsn, end_lsn: Lsn, commit_time: datetime
    ) -> Sequence[Event]:
        """A buffered transaction committed: its schema now counts, its events come out."""
        self._relations.update(pending.relations)
        self.spilled_changes += pending.spilled
        begin = Begin(pending.xid, commit_lsn, end_lsn, commit_time, pending.lsn)
        return pending.events(begin, Commit(pending.xid, commit_lsn, end_lsn, commit_time))

    def _drop(self, pending: _Pending) -> None:
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
                f"pgoutput {what}{_where(lsn)} inside {inside}: the stream is damaged",
                lsn=lsn,
                xid=self._current_xid(),
            )


def _kind(message: ChangeMessage) -> str:
    return type(message).__name__.removesuffix("Message")
