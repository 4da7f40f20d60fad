"""A recovered row change as a row of the audit's part files
(:data:`~walrecover.audit.format.PART_SCHEMA`): where it came from, what it was, what became of
it, its exact images, and the identities of the row before and after it, from which the audit
works out ``superseded`` and ``removed`` when it closes (:mod:`walrecover.audit.finalise`).
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Final

from ..rebuild.replay import AppliedChange
from ..stream.lsn import Lsn
from ..stream.model import Op, Outcome, Relation, Values
from .format import list_json, quote_text, values_json

_quote: Final = quote_text


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


@functools.lru_cache(maxsize=16)
def _commit_text(lsn: Lsn) -> str:
    """A commit LSN's text, once per transaction rather than once per row."""
    return str(lsn)


# -- the writer ----------------------------------------------------------------------------------

_OP_TEXT: Final = {op: op.value for op in Op}
_OUTCOME_TEXT: Final = {outcome: str(outcome.value) for outcome in Outcome}
_CHANGES_ROW: Final = frozenset((Op.UPDATE, Op.DELETE))
_LEAVES_ROW: Final = frozenset((Op.INSERT, Op.UPDATE))


class PartRows:
    """Makes part rows (:func:`part_row`), with what the rows of one relation share (its
    name, its key columns' quoted names) made once per relation rather than once per row."""

    __slots__ = ("_key_heads", "_name", "_relation")

    def __init__(self) -> None:
        self._relation: Relation | None = None
        self._name = ""
        self._key_heads: list[str] = []

    def row(self, applied: AppliedChange, seq: int) -> tuple[Any, ...]:
        """The values of one part-file row, in the order of ``PART_SCHEMA``."""
        change = applied.change
        relation = change.relation
        if relation is not self._relation:
            self._relation = relation
            self._name = relation.qualified_name
            self._key_heads = [_quote(name) + ": " for name in relation.key_columns]
        op = change.op
        new, before = change.new, change.old
        after = applied.after if applied.after is not None else new
        key_columns = relation.key_columns
        key: tuple[str | None, ...] | None = None
        key_json = before_identity = after_identity = None
        if key_columns:
            image = before if before is not None else new
            if image is not None:
                try:
                    key = tuple([image[name] for name in key_columns])
                except KeyError:
                    key = None
            key_identity = None
            if key is not None:
                texts = ["null" if v is None else _quote(v) for v in key]
                key_json = "{" + ", ".join(map(operator.add, self._key_heads, texts)) + "}"
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
        else:
            if op in _CHANGES_ROW:
                before_identity = _row_identity(before, relation)
            if op in _LEAVES_ROW:
                after_identity = _row_identity(after, relation)
        commit_lsn = applied.commit_lsn
        lsn = change.lsn
        return (
            seq,
            _commit_text(commit_lsn) if commit_lsn else None,
            str(lsn) if lsn is not None else None,
            applied.xid,
            applied.commit_time,
            _OP_TEXT[op],
            self._name,
            key_json,
            _OUTCOME_TEXT[applied.outcome],
            values_json(after),
            values_json(before),
            before_identity,
            after_identity,
        )


def part_row(applied: AppliedChange, seq: int) -> tuple[Any, ...]:
    """The values of one part-file row, in the order of ``PART_SCHEMA``."""
    return PartRows().row(applied, seq)
