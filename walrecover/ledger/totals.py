"""Per-key totals, exactly: of the rebuilt table, of an audit, or of a ledger.

Only per-key totals ever reach Python, never the rows: PostgreSQL sums a table (``GROUP BY``,
streamed back through a server-side cursor), Arrow sums an audit batch by batch, and a ledger is
read from a SQL query, a CSV or Parquet file, or a pandas DataFrame. Sums are read as text and
kept as :class:`~decimal.Decimal`; float totals are refused. Keys are text (PostgreSQL's
``::text`` of the key columns), with the period label last when totals are per day or month.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from psycopg import sql

from ..audit import outcomes
from ..audit.pgarrow import typed_column
from ..audit.reader import audit_dataset
from ..db import Connection, connect
from ..errors import LedgerError
from ..stream.model import Outcome, TableName

_FLOAT_OIDS = {700, 701}
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


@dataclass(frozen=True)
class LedgerQuery:
    """A query returning ``key..., [period], total``; ``connection`` (a psycopg connection or a
    conninfo) defaults to the recovered table's database."""

    query: str
    connection: Any = None

    def describe(self) -> str:
        return "query"


@dataclass(frozen=True)
class LedgerFile:
    """A CSV (read as text: nothing is parsed as a float) or Parquet file of
    ``key..., [period], total``."""

    path: str | Path

    def describe(self) -> str:
        return f"file {self.path}"


LedgerSource = LedgerQuery | LedgerFile | pd.DataFrame | str | Path


def ledger_source(source: LedgerSource) -> LedgerQuery | LedgerFile | pd.DataFrame:
    if isinstance(source, str | Path):
        return LedgerFile(source)
    return source


@contextlib.contextmanager
def connection(connection: Any, role: str) -> Iterator[Any]:
    """Use a given connection as is, or open (and close) one from a conninfo string."""
    if connection is None or isinstance(connection, str):
        with connect(connection, role=role) as conn:
            yield conn
    else:
        yield connection


@contextlib.contextmanager
def _stream(
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
    with _stream(conn, query, what, "check --key, --amount and --time-column") as cur:
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


def ledger_totals(
    source: LedgerSource,
    keys: int | Sequence[str],
    *,
    period: Period | None = None,
    default_connection: Any = None,
    what: str = "ledger",
) -> dict[Key, Decimal]:
    """A ledger's (or opening balances') totals per key (and period), read exactly.

    A query or file has one column per key, then the period if ``period`` is set, then the
    total; several rows of one key add up. A file or DataFrame with other columns is read by
    name instead: the key columns' names, ``period``, and ``total``.
    """
    names = tuple(f"key{i + 1}" for i in range(keys)) if isinstance(keys, int) else tuple(keys)
    source = ledger_source(source)
    totals: dict[Key, Decimal] = {}

    def add(rows: Iterable[Sequence[Any]]) -> None:
        width = len(names) + (period is not None)
        for row in rows:
            group: Key = tuple(key_text(v) for v in row[: len(names)])
            if period is not None:
                group = (*group, period_label(row[len(names)], period))
            amount = to_decimal(row[width], f"the {what} total for {show_key(group)}")
            totals[group] = totals.get(group, Decimal(0)) + amount

    if isinstance(source, LedgerQuery):
        with connection(source.connection or default_connection, "ledger") as conn:
            _ledger_query(conn, source.query, names, period, what, add)
    elif isinstance(source, pd.DataFrame):
        columns = _pick_columns(list(map(str, source.columns)), names, period, what)
        for name in columns[-1:]:
            if pd.api.types.is_float_dtype(source[name].dtype):
                raise LedgerError(
                    f"the {what} column {name!r} is a float, which cannot be compared exactly: "
                    "give it as Decimal values or text"
                )
        frame = source[columns]
        add(frame.itertuples(index=False, name=None))
    else:
        _ledger_file(Path(source.path), names, period, what, add)
    return totals


def show_key(key: Key) -> str:
    return ", ".join("NULL" if v is None else v for v in key)


def _ledger_query(
    conn: Connection,
    query: str,
    names: Sequence[str],
    period: Period | None,
    what: str,
    add: Callable[[Iterable[Sequence[Any]]], None],
) -> None:
    width = len(names) + (period is not None) + 1
    shape = ", ".join([*names, *(["period"] if period else []), "total"])
    option = "--opening-query" if what == "opening" else "--ledger-query"
    with _stream(conn, query, f"the {what} query failed", f"check {option}") as cur:
        description = cur.description
        if description is None or len(description) != width:
            example = "SELECT id, balance FROM accounts"
            raise LedgerError(
                f"the {what} query must return exactly {width} columns ({shape}): e.g. {example}"
            )
        if description[-1].type_code in _FLOAT_OIDS:
            raise LedgerError(
                f"the {what} query returns its total as a float, which cannot be compared "
                "exactly: cast it to numeric in the query"
            )
        while rows := cur.fetchmany(FETCH_ROWS):
            add(rows)


def _pick_columns(
    available: list[str], names: Sequence[str], period: Period | None, what: str
) -> list[str]:
    """Which columns of a file or frame hold the keys, the period and the total."""
    width = len(names) + (period is not None) + 1
    if len(available) == width:
        return available
    wanted = [*names, *(["period"] if period else [])]
    total = next((c for c in ("total", "amount", "balance") if c in available), None)
    if all(name in available for name in wanted) and total is not None:
        return [*wanted, total]
    shape = ", ".join([*names, *(["period"] if period else []), "total"])
    raise LedgerError(
        f"the {what} has columns {', '.join(available)}: give exactly {width} columns "
        f"({shape}) or name them so"
    )


#: The column separators a ledger CSV may use: comma, semicolon (spreadsheets in locales with a
#: decimal comma), tab.
CSV_DELIMITERS = (",", ";", "\t")


def csv_delimiter(header: str) -> str:
    """The separator of a CSV file, from its header line: the one that splits it into the most
    columns (a comma when none does)."""
    best, most = ",", 1
    for delimiter in CSV_DELIMITERS:
        count = len(next(csv.reader([header], delimiter=delimiter), []))
        if count > most:
            best, most = delimiter, count
    return best


def _ledger_file(
    path: Path,
    names: Sequence[str],
    period: Period | None,
    what: str,
    add: Callable[[Iterable[Sequence[Any]]], None],
) -> None:
    if not path.is_file():
        raise LedgerError(f"the {what} file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                first = fh.readline()
            delimiter = csv_delimiter(first)
            header = next(csv.reader([first], delimiter=delimiter), [])
            if not first.strip():
                raise LedgerError(f"the {what} file {path} is empty: it needs a header line")
            if len(header) < 2:
                raise LedgerError(
                    f"the {what} file {path} has one column ({first.strip()!r}): separate its "
                    "columns with a comma, a semicolon or a tab"
                )
            columns = _pick_columns(header, names, period, what)
            reader = pacsv.open_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(header, pa.string()),
                    include_columns=columns,
                    strings_can_be_null=True,
                ),
            )
            for batch in reader:
                add(zip(*(batch.column(c).to_pylist() for c in columns), strict=True))
        elif suffix in (".parquet", ".pq"):
            parquet = pq.ParquetFile(path, pre_buffer=False)
            columns = _pick_columns(parquet.schema_arrow.names, names, period, what)
            total_type = parquet.schema_arrow.field(columns[-1]).type
            if pa.types.is_floating(total_type):
                raise LedgerError(
                    f"the {what} column {columns[-1]!r} in {path} is a float, which cannot be "
                    "compared exactly: store it as decimal or text"
                )
            for batch in parquet.iter_batches(columns=columns, batch_size=FETCH_ROWS):
                add(zip(*(batch.column(c).to_pylist() for c in columns), strict=True))
        else:
            raise LedgerError(f"the {what} file {path} is neither .csv nor .parquet")
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read the {what} file {path}: {exc}") from None
