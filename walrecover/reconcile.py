"""Reconcile the rebuilt table against the ledger, exactly.

Per-key sums are computed by PostgreSQL (``GROUP BY`` on the rebuilt table; the ledger query
returns key -> total), read as text, and compared as :class:`~decimal.Decimal`: pandas only ever
sees per-key totals, and no float touches money. A key missing on one side counts as a total of
0 there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from .errors import LedgerError
from .model import TableName

_FLOAT_OIDS = {700, 701}

#: Status of one key in a reconciliation.
MATCHED = "matched"
MISMATCHED = "mismatched"
MISSING_IN_RECOVERED = "missing_in_recovered"
MISSING_IN_LEDGER = "missing_in_ledger"


def plain(value: Decimal) -> str:
    """A Decimal as positional text (``0.00000002``, never ``2E-8``), every digit kept."""
    return format(value, "f")


@dataclass(frozen=True)
class Reconciliation:
    """Per-key totals of the rebuilt table compared with the ledger."""

    #: True when every key's totals are equal.
    matched: bool
    #: Keys compared (the union of both sides).
    keys: int
    mismatched: int
    missing_in_recovered: int
    missing_in_ledger: int
    #: Sum of (recovered - ledger) over all keys.
    total_difference: Decimal
    #: One row per key that differs: key, recovered, ledger, delta (Decimals), status.
    differences: pd.DataFrame

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (Decimals as strings, so nothing is rounded)."""
        return {
            "matched": self.matched,
            "keys": self.keys,
            "mismatched": self.mismatched,
            "missing_in_recovered": self.missing_in_recovered,
            "missing_in_ledger": self.missing_in_ledger,
            "total_difference": plain(self.total_difference),
            "differences": [
                {k: (plain(v) if isinstance(v, Decimal) else v) for k, v in row.items()}
                for row in self.differences.head(100).to_dict("records")
            ],
        }


def compare_totals(
    recovered: Mapping[Any, Decimal], ledger: Mapping[Any, Decimal]
) -> Reconciliation:
    """Compare two key -> total mappings; a key missing on one side counts as 0 there."""
    rows = []
    counts = {MISMATCHED: 0, MISSING_IN_RECOVERED: 0, MISSING_IN_LEDGER: 0}
    total = Decimal(0)
    keys = set(recovered) | set(ledger)
    for key in sorted(keys, key=lambda k: (k is None, str(k))):
        ours = recovered.get(key, Decimal(0))
        theirs = ledger.get(key, Decimal(0))
        delta = ours - theirs
        total += delta
        if delta == 0:
            continue
        if key not in recovered:
            status = MISSING_IN_RECOVERED
        elif key not in ledger:
            status = MISSING_IN_LEDGER
        else:
            status = MISMATCHED
        counts[status] += 1
        rows.append(
            {"key": key, "recovered": ours, "ledger": theirs, "delta": delta, "status": status}
        )
    frame = pd.DataFrame(rows, columns=["key", "recovered", "ledger", "delta", "status"])
    return Reconciliation(
        matched=not rows,
        keys=len(keys),
        mismatched=counts[MISMATCHED],
        missing_in_recovered=counts[MISSING_IN_RECOVERED],
        missing_in_ledger=counts[MISSING_IN_LEDGER],
        total_difference=total,
        differences=frame,
    )


def table_totals(conn: Any, table: TableName, key: str, amount: str) -> dict[Any, Decimal]:
    """``sum(amount)`` per ``key`` of a table, computed by PostgreSQL, as exact Decimals."""
    query = sql.SQL("SELECT {key}::text, sum({amount})::text FROM {table} GROUP BY 1").format(
        key=sql.Identifier(key),
        amount=sql.Identifier(amount),
        table=sql.Identifier(table.schema, table.name),
    )
    try:
        rows = conn.execute(query).fetchall()
    except psycopg.Error as exc:
        conn.rollback()
        raise LedgerError(
            f"cannot sum {amount!r} per {key!r} in {table}: {exc.diag.message_primary or exc}; "
            "check --key and --amount",
            table=str(table),
        ) from None
    conn.commit()
    return {k: Decimal(v) if v is not None else Decimal(0) for k, v in rows}


def query_totals(conn: Any, query: str) -> dict[Any, Decimal]:
    """Run a ledger query returning (key, total) and read it exactly; refuse float totals."""
    try:
        cur = conn.execute(query)  # the user's own SQL, run as given
        description = cur.description
        rows = cur.fetchall()
    except psycopg.Error as exc:
        conn.rollback()
        raise LedgerError(
            f"the ledger query failed: {exc.diag.message_primary or exc}; check --ledger-query"
        ) from None
    finally:
        conn.rollback()
    if description is None or len(description) != 2:
        raise LedgerError(
            "the ledger query must return exactly two columns (key, total): "
            "e.g. SELECT id, balance FROM accounts"
        )
    if description[1].type_code in _FLOAT_OIDS:
        raise LedgerError(
            "the ledger query returns its total as a float, which cannot be compared exactly: "
            "cast it to numeric in the query"
        )
    totals: dict[Any, Decimal] = {}
    for key, value in rows:
        try:
            amount = Decimal(str(value)) if value is not None else Decimal(0)
        except InvalidOperation:
            raise LedgerError(
                f"the ledger total {value!r} for key {key!r} is not a number: fix the query"
            ) from None
        name = None if key is None else str(key)
        totals[name] = totals.get(name, Decimal(0)) + amount
    return totals


def reconcile_table(
    target: Any,
    into: TableName,
    *,
    key: str,
    amount: str,
    ledger: Any,
    ledger_query: str,
) -> Reconciliation:
    """Compare ``sum(amount)`` per ``key`` of the rebuilt table with a ledger query's totals."""
    return compare_totals(
        table_totals(target, into, key, amount), query_totals(ledger, ledger_query)
    )
