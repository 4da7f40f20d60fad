"""Fast construction of the model's per-message objects: :class:`Change` and :class:`RawMessage`.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its own
``__setattr__`` refuses), about 1 µs for a :class:`Change` in CPython 3.11, and one or two such
objects are made per message of the stream. The functions here make the same objects about three
times faster: a plain class with the same ``__slots__`` (a "twin", whose ``__init__`` stores
into the slots directly) is filled, then its ``__class__`` becomes the frozen class (allowed
because the two lay out their instances identically). What comes out is an ordinary instance
of the frozen class: equal to, hashing and printing like one made by its constructor, and as
immutable (only its maker writes its slots, once). ``tests/test_making.py`` checks the twins
against the classes' fields, so a field added to a class cannot be forgotten here.

Only the per-message hot paths (the sources and the decoders' fast paths) use these; everything
else calls the constructors.
"""

from __future__ import annotations

from typing import Any, cast

from .lsn import Lsn
from .model import Change, Op, RawMessage, Relation, Values

__all__ = ["change", "raw_message"]

_NO_COLUMNS: frozenset[str] = frozenset()


class _ChangeTwin:
    """:class:`Change`'s slots, with a plain ``__init__``."""

    __slots__ = ("lsn", "new", "old", "op", "relation", "unchanged_toast", "xid")

    def __init__(
        self,
        op: Op,
        relation: Relation,
        new: Values | None,
        old: Values | None,
        unchanged_toast: frozenset[str],
        lsn: Lsn | None,
        xid: int | None,
    ) -> None:
        self.op = op
        self.relation = relation
        self.new = new
        self.old = old
        self.unchanged_toast = unchanged_toast
        self.lsn = lsn
        self.xid = xid


class _RawMessageTwin:
    """:class:`RawMessage`'s slots, with a plain ``__init__``."""

    __slots__ = ("data", "lsn", "xid")

    def __init__(self, data: str | bytes, lsn: Lsn | None, xid: int | None) -> None:
        self.data = data
        self.lsn = lsn
        self.xid = xid


def change(
    op: Op,
    relation: Relation,
    new: Values | None = None,
    old: Values | None = None,
    unchanged_toast: frozenset[str] = _NO_COLUMNS,
    lsn: Lsn | None = None,
    xid: int | None = None,
) -> Change:
    """``Change(op, relation, new, old, unchanged_toast, lsn, xid)``, made faster."""
    made: Any = _ChangeTwin(op, relation, new, old, unchanged_toast, lsn, xid)
    made.__class__ = Change
    return cast(Change, made)


def raw_message(data: str | bytes, lsn: Lsn | None = None, xid: int | None = None) -> RawMessage:
    """``RawMessage(data, lsn, xid)``, made faster."""
    made: Any = _RawMessageTwin(data, lsn, xid)
    made.__class__ = RawMessage
    return cast(RawMessage, made)
