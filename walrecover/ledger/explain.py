"""Why a key differs: the audit rows of each differing key, with what replay did with each
(applied, superseded, removed, no row, after the stop point) and whether it counts in the
recovered total.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from ..audit import outcomes
from ..audit.pgarrow import typed_column
from ..audit.reader import audit_dataset
from .result import Explanation, _decimal_column
from .totals import (
    Key,
    Period,
    key_text,
    period_label,
)


def explain_keys(
    path: str | Path,
    keys: Sequence[Key],
    key_columns: Sequence[str],
    amount: str,
    *,
    period: Period | None = None,
    time_column: str | None = None,
    explain_rows: int = 500,
) -> dict[Key, Explanation]:
    """The audit rows of each key in ``keys``, and what became of them.

    Two filtered reads of the audit: the row identities (primary keys) of rows whose after- or
    before-image carries one of the keys, then every row of those keys or identities. A row
    belongs to a key when its own images carry the key, or when it updates or deletes a version
    of a row that did: so a delete whose before-image holds only the primary key still shows,
    but a row that merely reuses a primary key later (another row inserted under it after a
    delete, or in a table dropped and re-created under the same name) is not pulled in. A row
    *counts* for a key when it is live and its after-image carries that key (and period).
    """
    if not keys:
        return {}
    dataset = audit_dataset(path)
    fields = _Fields.of(dataset.schema, key_columns, amount, time_column)
    if fields is None:
        return {}
    table = _audit_rows(dataset, keys, fields)
    members, counted = _members(table.to_pylist(), keys, fields, period)
    return {
        key: _explanation(table, key, members[key], counted[key], fields, explain_rows)
        for key in keys
    }


@dataclass(frozen=True)
class _Fields:
    """The audit's typed columns an explanation reads: the key's in both images, the amount's,
    the time's."""

    new: tuple[str | None, ...]
    old: tuple[str | None, ...]
    amount_new: str
    amount_old: str | None
    time_new: str | None

    @classmethod
    def of(
        cls, schema: pa.Schema, key_columns: Sequence[str], amount: str, time_column: str | None
    ) -> _Fields | None:
        """The fields, or None when the audit lacks a key or amount column."""
        new = tuple(typed_column(schema, k, "new") for k in key_columns)
        amount_new = typed_column(schema, amount, "new")
        if any(f is None for f in new) or amount_new is None:
            return None
        return cls(
            new=new,
            old=tuple(typed_column(schema, k, "old") for k in key_columns),
            amount_new=amount_new,
            amount_old=typed_column(schema, amount, "old"),
            time_new=typed_column(schema, time_column, "new") if time_column else None,
        )


def _audit_rows(dataset: ds.Dataset, keys: Sequence[Key], fields: _Fields) -> pa.Table:
    """Two filtered reads: the row identities of rows whose images carry one of the keys'
    first column, then every row of those values or identities, in seq order."""
    first_values = sorted({k[0] for k in keys if k[0] is not None})
    assert fields.new[0] is not None
    match = ds.field(fields.new[0]).cast(pa.string()).isin(first_values)
    if fields.old[0] is not None:
        match = match | ds.field(fields.old[0]).cast(pa.string()).isin(first_values)
    identities = dataset.to_table(columns=["key"], filter=match).column("key").drop_null()
    if len(identities):
        match = match | ds.field("key").isin(sorted(set(identities.to_pylist())))
    base = ["seq", "commit_time", "commit_lsn", "xid", "op", "outcome", "relation", "key"]
    extra = [
        f
        for f in (*fields.new, *fields.old, fields.amount_new, fields.amount_old, fields.time_new)
        if f
    ]
    wanted = list(dict.fromkeys([*base, *extra]))
    return dataset.to_table(columns=wanted, filter=match).sort_by("seq")


def _image_key(record: Mapping[str, Any], fields: Sequence[str | None]) -> Key | None:
    if any(f is None for f in fields):
        return None
    return tuple(_cell_text(record[f]) for f in fields if f)


def _members(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[Key],
    fields: _Fields,
    period: Period | None,
) -> tuple[dict[Key, list[int]], dict[Key, list[bool]]]:
    """For each key, the positions of the rows that belong to it and whether each counts."""
    n = len(fields.new)
    wanted_keys = set(keys)
    members: dict[Key, list[int]] = {k: [] for k in keys}
    counted: dict[Key, list[bool]] = {k: [] for k in keys}
    #: The keys whose versions each row identity (per relation) holds now, in seq order: an
    #: insert starts a row's life, a delete ends it, an update carries it on.
    versions: dict[tuple[str, str], set[Key]] = {}
    for i, record in enumerate(records):
        op = record["op"]
        after = _image_key(record, fields.new) if op in outcomes.LIVE_OPS else None
        if after is not None and period is not None:
            stamp = record[fields.time_new] if fields.time_new else None
            after = (*after, None if stamp is None else period_label(stamp, period))
        before = _image_key(record, fields.old) if op in ("update", "delete") else None
        if before is not None and all(v is None for v in before):
            before = None  # the before-image does not carry the key columns
        carries = {k for k in wanted_keys if after is not None and k[:n] == after[:n]}
        found = carries | {k for k in wanted_keys if before is not None and k[:n] == before}
        identity = (record["relation"], record["key"]) if record["key"] is not None else None
        if identity is not None:
            if op in ("update", "delete"):
                found |= versions.get(identity, set())  # the version it changes
            if op == "delete":
                versions.pop(identity, None)
            elif op in outcomes.LIVE_OPS:
                versions[identity] = carries
        live = outcomes.is_live(op, record["outcome"])
        for key in found:
            members[key].append(i)
            counted[key].append(live and after == key)
    return members, counted


def _explanation(
    table: pa.Table,
    key: Key,
    members: list[int],
    counted: list[bool],
    fields: _Fields,
    explain_rows: int,
) -> Explanation:
    """One key's rows, renamed for people, with whether each counts and what it means."""
    rename = {
        fields.amount_new: "amount",
        **({fields.amount_old: "old_amount"} if fields.amount_old else {}),
    }
    rows = table.take(pa.array(members, pa.int64()))
    rows = rows.rename_columns([rename.get(c, c) for c in rows.column_names])
    rows = rows.append_column("counted", pa.array(counted, pa.bool_()))
    outcome_values = rows.column("outcome").to_pylist()
    ops = rows.column("op").to_pylist()
    meanings = [outcomes.describe(o, op) for o, op in zip(outcome_values, ops, strict=True)]
    rows = rows.append_column("meaning", pa.array(meanings))
    return Explanation(
        key=key,
        rows=rows.slice(0, explain_rows).to_pandas(types_mapper=pd.ArrowDtype),
        by_outcome=_by_outcome(outcome_values, ops, counted, rows.column("amount").to_pylist()),
        truncated=rows.num_rows > explain_rows,
    )


def _cell_text(value: Any) -> str | None:
    return None if value is None else key_text(value)


def _by_outcome(
    outcome_values: Sequence[str],
    ops: Sequence[str],
    counted: Sequence[bool],
    amounts: Sequence[Any],
) -> pd.DataFrame:
    """Rows and amounts per outcome and op (one group for the counted rows), counted first."""
    groups: dict[tuple[str, str, bool], tuple[int, Decimal]] = {}
    for outcome, op, live, amount in zip(outcome_values, ops, counted, amounts, strict=True):
        value = Decimal(0) if amount is None else Decimal(str(amount))
        group = (outcome, "" if live else op, live)  # counted rows: inserts and updates alike
        n, total = groups.get(group, (0, Decimal(0)))
        groups[group] = (n + 1, total + value)
    order: dict[str, int] = {o: i for i, o in enumerate(outcomes.ALL)}
    items = sorted(groups.items(), key=lambda kv: (not kv[0][2], order.get(kv[0][0], 99), kv[0][1]))
    return pd.DataFrame(
        {
            "outcome": pd.Series([g[0] for g, _ in items], dtype=pd.ArrowDtype(pa.string())),
            "op": pd.Series([g[1] for g, _ in items], dtype=pd.ArrowDtype(pa.string())),
            "counted": pd.Series([g[2] for g, _ in items], dtype=pd.ArrowDtype(pa.bool_())),
            "rows": pd.Series([v[0] for _, v in items], dtype=pd.ArrowDtype(pa.int64())),
            "amount": _decimal_column([v[1] for _, v in items]),
        }
    )
