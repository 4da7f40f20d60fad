"""Other tables' row changes thinned before decoding: one per table and transaction.

A ``FOR ALL TABLES`` publication carries every table's row changes, and a recovery wants one
table's. Of the others, replay only needs to know that a transaction changed them, and which:
a commit with no change at all is what a DDL-only transaction looks like to the judge of a
re-created table, and the tables of the stream are named when the wanted one is not in it. The
decoder already leaves their tuples undecoded, but each still cost a message, a change and a
dispatch: in the ledger rehearsal, 900,000 of the 2.2 million messages of a 1M read were the
``accounts`` updates of transactions that had already changed ``accounts``. It runs in the
reader process (:mod:`...sources.reader_process`), so the dropped messages are never pickled
nor seen by the process that decodes; in that process itself it would cost about what it saves.

:func:`thin_others` keeps, within each plain transaction (Begin ... Commit), the first Insert,
Update or Delete of each relation that is not wanted and drops the rest. It keeps every
message it cannot judge: one of a relation whose Relation message it has not seen, or whose
name is not UTF-8 (the decoder would refuse it and name the problem), and everything of
streamed and prepared transactions, whose messages it leaves to the decoder's buffering.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from ...model import RawMessage

_ROWS = frozenset(b"IUD")
_BEGIN, _COMMIT, _RELATION = ord("B"), ord("C"), ord("R")
_STREAM_START, _STREAM_STOP = ord("S"), ord("E")


def thin_others(
    messages: Iterable[RawMessage], wanted: Collection[tuple[str, str]]
) -> Iterator[RawMessage]:
    """pgoutput's ``messages`` without the second and later row changes, in a plain
    transaction, of each relation not in ``wanted`` (``(schema, name)`` pairs)."""
    wanted = frozenset(wanted)
    #: Relation id -> whether its rows are wanted (as the last Relation message named it).
    judged: dict[int, bool] = {}
    #: Relations not wanted whose change the open plain transaction already passed on.
    passed: set[int] = set()
    plain = streaming = False
    for message in messages:
        data = message.data
        if not isinstance(data, bytes) or not data:
            yield message
            continue
        kind = data[0]
        if kind in _ROWS:
            if plain:
                relation_id = int.from_bytes(data[1:5], "big")
                if judged.get(relation_id) is False:
                    if relation_id in passed:
                        continue
                    passed.add(relation_id)
        elif kind == _BEGIN:
            plain = not streaming
            passed.clear()
        elif kind == _COMMIT:
            plain = False
        elif kind == _RELATION:
            _judge(data, 5 if streaming else 1, wanted, judged)
        elif kind == _STREAM_START:
            streaming, plain = True, False
        elif kind == _STREAM_STOP:
            streaming = False
        yield message


def _judge(
    data: bytes, at: int, wanted: frozenset[tuple[str, str]], judged: dict[int, bool]
) -> None:
    """Note whether the relation a Relation message (its id at ``at``) names is wanted; forget
    it if the message cannot be read (its changes are then kept)."""
    relation_id = int.from_bytes(data[at : at + 4], "big")
    parts = data[at + 4 :].split(b"\0", 2)
    try:
        if len(parts) < 3:
            raise ValueError("a name without its terminator")
        namespace, name = parts[0].decode("utf-8"), parts[1].decode("utf-8")
    except ValueError:  # UnicodeDecodeError too
        judged.pop(relation_id, None)
        return
    judged[relation_id] = (namespace or "pg_catalog", name) in wanted
