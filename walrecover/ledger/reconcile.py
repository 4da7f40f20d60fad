"""Reconcile recovered totals against the ledger, exactly, with memory bounded by the keys.

The recovered side is either the rebuilt table, whose per-key sums PostgreSQL computes
(``GROUP BY``, streamed back through a server-side cursor), or an audit file or dataset, whose
live rows (outcome ``applied``, op insert or update: see :mod:`walrecover.audit.outcomes`) Arrow
sums batch by batch. Either way only per-key totals reach Python, never the rows, so a
10-million-row table reconciles in the memory of its keys. The ledger is a SQL query on any
database, a CSV or Parquet file, or a pandas DataFrame, returning ``key..., [period], total``;
opening balances come the same ways (``key..., total``) and are added to the recovered side.

Money is exact end to end: sums are read as text and compared as :class:`~decimal.Decimal`;
float totals are refused; the result's DataFrames hold Arrow ``decimal128`` columns (``Decimal``
values). Keys compare as text (PostgreSQL's ``::text`` of the key columns), so a ledger whose ids
are ``bigint`` matches a table whose ids are ``integer``. A key missing on one side counts as a
total of 0 there, and a key matches when ``|recovered + opening - ledger| <= tolerance``
(default 0).

When an audit is at hand, each differing key is explained: the audit rows of that key, with what
replay did with each (applied, superseded, removed, no row, after the stop point) and whether
it counts in the recovered total.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from ..audit.reader import read_metadata
from ..errors import AuditError, LedgerError
from ..stream.model import TableName
from .explain import explain_keys
from .ledger_totals import (
    LedgerFile,
    LedgerQuery,
    LedgerSource,
    ledger_source,
    ledger_totals,
)
from .result import (
    MATCHED,
    MISMATCHED,
    MISSING_IN_LEDGER,
    MISSING_IN_RECOVERED,
    STATUSES,
    Explanation,
    Reconciliation,
    compare_totals,
)
from .totals import (
    PERIOD_FORMAT,
    Key,
    Period,
    RecoveredAudit,
    RecoveredTable,
    audit_totals,
    connection,
    key_names,
    plain,
    table_totals,
)

#: The library's reconciliation API; the sources and totals live in :mod:`walrecover.ledger.totals`.
__all__ = [
    "MATCHED",
    "MISMATCHED",
    "MISSING_IN_LEDGER",
    "MISSING_IN_RECOVERED",
    "STATUSES",
    "Explanation",
    "LedgerFile",
    "LedgerQuery",
    "LedgerSource",
    "Period",
    "Reconciliation",
    "RecoveredAudit",
    "RecoveredTable",
    "audit_totals",
    "compare_totals",
    "explain_keys",
    "ledger_totals",
    "plain",
    "reconcile",
    "reconcile_table",
    "table_totals",
]


# -- the whole reconciliation ------------------------------------------------------------------


def reconcile(
    recovered: RecoveredTable | RecoveredAudit | str | Path,
    ledger: LedgerSource,
    *,
    key: str | Sequence[str],
    amount: str,
    period: Period | None = None,
    time_column: str | None = None,
    opening: LedgerSource | None = None,
    tolerance: Decimal | int | str = 0,
    audit: str | Path | None = None,
    explain: int = 20,
    explain_rows: int = 500,
) -> Reconciliation:
    """Reconcile the recovered table (or an audit: a path) against a ledger.

    ``key`` is one column or several (composite keys); ``period`` (``"day"`` or ``"month"``
    on ``time_column``) compares totals per key per period; ``opening`` balances (key ->
    opening total) are added to the recovered totals; ``tolerance`` is an exact amount.
    ``audit`` (default: the audit being reconciled) explains up to ``explain`` differing keys.
    """
    if isinstance(recovered, str | Path):
        recovered = RecoveredAudit(recovered)
    keys = key_names(key)
    if period is not None and period not in PERIOD_FORMAT:
        raise LedgerError(f"--period {period!r}: give day or month")
    if period is not None and opening is not None:
        raise LedgerError(
            "opening balances apply to totals per key, not per period: drop --period or the "
            "opening balances"
        )
    totals, ledger_totals_, opening_totals = _totals(
        recovered, ledger, opening, keys, amount, period, time_column
    )
    if isinstance(recovered, RecoveredAudit) and audit is None:
        audit = recovered.path
    result = compare_totals(
        totals,
        ledger_totals_,
        opening=opening_totals,
        tolerance=tolerance,
        key_columns=keys,
        period=period,
        source=recovered.describe(),
    )
    if audit is not None and not result.matched and explain > 0:
        differing = [
            _row_key(row, keys, period)
            for row in result.differences.head(explain).to_dict("records")
        ]
        explanations = explain_keys(
            audit,
            differing,
            keys,
            amount,
            period=period,
            time_column=time_column,
            explain_rows=explain_rows,
        )
        result = _with_explanations(result, explanations)
    return result


def _totals(
    recovered: RecoveredTable | RecoveredAudit,
    ledger: LedgerSource,
    opening: LedgerSource | None,
    keys: Sequence[str],
    amount: str,
    period: Period | None,
    time_column: str | None,
) -> tuple[dict[Key, tuple[Decimal, int]], dict[Key, Decimal], dict[Key, Decimal] | None]:
    """The recovered side's totals, the ledger's and the opening balances'. A ledger query
    without a connection of its own runs on the rebuilt table's database (an audit has none)."""
    if isinstance(recovered, RecoveredAudit):
        _refuse_baseline(recovered.path)
        totals = audit_totals(recovered.path, keys, amount, period=period, time_column=time_column)
        ledger_totals_ = _ledger_or_error(ledger, keys, period, None)
        opening_totals = (
            _ledger_or_error(opening, keys, None, None, "opening") if opening is not None else None
        )
        return totals, ledger_totals_, opening_totals
    with connection(recovered.connection, "target") as conn:
        totals = table_totals(
            conn, recovered.name, keys, amount, period=period, time_column=time_column
        )
        ledger_totals_ = _ledger_or_error(ledger, keys, period, conn)
        opening_totals = (
            _ledger_or_error(opening, keys, None, conn, "opening") if opening is not None else None
        )
    return totals, ledger_totals_, opening_totals


def _refuse_baseline(path: str | Path) -> None:
    """An audit of a recovery from a baseline holds the changes replayed on top of the
    baseline, not the baseline's rows: its totals are not the table's, so it cannot be
    reconciled alone (the rebuilt table can)."""
    try:
        metadata = read_metadata(path)
    except AuditError:
        return  # not a walrecover audit's metadata: the totals say what they can read
    base = metadata.get("baseline")
    if not isinstance(base, dict):
        return
    into = metadata.get("into") or "the rebuilt table"
    raise LedgerError(
        f"the audit {path} starts from a baseline ({base.get('source')}, {base.get('rows')} "
        f"rows, rows sha256 {base.get('rows_sha256')}) whose rows it does not hold, only the "
        "changes replayed on top of them, so its totals are not the table's: reconcile the "
        f"rebuilt table (-d DATABASE --table {into}, with --audit to explain differences)"
    )


def _ledger_or_error(
    source: LedgerSource | None,
    keys: Sequence[str],
    period: Period | None,
    default_connection: Any,
    what: str = "ledger",
) -> dict[Key, Decimal]:
    assert source is not None
    source = ledger_source(source)
    if isinstance(source, LedgerQuery) and source.connection is None and default_connection is None:
        raise LedgerError(
            f"the {what} query needs a database: give --ledger-dsn (reconciling an audit has "
            "no table database to default to)"
        )
    return ledger_totals(
        source, keys, period=period, default_connection=default_connection, what=what
    )


def _row_key(row: Mapping[Any, Any], keys: Sequence[str], period: Period | None) -> Key:
    values = [row["key"]] if keys == ("key",) else [row[k] for k in keys]
    key: Key = tuple(None if v is None or v is pd.NA else str(v) for v in values)
    if period is not None:
        value = row["period"]
        key = (*key, None if value is None or value is pd.NA else str(value))
    return key


def _with_explanations(
    result: Reconciliation, explanations: Mapping[Key, Explanation]
) -> Reconciliation:
    return replace(result, explanations=dict(explanations))


def reconcile_table(
    target: Any,
    into: TableName,
    *,
    key: str | Sequence[str],
    amount: str,
    ledger: Any,
    ledger_query: str,
    period: Period | None = None,
    time_column: str | None = None,
    tolerance: Decimal | int | str = 0,
    audit: str | Path | None = None,
) -> Reconciliation:
    """Compare ``sum(amount)`` per ``key`` of the rebuilt table with a ledger query's totals
    (run on the ``ledger`` connection): what ``walrecover recover --ledger-query`` does."""
    return reconcile(
        RecoveredTable(target, into),
        LedgerQuery(ledger_query, ledger),
        key=key,
        amount=amount,
        period=period,
        time_column=time_column,
        tolerance=tolerance,
        audit=audit,
    )
