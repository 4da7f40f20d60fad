"""Per-key totals of the recovered side, exactly, and the values every total is made of.

Only per-key totals ever reach Python, never the rows: PostgreSQL sums a table (``GROUP BY``,
streamed back through a server-side cursor) and Arrow sums an audit batch by batch. Sums are
read as text and kept as :class:`~decimal.Decimal`; float totals are refused. Keys are text
(PostgreSQL's ``::text`` of the key columns), with the period label last when totals are per
day or month. The ledger's side (a query, a CSV or Parquet file, a DataFrame) is read by
``ledger_totals.py`` with the same values.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from psycopg import sql

from ..audit import outcomes
from ..audit.pgarrow import typed_column
from ..audit.reader import audit_dataset
from ..db import Connection, connect
from ..errors import LedgerError
from ..stream.model import Outcome, TableName

_FLOAT_TYPES = ("real", "double precision")

Period = Literal["day", "month"]


#: A key as text values, one per key column, with the period label last when there is one.
Key = tuple[str | None, ...]


#: Rows fetched per round trip from a server-side cursor.
FETCH_ROWS = 10_000
PERIOD_FORMAT = {"day": "YYYY-MM-DD", "month": "YYYY-MM"}
_PERIOD_STRFTIME = {"day": "%Y-%m-%d", "month": "%Y-%m"}
_PERIOD_RE = re.compile(r"^(\d{4}-\d{2})(-\d{2})?")


def plain(value: Decimal) -> str:
    """A Decimal as positional text (``0.00000002``, never ``2E-8``), every digit kept."""
    return format(value, "f")


def to_decimal(value: Any, what: str) -> Decimal:
    """A total read exactly; floats and non-numbers are refused with what to do."""
    if value is None:
        return Decimal(0)
    if isinstance(value, float):
        raise LedgerError(
            f"{what} is a float ({value!r}), which cannot be compared exactly: give it as "
            "numeric, decimal or text"
        )
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        if re.fullmatch(r"\s*[-+]?[\d.]*\d,\d+\s*", str(value)):
            raise LedgerError(
                f"{what} {value!r} has a decimal comma (or a thousands separator): write "
                "amounts with a decimal point and no separators, e.g. 1234.50"
            ) from None
        raise LedgerError(f"{what} {value!r} is not a number: fix the ledger") from None
    if not result.is_finite():
        raise LedgerError(f"{what} {value!r} is not a finite number: fix the ledger")
    return result


def key_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        raise LedgerError(f"a ledger key is a float ({value!r}): give keys as integers or text")
    if isinstance(value, Decimal):
        return plain(value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def period_label(value: Any, period: Period) -> str | None:
    """A ledger's period (date, timestamp or text) as ``YYYY-MM-DD`` or ``YYYY-MM``."""
    if value is None:
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value).strip()
    match = _PERIOD_RE.match(text)
    if match is None or (period == "day" and match.group(2) is None):
        example = "2024-05-01" if period == "day" else "2024-05"
        raise LedgerError(f"the ledger period {value!r} is not a {period}: write it like {example}")
    return match.group(1) + (match.group(2) or "") if period == "day" else match.group(1)


@dataclass(frozen=True)
class RecoveredTable:
    """The rebuilt table: ``connection`` is a psycopg connection or a conninfo string."""

    connection: Any
    table: TableName | str

    @property
    def name(self) -> TableName:
        return self.table if isinstance(self.table, TableName) else TableName.parse(self.table)

    def describe(self) -> str:
        return f"table {self.name}"


@dataclass(frozen=True)
class RecoveredAudit:
    """An audit file or partitioned audit directory, reconciled without any database."""

    path: str | Path

    def describe(self) -> str:
        return f"audit {self.path}"


@contextlib.contextmanager
def connection(connection: Any, role: str) -> Iterator[Any]:
    """Use a given connection as is, or open (and close) one from a conninfo string."""
    if connection is None or isinstance(connection, str):
        with connect(connection, role=role) as conn:
            yield conn
    else:
        yield connection


@contextlib.contextmanager
def stream_rows(
    conn: Connection, query: sql.Composed | sql.SQL | str, what: str, hint: str
) -> Iterator[Any]:
    """Rows of ``query`` through a server-side cursor, with ``TimeZone=UTC`` for periods.

    The rows come in pages of :data:`FETCH_ROWS`, so a query with millions of result rows
    never sits in client memory whole.
    """
    try:
        with conn.transaction():
            conn.execute("SET LOCAL TimeZone = 'UTC'")
            with conn.cursor(name="walrecover_reconcile") as cur:
                cur.itersize = FETCH_ROWS
                cur.execute(query)
                yield cur
    except psycopg.Error as exc:
        raise LedgerError(f"{what}: {exc.diag.message_primary or exc}; {hint}") from None


def table_totals(
    conn: Connection,
    table: TableName,
    key: str | Sequence[str],
    amount: str,
    *,
    period: Period | None = None,
    time_column: str | None = None,
) -> dict[Key, tuple[Decimal, int]]:
    """``sum(amount)`` and the row count per key (and period) of a table, from PostgreSQL.

    The sums are computed by the server (``GROUP BY``) and read as text, so they are exact
    whatever the scale; only one row per key comes back.
    """
    keys = key_names(key)
    _check_amount_type(conn, table, amount)
    selected = [sql.SQL("{}::text").format(sql.Identifier(k)) for k in keys]
    if period is not None:
        if time_column is None:
            raise LedgerError("--period needs --time-column: the column that dates each row")
        selected.append(
            sql.SQL("to_char({}, {})").format(
                sql.Identifier(time_column), sql.Literal(PERIOD_FORMAT[period])
            )
        )
    groups = sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(selected)))
    query = sql.SQL(
        "SELECT {cols}, sum({amount})::text, count(*) FROM {table} GROUP BY {g}"
    ).format(
        cols=sql.SQL(", ").join(selected),
        amount=sql.Identifier(amount),
        table=sql.Identifier(table.schema, table.name),
        g=groups,
    )
    totals: dict[Key, tuple[Decimal, int]] = {}
    what = f"cannot sum {amount!r} per {', '.join(map(repr, keys))} in {table}"
    with stream_rows(conn, query, what, "check --key, --amount and --time-column") as cur:
        for row in cur:
            totals[tuple(row[:-2])] = (
                Decimal(row[-2]) if row[-2] is not None else Decimal(0),
                row[-1],
            )
    return totals


def _check_amount_type(conn: Connection, table: TableName, amount: str) -> None:
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped",
                (sql.Identifier(table.schema, table.name).as_string(conn), amount),
            ).fetchone()
    except psycopg.Error as exc:
        raise LedgerError(f"cannot read the columns of {table}: {exc}") from None
    if row is not None and row[0] in _FLOAT_TYPES:
        raise LedgerError(
            f"the amount column {amount!r} of {table} is {row[0]}, which cannot be summed "
            "exactly: reconcile a numeric column"
        )


def audit_totals(
    path: str | Path,
    key: str | Sequence[str],
    amount: str,
    *,
    period: Period | None = None,
    time_column: str | None = None,
) -> dict[Key, tuple[Decimal, int]]:
    """``sum(amount)`` and the row count per key (and period) over an audit's live rows.

    A live row is one whose after-image is in the rebuilt table: outcome ``applied`` and op
    insert or update. Arrow filters and groups each batch (decimals summed as ``decimal256``,
    so no batch sum can overflow); only the per-key partial sums are merged in Python.
    """
    keys = key_names(key)
    dataset = audit_dataset(path)
    schema = dataset.schema
    key_fields = [_audit_field(schema, k, path) for k in keys]
    amount_field = _audit_field(schema, amount, path)
    amount_type = schema.field(amount_field).type
    if pa.types.is_floating(amount_type):
        raise LedgerError(
            f"the amount column {amount!r} is a float in the audit, which cannot be summed "
            "exactly: reconcile a numeric column"
        )
    time_field = None
    if period is not None:
        if time_column is None:
            raise LedgerError("--period needs --time-column: the column that dates each row")
        time_field = _audit_field(schema, time_column, path)
        if not pa.types.is_temporal(schema.field(time_field).type):
            raise LedgerError(
                f"the time column {time_column!r} is not a date or timestamp in the audit"
            )
    applied = ds.field("outcome") == Outcome.APPLIED.value
    live = applied & ds.field("op").isin(list(outcomes.LIVE_OPS))
    columns = [*key_fields, amount_field] + ([time_field] if time_field else [])
    totals: dict[Key, tuple[Decimal, int]] = {}
    scanner = dataset.scanner(columns=columns, filter=live, batch_size=1 << 17)
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        parts: dict[str, pa.Array] = {
            f"k{i}": pc.cast(batch.column(name), pa.string()) for i, name in enumerate(key_fields)
        }
        group_names = list(parts)
        if time_field is not None and period is not None:
            stamps = batch.column(time_field)
            if pa.types.is_date(stamps.type):
                stamps = pc.cast(stamps, pa.timestamp("s"))
            parts["period"] = pc.strftime(stamps, format=_PERIOD_STRFTIME[period])
            group_names.append("period")
        values = batch.column(amount_field)
        for group, total, count in _group_sums(parts, group_names, values):
            old_total, old_count = totals.get(group, (Decimal(0), 0))
            totals[group] = (old_total + total, old_count + count)
    return totals


def _group_sums(
    parts: dict[str, pa.Array], group_names: list[str], values: pa.Array
) -> Iterator[tuple[Key, Decimal, int]]:
    """Per-group exact sums and counts of one batch."""
    if pa.types.is_decimal(values.type):
        values = pc.cast(values, pa.decimal256(76, values.type.scale))
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        # Unconstrained numeric is kept as exact text: sum it as Decimals.
        sums: dict[Key, tuple[Decimal, int]] = {}
        columns = [parts[name].to_pylist() for name in group_names]
        for group, value in zip(zip(*columns, strict=True), values.to_pylist(), strict=True):
            total, count = sums.get(group, (Decimal(0), 0))
            sums[group] = (total + (Decimal(value) if value is not None else 0), count + 1)
        for group, (total, count) in sums.items():
            yield group, total, count
        return
    table = pa.table({**parts, "amount": values})
    grouped = table.group_by(group_names, use_threads=False).aggregate(
        [("amount", "sum"), ("amount", "count", pc.CountOptions(mode="all"))]
    )
    for row in grouped.to_pylist():
        total = row["amount_sum"]
        yield (
            tuple(row[name] for name in group_names),
            Decimal(total) if total is not None else Decimal(0),
            int(row["amount_count"]),
        )


def _audit_field(schema: pa.Schema, column: str, path: str | Path) -> str:
    name = typed_column(schema, column, "new")
    if name is None:
        raise LedgerError(f"the audit {path} has no column {column!r}: check --key and --amount")
    return name


def key_names(key: str | Sequence[str]) -> tuple[str, ...]:
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys:
        raise LedgerError("give at least one --key column")
    return keys


def show_key(key: Key) -> str:
    return ", ".join("NULL" if v is None else v for v in key)
