"""The wire format: :func:`parse_message` turns the bytes of one pgoutput message into its
dataclass, checking every length, count and string terminator, so a damaged stream raises
:class:`~walrecover.errors.DecodeError` naming the LSN and the byte offset, never
``IndexError`` or ``struct.error``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ....errors import DecodeError
from ...lsn import Lsn
from .messages import (
    BeginMessage,
    BeginPrepareMessage,
    CommitMessage,
    CommitPreparedMessage,
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
    TypeMessage,
    UpdateMessage,
)
from .reader import Reader, where


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

#: Each message's name as errors give it (made once, not per message).
_WHAT: Final = {name: f"{name} message" for name, _, _ in PARSERS.values()}


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
    reader = Reader(data, what=_WHAT[name], lsn=lsn, version=proto_version, in_stream=in_stream)
    message = parse(reader)
    reader.end()
    return message
