"""The wire format: :func:`parse_message` turns the bytes of one pgoutput message into its
dataclass, checking every length, count and string terminator, so a damaged stream raises
:class:`~walrecover.errors.DecodeError` naming the LSN and the byte offset, never
``IndexError`` or ``struct.error``."""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from ....errors import DecodeError
from ...lsn import Lsn
from .messages import (
    UNCHANGED,
    BeginMessage,
    BeginPrepareMessage,
    CommitMessage,
    CommitPreparedMessage,
    Datum,
    DeleteMessage,
    InsertMessage,
    LogicalMessage,
    Message,
    OriginMessage,
    PrepareMessage,
    RelationColumn,
    RelationMessage,
    RollbackPreparedMessage,
    StreamAbortMessage,
    StreamCommitMessage,
    StreamPrepareMessage,
    StreamStartMessage,
    StreamStopMessage,
    TruncateMessage,
    TupleData,
    TypeMessage,
    UpdateMessage,
)

_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


def where(lsn: Lsn | None) -> str:
    return f" at LSN {lsn}" if lsn is not None else ""


class Reader:
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
            f"pgoutput {self.what}{where(self.lsn)} {problem} (byte {self.pos} of "
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


def _parse_begin(r: Reader) -> BeginMessage:
    return BeginMessage(final_lsn=r.lsn_field(), commit_time=r.time(), xid=r.u32())


def _parse_commit(r: Reader) -> CommitMessage:
    return CommitMessage(
        flags=r.u8(), commit_lsn=r.lsn_field(), end_lsn=r.lsn_field(), commit_time=r.time()
    )


def _parse_origin(r: Reader) -> OriginMessage:
    return OriginMessage(commit_lsn=r.lsn_field(), name=r.string())


def _parse_relation(r: Reader) -> RelationMessage:
    xid, relation_id, namespace, name = r.xid_prefix(), r.u32(), r.string(), r.string()
    identity = chr(r.u8())
    if identity not in "dnfi":
        r.pos -= 1
        raise r.fail(f"has an unknown replica identity {identity!r}")
    # A column takes at least 10 bytes: flags, the name's NUL, type oid, typmod.
    columns = tuple(_parse_column(r) for _ in range(r.count(2, "column count", per_item=10)))
    return RelationMessage(xid, relation_id, namespace, name, identity, columns)


def _parse_column(r: Reader) -> RelationColumn:
    return RelationColumn(flags=r.u8(), name=r.string(), type_oid=r.u32(), typmod=r.i32())


def _parse_type(r: Reader) -> TypeMessage:
    return TypeMessage(xid=r.xid_prefix(), type_oid=r.u32(), namespace=r.string(), name=r.string())


def _expect_part(r: Reader, allowed: bytes) -> int:
    """The submessage byte that introduces a tuple (``N``, ``K`` or ``O``)."""
    part = r.u8()
    if part not in allowed:
        r.pos -= 1
        wanted = " or ".join(repr(chr(b)) for b in allowed)
        raise r.fail(f"has {part:#04x} where {wanted} belongs")
    return part


def _parse_insert(r: Reader) -> InsertMessage:
    xid, relation_id = r.xid_prefix(), r.u32()
    _expect_part(r, b"N")
    return InsertMessage(xid, relation_id, r.tuple_data())


def _parse_update(r: Reader) -> UpdateMessage:
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


def _parse_delete(r: Reader) -> DeleteMessage:
    xid, relation_id = r.xid_prefix(), r.u32()
    if _expect_part(r, b"KO") == ord("K"):
        return DeleteMessage(xid, relation_id, key=r.tuple_data(), old=None)
    return DeleteMessage(xid, relation_id, key=None, old=r.tuple_data())


def _parse_truncate(r: Reader) -> TruncateMessage:
    xid = r.xid_prefix()
    count = r.count(4, "relation count", per_item=4)
    options = r.u8()
    return TruncateMessage(xid, options, tuple(r.u32() for _ in range(count)))


def _parse_message(r: Reader) -> LogicalMessage:
    xid, transactional, lsn, prefix = r.xid_prefix(), r.flag(), r.lsn_field(), r.string()
    return LogicalMessage(xid, transactional, lsn, prefix, r.raw(r.count(4, "content length")))


def _parse_stream_start(r: Reader) -> StreamStartMessage:
    return StreamStartMessage(xid=r.u32(), first_segment=r.flag())


def _parse_stream_stop(r: Reader) -> StreamStopMessage:
    return StreamStopMessage()


def _parse_stream_commit(r: Reader) -> StreamCommitMessage:
    return StreamCommitMessage(
        xid=r.u32(),
        flags=r.u8(),
        commit_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        commit_time=r.time(),
    )


def _parse_stream_abort(r: Reader) -> StreamAbortMessage:
    xid, subxid = r.u32(), r.u32()
    # Version 4 adds the abort LSN and time, but only when streaming is 'parallel': the
    # message's length tells which form this is.
    if r.version >= 4 and r.remaining() == 16:
        return StreamAbortMessage(xid, subxid, abort_lsn=r.lsn_field(), abort_time=r.time())
    return StreamAbortMessage(xid, subxid)


def _parse_begin_prepare(r: Reader) -> BeginPrepareMessage:
    return BeginPrepareMessage(
        prepare_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_prepare(r: Reader) -> PrepareMessage:
    return PrepareMessage(
        flags=r.u8(),
        prepare_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_commit_prepared(r: Reader) -> CommitPreparedMessage:
    return CommitPreparedMessage(
        flags=r.u8(),
        commit_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        commit_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_rollback_prepared(r: Reader) -> RollbackPreparedMessage:
    return RollbackPreparedMessage(
        flags=r.u8(),
        prepare_end_lsn=r.lsn_field(),
        rollback_end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        rollback_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


def _parse_stream_prepare(r: Reader) -> StreamPrepareMessage:
    return StreamPrepareMessage(
        flags=r.u8(),
        prepare_lsn=r.lsn_field(),
        end_lsn=r.lsn_field(),
        prepare_time=r.time(),
        xid=r.u32(),
        gid=r.string(),
    )


#: Type byte -> (message name, first protocol version that has it, parser).
PARSERS: Final[dict[int, tuple[str, int, Callable[[Reader], Message]]]] = {
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
        raise DecodeError(f"pgoutput message{where(lsn)} is empty: the stream is damaged", lsn=lsn)
    entry = PARSERS.get(data[0])
    if entry is None:
        raise DecodeError(
            f"pgoutput message{where(lsn)} has an unknown type byte {data[0]:#04x} "
            f"({chr(data[0])!r}): the stream is damaged or is not pgoutput output",
            lsn=lsn,
            offset=0,
        )
    name, since, parse = entry
    if proto_version < since:
        raise DecodeError(
            f"pgoutput {name} message{where(lsn)} needs protocol version {since} but the "
            f"stream is decoded as proto_version {proto_version}: give the proto_version the "
            "slot was read with",
            lsn=lsn,
            offset=0,
        )
    reader = Reader(
        data, what=f"{name} message", lsn=lsn, version=proto_version, in_stream=in_stream
    )
    message = parse(reader)
    reader.end()
    return message
