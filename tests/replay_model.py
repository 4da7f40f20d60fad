"""A tiny replay of decoded transactions in Python, to check decoders against a ground truth.

Rows are kept per table in a dict keyed by the table's primary key (given by the caller, as a
real replay takes it from the table's definition: test_decoding never names the key). Every
inconsistency a real replay would trip over (an insert of an existing key, an update or delete
of a missing row, an unchanged-TOAST column without a previous value) fails an assertion.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

from walrecover.stream.model import Change, Op, Transaction

Row = dict[str, str | None]
Key = tuple[str | None, ...]


def _key(image: Mapping[str, str | None], columns: Sequence[str], change: Change) -> Key:
    missing = [c for c in columns if c not in image]
    assert not missing, f"{change.op.value} on {change.relation.qualified_name} lacks {missing}"
    return tuple(image[c] for c in columns)


def replay(
    txns: Iterable[Transaction],
    keys: Mapping[str, Sequence[str]],
    only: Container[str] | None = None,
) -> dict[str, dict[Key, Row]]:
    """Apply every change of ``txns`` (tables named by ``Relation.qualified_name``)."""
    tables: dict[str, dict[Key, Row]] = {name: {} for name in keys}
    for txn in txns:
        for change in txn.changes:
            name = change.relation.qualified_name
            if only is not None and name not in only:
                continue
            assert name in tables, f"a change of unexpected table {name}"
            rows, columns = tables[name], keys[name]
            if change.op is Op.TRUNCATE:
                rows.clear()
            elif change.op is Op.INSERT:
                assert change.new is not None and not change.unchanged_toast
                key = _key(change.new, columns, change)
                assert key not in rows, f"insert of existing row {key} in {name}"
                rows[key] = dict(change.new)
            elif change.op is Op.UPDATE:
                assert change.new is not None
                old_key = _key(
                    change.old if change.old is not None else change.new, columns, change
                )
                assert old_key in rows, f"update of missing row {old_key} in {name}"
                previous = rows.pop(old_key)
                row = dict(change.new)
                for column in change.unchanged_toast:
                    assert column not in row, f"{column} is both sent and unchanged"
                    row[column] = previous[column]
                new_key = _key(row, columns, change)
                assert new_key not in rows, f"update onto existing row {new_key} in {name}"
                rows[new_key] = row
            else:
                assert change.old is not None, f"delete without old key in {name}"
                key = _key(change.old, columns, change)
                assert key in rows, f"delete of missing row {key} in {name}"
                del rows[key]
    return tables


def as_truth(rows: Mapping[Key, Row], columns: Sequence[str]) -> list[list[str | None]]:
    """Replayed rows in the ground truth's shape (lists in column order, sorted by key)."""
    for row in rows.values():
        assert set(row) == set(columns), f"columns differ: {sorted(set(row) ^ set(columns))}"
    return [[row[c] for c in columns] for _, row in sorted(rows.items(), key=_sort_key)]


def truth_rows(contents: Mapping[str, Any]) -> list[list[str | None]]:
    """The ground truth's rows, sorted like :func:`as_truth` sorts replayed rows."""
    columns: list[str] = contents["columns"]
    positions = [columns.index(c) for c in contents["key"]]
    rows: list[list[str | None]] = contents["rows"]
    return sorted(rows, key=lambda row: _sort_key((tuple(row[i] for i in positions), {})))


def _sort_key(item: tuple[Key, Any]) -> tuple[tuple[bool, str], ...]:
    return tuple((value is None, value or "") for value in item[0])
