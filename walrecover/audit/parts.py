"""A recovered row change as a row of the audit's part files
(:data:`~walrecover.audit.format.PART_SCHEMA`): where it came from, what it was, what became of
it, its exact images, and the identities of the row before and after it, from which the audit
works out ``superseded`` and ``removed`` when it closes (:mod:`walrecover.audit.finalise`).
"""

from __future__ import annotations

import functools
from typing import Any

from ..rebuild.replay import AppliedChange
from ..stream.lsn import Lsn
from ..stream.model import Op, Relation, Values
from .format import list_json, pairs_json, values_json


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


def part_row(applied: AppliedChange, seq: int) -> tuple[Any, ...]:
    """The values of one part-file row, in the order of ``PART_SCHEMA``."""
    change = applied.change
    relation = change.relation
    op = change.op
    key = change.key()
    after = applied.after if applied.after is not None else change.new
    before = change.old
    changes_row = op in (Op.UPDATE, Op.DELETE)
    leaves_row = op in (Op.INSERT, Op.UPDATE)
    if relation.key_columns:
        before_identity = _identity(key) if changes_row else None
        after_identity = _identity(change.new_key()) if leaves_row else None
    else:
        before_identity = _row_identity(before, relation) if changes_row else None
        after_identity = _row_identity(after, relation) if leaves_row else None
    return (
        seq,
        _commit_text(applied.commit_lsn) if applied.commit_lsn else None,
        str(change.lsn) if change.lsn is not None else None,
        applied.xid,
        applied.commit_time,
        op.value,
        relation.qualified_name,
        pairs_json(zip(relation.key_columns, key, strict=True)) if key is not None else None,
        str(applied.outcome.value),
        values_json(after),
        values_json(before),
        before_identity,
        after_identity,
    )
