"""pgoutput, PostgreSQL's built-in binary output plugin, protocol versions 1 to 4.

Written from the protocol documentation ("Logical Replication Message Formats" in PostgreSQL's
``protocol.sgml``). Each message comes as :func:`pg_logical_slot_get_binary_changes` returns it:
one ``bytea`` starting with the message type byte. The package has two layers:

- :func:`parse_message` (:mod:`.wire`) turns the bytes of one message into a small frozen dataclass
  (:class:`BeginMessage`, :class:`InsertMessage`, ...), checking every length, count and string
  terminator, so a damaged stream raises :class:`~walrecover.errors.DecodeError` naming the LSN
  and the byte offset, never ``IndexError`` or ``struct.error``.
- :class:`PgoutputDecoder` (:mod:`.decoder`, with :mod:`.held` for streamed and prepared
  transactions and :mod:`.spill` for their bounded memory) keeps the state the protocol needs
  (relations by relation id, the open transaction, streamed and prepared transactions waiting
  for their outcome) and produces the canonical events in commit order.

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

Modules: :mod:`.messages` (the dataclasses), :mod:`.reader` (checked fields), :mod:`.wire`
(parsing), :mod:`.capture` (cutting a pg_recvlogical file into messages), :mod:`.typenames`
(``format_type`` for column types), :mod:`.rows` (tuples to rows), :mod:`.spill`, :mod:`.held`,
:mod:`.decoder`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ....errors import DecodeError
from .capture import CaptureEndsMidMessage, split_capture
from .decoder import PgoutputDecoder
from .messages import (
    MAX_PROTO_VERSION,
    UNCHANGED,
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
    TruncateFlags,
    TruncateMessage,
    TupleData,
    TypeMessage,
    Unchanged,
    UpdateMessage,
)
from .typenames import format_type, quote_ident
from .wire import parse_message

__all__ = [
    "MAX_PROTO_VERSION",
    "UNCHANGED",
    "BeginMessage",
    "BeginPrepareMessage",
    "CaptureEndsMidMessage",
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
    "split_capture",
]


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
    names = ",".join(quote_ident(name) for name in publications)
    if not names:
        raise DecodeError("pgoutput needs at least one publication name (publication_names)")
    options = [("proto_version", str(proto_version)), ("publication_names", names)]
    if streaming:
        options.append(("streaming", "on"))
    if two_phase:
        options.append(("two_phase", "on"))
    return options
