"""pgoutput's per-message hot paths: a plain transaction's Begin, Commit and Inserts, and the
row changes of tables not wanted, read without the message objects.

Each returns None, before changing any state, for anything it does not take (a stream or
prepare block, an unknown relation, any byte out of place): the decoder then parses the message,
which decodes it or names what is wrong, so both ways give the same events
(``tests/test_pgoutput_fast.py`` checks it on every recorded stream).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import timedelta
from typing import Final

from ...lsn import Lsn
from ...making import change as new_change
from ...model import Begin, Commit, Event, Op, Relation
from .held import HeldTransactions
from .reader import PG_EPOCH, row_fast

#: The type bytes of Insert, Update and Delete, and the operation each is.
ROW_OPS: Final[dict[int, Op]] = {ord("I"): Op.INSERT, ord("U"): Op.UPDATE, ord("D"): Op.DELETE}
_INSERT: Final = ord("I")
_NEW_TUPLE: Final = ord("N")
_BEGIN: Final = ord("B")
#: After the type byte: a Begin's final LSN, commit time and xid; a Commit's flags, commit
#: LSN, end LSN and commit time.
_BEGIN_FIELDS: Final = struct.Struct(">QqI")
_COMMIT_FIELDS: Final = struct.Struct(">BQQq")
NO_COLUMNS: Final[frozenset[str]] = frozenset()
#: ``int.__new__``: an unpacked uint64 is always a valid LSN, no range check needed.
_new_lsn = int.__new__


class PlainPaths(HeldTransactions):
    """The fast paths of :class:`~.decoder.PgoutputDecoder`, which sets ``_wanted`` (the
    tables whose rows are decoded; empty: all) and ``_judged`` (whether the relation object
    last seen under an id is wanted)."""

    _wanted: frozenset[tuple[str, str]]
    _judged: dict[int, tuple[Relation, bool]]

    def _skip(self, data: bytes, lsn: Lsn | None) -> Sequence[Event] | None:
        """A row change of a table not wanted, placed like any change but without its tuples;
        None when the message must be parsed (a wanted or unknown relation, damage, no
        transaction): parsing then decodes it or names what is wrong."""
        stream = self._stream
        start = 5 if stream is not None else 1  # in a stream block the xid comes first
        if len(data) < start + 4:
            return None
        relation_id = int.from_bytes(data[start : start + 4], "big")
        relation = stream.relations.get(relation_id) if stream is not None else None
        if relation is None:
            relation = self._relations.get(relation_id)
        if relation is None or (relation.schema, relation.name) in self._wanted:
            return None
        op = ROW_OPS[data[0]]
        if stream is not None:
            if stream.complete:
                subxid = int.from_bytes(data[1:5], "big")
                stream.add(subxid, new_change(op, relation, lsn=lsn, xid=stream.xid))
            return ()
        if self._preparing is not None:
            pending = self._preparing
            pending.add(pending.xid, new_change(op, relation, lsn=lsn, xid=pending.xid))
            return ()
        if self._open is not None:
            return (new_change(op, relation, None, None, NO_COLUMNS, lsn, self._open.xid),)
        return None

    def _plain_row(self, data: bytes, lsn: Lsn | None) -> Sequence[Event] | None:
        """A row change of a plain transaction read without the message objects (the
        per-change hot path): a table not wanted gives its change without images
        (:meth:`_plain_skip`), an Insert its new row (:meth:`_insert`). None for anything else
        (a stream or prepare block, an unknown relation, an Update or Delete of a wanted table,
        any byte out of place), which :meth:`_skip` or parsing then decodes or names."""
        if self._wanted:
            skipped = self._plain_skip(data, lsn)
            if skipped is not None:
                return skipped
        return self._insert(data, lsn) if data[0] == _INSERT else None

    def _plain_skip(self, data: bytes, lsn: Lsn | None) -> Sequence[Event] | None:
        """A row change of a plain transaction of a known relation not wanted; else None."""
        open_ = self._open
        if open_ is None or self._stream is not None or self._preparing is not None:
            return None
        if len(data) < 5:
            return None
        relation_id = int.from_bytes(data[1:5], "big")
        relation = self._relations.get(relation_id)
        if relation is None:
            return None
        judged = self._judged.get(relation_id)
        if judged is None or judged[0] is not relation:
            judged = (relation, (relation.schema, relation.name) in self._wanted)
            self._judged[relation_id] = judged
        if judged[1]:
            return None
        return (new_change(ROW_OPS[data[0]], relation, None, None, NO_COLUMNS, lsn, open_.xid),)

    def _insert(self, data: bytes, lsn: Lsn | None) -> Sequence[Event] | None:
        """An Insert of a plain transaction of a known relation, read straight into its row
        (:func:`~.reader.row_fast`); None for anything else."""
        open_ = self._open
        if open_ is None or self._stream is not None or self._preparing is not None:
            return None
        if len(data) < 6 or data[5] != _NEW_TUPLE:
            return None
        relation = self._relations.get(int.from_bytes(data[1:5], "big"))
        if relation is None:
            return None
        new = row_fast(data, 6, relation.column_names)
        if new is None:
            return None
        return (new_change(Op.INSERT, relation, new, None, NO_COLUMNS, lsn, open_.xid),)

    def _plain_edge(self, data: bytes, lsn: Lsn | None) -> Sequence[Event] | None:
        """A Begin between transactions, or the Commit of the open plain transaction, read
        without the message objects; None for anything else (a stream or prepare block, a
        length out of place, a time out of range), which parsing then decodes or names."""
        if self._stream is not None or self._preparing is not None:
            return None
        try:
            if data[0] == _BEGIN:
                if len(data) != _BEGIN_FIELDS.size + 1 or self._open is not None:
                    return None
                final_lsn, micros, xid = _BEGIN_FIELDS.unpack_from(data, 1)
                when = PG_EPOCH + timedelta(microseconds=micros)
                self._open = Begin(xid, _new_lsn(Lsn, final_lsn), None, when, lsn)
                return (self._open,)
            begin = self._open
            if len(data) != _COMMIT_FIELDS.size + 1 or begin is None:
                return None
            _, commit_lsn, end_lsn, micros = _COMMIT_FIELDS.unpack_from(data, 1)
            when = PG_EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            return None
        self._open = None
        return (Commit(begin.xid, _new_lsn(Lsn, commit_lsn), _new_lsn(Lsn, end_lsn), when),)
