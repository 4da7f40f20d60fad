"""The per-message objects made by the fast constructors are the model's own objects.

:mod:`walrecover.stream.making` (and :func:`walrecover.rebuild.applied.applied_change`) fill a
twin class with the same slots and turn it into the frozen dataclass: what comes out must be
indistinguishable from what the dataclass's constructor makes (type, equality, hash, repr,
immutability, ``dataclasses.replace``), and a twin must have exactly its class's fields.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from walrecover.rebuild import applied
from walrecover.rebuild.applied import AppliedChange, applied_change
from walrecover.stream import making
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Change, Column, Op, Outcome, RawMessage, Relation

RELATION = Relation("public", "t", (Column("id", "integer", is_key=True), Column("v", "text")))


def _same(made: Any, built: Any) -> None:
    assert type(made) is type(built)
    assert made == built and built == made
    assert hash(made) == hash(built) if _hashable(built) else True
    assert repr(made) == repr(built)
    assert dataclasses.astuple(made) == dataclasses.astuple(built)
    first = dataclasses.fields(built)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, first, None)
    assert dataclasses.replace(made) == built


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize(
    ("twin", "cls"),
    [
        (making._ChangeTwin, Change),
        (making._RawMessageTwin, RawMessage),
        (applied._AppliedTwin, AppliedChange),
    ],
)
def test_a_twin_has_its_class_fields(twin: Any, cls: Any) -> None:
    assert set(twin.__slots__) == {f.name for f in dataclasses.fields(cls)}
    assert set(twin.__slots__) == set(cls.__slots__)


def test_a_fast_change_is_a_change() -> None:
    new = {"id": "1", "v": "x"}
    old = {"id": "0"}
    _same(
        making.change(Op.UPDATE, RELATION, new, old, frozenset({"v"}), Lsn(42), 7),
        Change(Op.UPDATE, RELATION, new, old, frozenset({"v"}), Lsn(42), 7),
    )
    _same(
        making.change(Op.DELETE, RELATION, lsn=Lsn(1), xid=2),
        Change(Op.DELETE, RELATION, lsn=Lsn(1), xid=2),
    )
    made = making.change(Op.INSERT, RELATION, new)
    assert made.key() == ("1",) and made.new_key() == ("1",)
    assert dataclasses.replace(made, old=old).old == old


def test_a_fast_raw_message_is_a_raw_message() -> None:
    _same(making.raw_message(b"I\x00", Lsn(5), 9), RawMessage(b"I\x00", Lsn(5), 9))
    _same(making.raw_message('{"action":"B"}'), RawMessage('{"action":"B"}'))


def test_a_fast_applied_change_is_an_applied_change() -> None:
    change = Change(Op.INSERT, RELATION, {"id": "1", "v": "x"})
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    _same(
        applied_change(change, 7, Lsn(10), Lsn(20), when, Outcome.APPLIED),
        AppliedChange(change, 7, Lsn(10), Lsn(20), when, Outcome.APPLIED),
    )
    _same(
        applied_change(change, None, None, None, None, Outcome.NO_ROW, {"id": "1"}),
        AppliedChange(change, None, None, None, None, Outcome.NO_ROW, {"id": "1"}),
    )
