"""From the wire's tuples to the model's rows."""

from __future__ import annotations

from typing import cast

from ....errors import DecodeError
from ...lsn import Lsn
from ...model import Relation
from .messages import UNCHANGED, TupleData, Unchanged
from .reader import where

Row = dict[str, str | None]

_NONE: frozenset[str] = frozenset()


def image(
    relation: Relation, values: TupleData, *, key_only: bool, what: str, lsn: Lsn | None
) -> tuple[Row, frozenset[str]]:
    """A tuple as column name -> text, plus the columns sent as unchanged TOAST.

    In a key tuple (``K``) ``n`` marks a column outside the replica identity, not a NULL, so it
    is left out (key columns are never NULL).
    """
    columns = relation.columns
    if len(values) != len(columns):
        raise DecodeError(
            f"pgoutput {what}{where(lsn)} has {len(values)} columns but relation "
            f"{relation.qualified_name} (id {relation.relation_id}) has {len(columns)}: the "
            "stream is damaged or a Relation message is missing",
            lsn=lsn,
            relation_id=relation.relation_id,
        )
    if UNCHANGED not in values:
        names = relation.column_names
        if not key_only:
            return cast(Row, dict(zip(names, values, strict=True))), _NONE
        return cast(Row, {n: v for n, v in zip(names, values, strict=True) if v is not None}), _NONE
    image: Row = {}
    unchanged: list[str] = []
    for column, value in zip(columns, values, strict=True):
        if isinstance(value, Unchanged):
            unchanged.append(column.name)
        elif value is not None or not key_only:
            image[column.name] = value
    return image, frozenset(unchanged)
