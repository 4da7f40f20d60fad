"""pgoutput's messages as small frozen dataclasses, one per message type of the protocol
("Logical Replication Message Formats" in PostgreSQL's ``protocol.sgml``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Final

from ...lsn import Lsn

#: The newest protocol version this module reads.
MAX_PROTO_VERSION: Final = 4


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


ChangeMessage = InsertMessage | UpdateMessage | DeleteMessage | TruncateMessage
