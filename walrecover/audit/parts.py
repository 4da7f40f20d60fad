"""Recovered row changes as the rows of the audit's part files
(:data:`~walrecover.audit.format.PART_SCHEMA`): where each came from, what it was, what became of
it, its exact images, and the identities of the row before and after it, from which the audit
works out ``superseded`` and ``removed`` when it closes (:mod:`walrecover.audit.finalise`).

:class:`PartRows` gathers them column by column, as Arrow takes them: no tuple per row to make,
transpose and collect (the per-row work is the audit's part of the replay's hot path).
"""

from __future__ import annotations

import _json
import json
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ..rebuild.replay import AppliedChange
from ..stream.model import Change, Op, Outcome, Relation, Values
from .format import PART_SCHEMA, list_json, quote_text

_quote: Final = quote_text
#: A key column missing from an image.
_MISSING: Final[Any] = object()


def _identity(change_key: tuple[str | None, ...] | None) -> str | None:
    return None if change_key is None else list_json(change_key)


def _row_identity(values: Values | None, relation: Relation) -> str | None:
    """A keyless table's row identity: the whole row, when the image carries every column."""
    if values is None or not relation.columns:
        return None
    names = relation.column_names
    if any(name not in values for name in names):
        return None
    return list_json([values[name] for name in names])


def _not_text(value: object) -> object:
    raise TypeError(f"an image holds text or NULL, not {type(value).__name__}")


#: The stdlib's C encoder, made once with the separators and string quoting of
#: :func:`~walrecover.audit.format.values_json` (``json.dumps`` makes one per call): it writes
#: an image's JSON (``{"a": "1", "b": null}``) as chunks to join, the same bytes.
_ENCODE_IMAGE: Final = _json.make_encoder(
    None, _not_text, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
)


def image_json(values: Values) -> str:
    """An image as the audit's ``new_values``/``old_values`` JSON: :func:`values_json`'s bytes."""
    return "".join(_ENCODE_IMAGE(values, 0))


# -- the writer ----------------------------------------------------------------------------------

_OP_TEXT: Final = {op: op.value for op in Op}
_OUTCOME_TEXT: Final = {outcome: str(outcome.value) for outcome in Outcome}
_CHANGES_ROW: Final = frozenset((Op.UPDATE, Op.DELETE))
_LEAVES_ROW: Final = frozenset((Op.INSERT, Op.UPDATE))
#: The part schema's columns after ``seq`` (which is numbered when the table is made).
_COLUMNS: Final = len(PART_SCHEMA) - 1
#: An LSN's text as ``Lsn.__str__`` writes it, from ``divmod(lsn, _HIGH)``, without a method
#: call per row (percent formatting of a tuple is one C call).
_LSN_TEXT: Final = "%X/%X"
_HIGH: Final = 0x1_0000_0000


class PartRows:
    """Gathers part rows as columns (in the order of ``PART_SCHEMA`` after ``seq``), with what
    the rows of one relation share (its name, its key columns' quoted names) made once per
    relation and each commit LSN's text once per transaction."""

    __slots__ = ("_key_heads", "_name", "_relation", "columns")

    def __init__(self) -> None:
        self.columns: list[list[Any]] = [[] for _ in range(_COLUMNS)]
        self._relation: Relation | None = None
        self._name = ""
        self._key_heads: list[str] = []

    def __len__(self) -> int:
        return len(self.columns[0])

    def add(self, batch: Sequence[AppliedChange], see: Callable[[Relation], None]) -> None:
        """Add the rows of ``batch``; ``see`` is told each relation as its rows begin."""
        start, end = 0, len(batch)
        while start < end:
            relation = batch[start].change.relation
            stop = start + 1
            while stop < end and batch[stop].change.relation is relation:
                stop += 1
            if relation is not self._relation:
                see(relation)
                self._relation = relation
                self._name = relation.qualified_name
                self._key_heads = [_quote(name) + ": " for name in relation.key_columns]
            self._add_run(batch[start:stop] if start or stop < end else batch, relation)
            start = stop

    def _add_run(self, run: Sequence[AppliedChange], relation: Relation) -> None:
        """Add the rows of changes of one relation, a column at a time."""
        changes = [applied.change for applied in run]
        commit_lsns = [applied.commit_lsn for applied in run]
        texts = {
            lsn: _LSN_TEXT % divmod(lsn, _HIGH) if lsn else None
            for lsn in dict.fromkeys(commit_lsns)
        }
        afters = [
            applied.after if applied.after is not None else change.new
            for applied, change in zip(run, changes, strict=True)
        ]
        encode, join = _ENCODE_IMAGE, "".join
        (commits, lsns, xids, times, ops, names, *_rest) = self.columns
        commits += [texts[lsn] for lsn in commit_lsns]
        lsns += [
            None if (lsn := c.lsn) is None else _LSN_TEXT % divmod(lsn, _HIGH) for c in changes
        ]
        xids += [applied.xid for applied in run]
        times += [applied.commit_time for applied in run]
        ops += [_OP_TEXT[c.op] for c in changes]
        names += [self._name] * len(run)
        self.columns[7] += [_OUTCOME_TEXT[applied.outcome] for applied in run]
        self.columns[8] += [None if after is None else join(encode(after, 0)) for after in afters]
        self.columns[9] += [
            None if (old := c.old) is None else join(encode(old, 0)) for c in changes
        ]
        if len(relation.key_columns) == 1:
            self._keyed_one(changes, relation.key_columns[0])
        elif relation.key_columns:
            self._keyed(changes, relation.key_columns)
        else:
            self._keyless(changes, afters, relation)

    def _keyed(self, changes: list[Change], key_columns: tuple[str, ...]) -> None:
        """A keyed table's rows: their key, and identities made of the key's values."""
        keys, before_ids, after_ids = self.columns[6], self.columns[10], self.columns[11]
        heads, add, quote = self._key_heads, operator.add, _quote
        for change in changes:
            op, new, before = change.op, change.new, change.old
            image = before if before is not None else new
            key_json = before_identity = after_identity = key_identity = None
            if image is not None:
                try:
                    key = [image[name] for name in key_columns]
                except KeyError:
                    pass
                else:
                    texts = ["null" if v is None else quote(v) for v in key]
                    key_json = "{" + ", ".join(map(add, heads, texts)) + "}"
                    key_identity = "[" + ", ".join(texts) + "]"
                    if op in _CHANGES_ROW:
                        before_identity = key_identity
            if op in _LEAVES_ROW and new is not None:
                if image is new:  # the key was read from the new image: the same identity
                    after_identity = key_identity
                else:
                    try:
                        after_identity = _identity(tuple([new[name] for name in key_columns]))
                    except KeyError:
                        after_identity = key_identity
            keys.append(key_json)
            before_ids.append(before_identity)
            after_ids.append(after_identity)

    def _keyed_one(self, changes: list[Change], name: str) -> None:
        """:meth:`_keyed` for a key of one column (most tables), with no list per row."""
        keys, before_ids, after_ids = self.columns[6], self.columns[10], self.columns[11]
        head, quote = "{" + self._key_heads[0], _quote
        missing: Any = _MISSING
        for change in changes:
            op, new, before = change.op, change.new, change.old
            image = before if before is not None else new
            key_json = before_identity = after_identity = key_identity = None
            if image is not None and (value := image.get(name, missing)) is not missing:
                text = "null" if value is None else quote(value)
                key_json = head + text + "}"
                key_identity = "[" + text + "]"
                if op in _CHANGES_ROW:
                    before_identity = key_identity
            if op in _LEAVES_ROW and new is not None:
                # The key was read from the new image, or it has none: the same identity.
                if image is new or (value := new.get(name, missing)) is missing:
                    after_identity = key_identity
                else:
                    after_identity = "[" + ("null" if value is None else quote(value)) + "]"
            keys.append(key_json)
            before_ids.append(before_identity)
            after_ids.append(after_identity)

    def _keyless(
        self, changes: list[Change], afters: list[Values | None], relation: Relation
    ) -> None:
        """A keyless table's rows: no key; identities made of whole rows."""
        self.columns[6] += [None] * len(changes)
        self.columns[10] += [
            _row_identity(c.old, relation) if c.op in _CHANGES_ROW else None for c in changes
        ]
        self.columns[11] += [
            _row_identity(after, relation) if c.op in _LEAVES_ROW else None
            for c, after in zip(changes, afters, strict=True)
        ]

    def table(self, first_seq: int) -> pa.Table:
        """The rows gathered so far as a part table (``seq`` from ``first_seq``); then none."""
        columns, self.columns = self.columns, [[] for _ in range(_COLUMNS)]
        rows = len(columns[0])
        arrays = [pa.array(np.arange(first_seq, first_seq + rows, dtype=np.int64))]
        for field, values in zip(list(PART_SCHEMA)[1:], columns, strict=True):
            if field.name == "commit_time":
                arrays.append(_times(values, field.type))
            else:
                arrays.append(pa.array(values, field.type))
        return pa.Table.from_arrays(arrays, schema=PART_SCHEMA)

    def clear(self) -> None:
        """Forget the rows gathered and not yet made a table."""
        self.columns = [[] for _ in range(_COLUMNS)]


def _times(values: list[Any], type_: pa.DataType) -> pa.Array:
    """Commit times as Arrow timestamps, each distinct object converted once (the rows of a
    transaction share their commit time's): Arrow's conversion of a datetime costs more than
    the rest of a row's columns together."""
    index: dict[int, int] = {}
    indices = [index.setdefault(id(value), len(index)) for value in values]
    distinct = list({id(value): value for value in values}.values())
    return pa.array(distinct, type_).take(pa.array(indices, pa.int32()))


def part_rows(batch: Sequence[AppliedChange], first_seq: int = 0) -> list[tuple[Any, ...]]:
    """The values of the part-file rows of ``batch``, each in the order of ``PART_SCHEMA``."""
    maker = PartRows()
    maker.add(batch, lambda relation: None)
    return [
        (seq, *values)
        for seq, values in enumerate(zip(*maker.columns, strict=True), start=first_seq)
    ]
