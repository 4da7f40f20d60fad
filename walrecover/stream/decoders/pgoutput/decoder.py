"""The pgoutput decoder: the protocol's state (relations by relation id, the open transaction,
held transactions) and the canonical events it produces, in commit order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from ....errors import DecodeError, StreamCutShort
from ...lsn import Lsn
from ...making import change as new_change
from ...model import Begin, Change, Column, Commit, Event, Op, RawMessage, Relation, TableName
from .messages import (
    MAX_PROTO_VERSION,
    BeginMessage,
    BeginPrepareMessage,
    ChangeMessage,
    CommitMessage,
    CommitPreparedMessage,
    DeleteMessage,
    InsertMessage,
    LogicalMessage,
    Message,
    OriginMessage,
    PrepareMessage,
    RelationMessage,
    RollbackPreparedMessage,
    StreamAbortMessage,
    StreamCommitMessage,
    StreamPrepareMessage,
    StreamStartMessage,
    StreamStopMessage,
    TruncateFlags,
    TruncateMessage,
    TupleData,
    TypeMessage,
    UpdateMessage,
)
from .plain import NO_COLUMNS, ROW_OPS, PlainPaths
from .reader import where
from .rows import Row, image
from .typenames import custom_type_name, format_type
from .wire import parse_message

#: The type bytes of Begin and Commit.
_EDGES: Final = frozenset((ord("B"), ord("C")))


class PgoutputDecoder(PlainPaths):
    """Decoder for pgoutput (text mode), protocol versions 1 to 4.

    ``proto_version`` must be the one the slot was read with: it decides which messages may
    appear and how Stream Abort is laid out. ``type_name(oid, typmod)`` names column types
    (e.g. from the source's ``format_type``); without it, built-in types are named by
    :func:`format_type` and custom types from the stream's Type messages (``public`` types
    unqualified; a domain appears as its base type, as pgoutput sends it), else ``""``.

    Streamed and prepared transactions are buffered until their outcome, ``spill_threshold``
    changes per transaction in memory, the rest in anonymous temporary files in ``spill_dir``.

    ``tables``: the only tables whose rows are wanted. An Insert, Update or Delete of another
    table (a ``FOR ALL TABLES`` publication carries every table's changes) is known by its
    relation id and comes out as a :class:`Change` without images, its tuples never decoded:
    consumers still see that the transaction changed something, and which table.

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
        tables: Iterable[TableName] = (),
    ) -> None:
        if not 1 <= proto_version <= MAX_PROTO_VERSION:
            raise DecodeError(
                f"pgoutput proto_version {proto_version} is not supported: use 1 to "
                f"{MAX_PROTO_VERSION}",
                plugin="pgoutput",
            )
        super().__init__(spill_dir, spill_threshold)
        self.proto_version = proto_version
        self._type_name_hook = type_name
        self._types: dict[int, tuple[str, str]] = {}
        #: The tables whose rows are decoded; other tables' row changes come out without their
        #: images (empty: every table's rows are decoded).
        self._wanted = frozenset((t.schema, t.name) for t in tables)
        #: Whether a relation (the object last seen under its id) is wanted, by relation id.
        self._judged: dict[int, tuple[Relation, bool]] = {}
        self._truncations: dict[tuple[Lsn | None, int | None], TruncateFlags] = {}
        #: The options of the last Truncate message decoded (see :meth:`truncate_flags`).
        self.last_truncate_flags: TruncateFlags | None = None
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
                f"pgoutput message{where(message.lsn)} is text, not bytes: read the slot with "
                "pg_logical_slot_peek_binary_changes",
                lsn=message.lsn,
            )
        if data and data[0] in ROW_OPS:
            events = self._plain_row(data, message.lsn)
            if events is None and self._wanted:
                events = self._skip(data, message.lsn)
            if events is not None:
                return events
        elif data and data[0] in _EDGES:
            events = self._plain_edge(data, message.lsn)
            if events is not None:
                return events
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
                f"pgoutput Commit{where(lsn)} without its Begin: the stream is damaged or "
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
            f"pgoutput {_kind(message)}{where(lsn)} outside a transaction: the stream is "
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
            new, unchanged = image(relation, message.new, key_only=False, what=what, lsn=lsn)
            return [new_change(Op.INSERT, relation, new, None, unchanged, lsn, xid)]
        old = self._oldimage(relation, message.key, message.old, what, lsn)
        if isinstance(message, DeleteMessage):
            return [new_change(Op.DELETE, relation, None, old, NO_COLUMNS, lsn, xid)]
        new, unchanged = image(relation, message.new, key_only=False, what=what, lsn=lsn)
        return [new_change(Op.UPDATE, relation, new, old, unchanged, lsn, xid)]

    @staticmethod
    def _oldimage(
        relation: Relation,
        key: TupleData | None,
        old: TupleData | None,
        what: str,
        lsn: Lsn | None,
    ) -> Row | None:
        if key is not None:
            return image(relation, key, key_only=True, what=what, lsn=lsn)[0]
        if old is not None:
            return image(relation, old, key_only=False, what=what, lsn=lsn)[0]
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
                f"pgoutput {what} for relation id {relation_id}{where(lsn)} before its "
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
            return custom_type_name(namespace, type_name[1:], typmod) + "[]"
        return custom_type_name(namespace, type_name, typmod)


def _kind(message: ChangeMessage) -> str:
    return type(message).__name__.removesuffix("Message")
