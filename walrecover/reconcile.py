"""Reconcile recovered totals against the ledger, exactly, with memory bounded by the keys.

The recovered side is either the rebuilt table, whose per-key sums PostgreSQL computes
(``GROUP BY``, streamed back through a server-side cursor), or an audit file or dataset, whose
live rows (outcome ``applied``, op insert or update: see :mod:`walrecover.outcomes`) Arrow sums
batch by batch. Either way only per-key totals reach Python, never the rows, so a 10-million-row
table reconciles in the memory of its keys. The ledger is a SQL query on any database, a CSV or
Parquet file, or a pandas DataFrame, returning ``key..., [period], total``; opening balances come
the same ways (``key..., total``) and are added to the recovered side.

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

import contextlib
import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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

from . import outcomes
from .audit import audit_dataset
from .db import connect
from .errors import LedgerError
from .model import TableName
from .pgarrow import typed_column

_FLOAT_OIDS = {700, 701}
_FLOAT_TYPES = ("real", "double precision")

#: Status of one key in a reconciliation.
MATCHED = "matched"
MISMATCHED = "mismatched"
MISSING_IN_RECOVERED = "missing_in_recovered"
MISSING_IN_LEDGER = "missing_in_ledger"
STATUSES = (MATCHED, MISMATCHED, MISSING_IN_RECOVERED, MISSING_IN_LEDGER)
_MONEY = ("recovered", "opening", "ledger", "delta")

Period = Literal["day", "month"]
#: A key as text values, one per key column, with the period label last when there is one.
Key = tuple[str | None, ...]

#: Rows fetched per round trip from a server-side cursor.
FETCH_ROWS = 10_000
_PERIOD_FORMAT = {"day": "YYYY-MM-DD", "month": "YYYY-MM"}
_PERIOD_STRFTIME = {"day": "%Y-%m-%d", "month": "%Y-%m"}
_PERIOD_RE = re.compile(r"^(\d{4}-\d{2})(-\d{2})?")


def plain(value: Decimal) -> str:
    """A Decimal as positional text (``0.00000002``, never ``2E-8``), every digit kept."""
    return format(value, "f")


def _decimal(value: Any, what: str) -> Decimal:
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
        raise LedgerError(f"{what} {value!r} is not a number: fix the ledger") from None
    if not result.is_finite():
        raise LedgerError(f"{what} {value!r} is not a finite number: fix the ledger")
    return result


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        raise LedgerError(f"a ledger key is a float ({value!r}): give keys as integers or text")
    if isinstance(value, Decimal):
        return plain(value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _period_label(value: Any, period: Period) -> str | None:
    """A ledger's period (date, timestamp or text) as ``YYYY-MM-DD`` or ``YYYY-MM``."""
    if value is None:
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value).strip()
    match = _PERIOD_RE.match(text)
    if match is None or (period == "day" and match.group(2) is None):
        example = "2024-05-01" if period == "day" else "2024-05"
        raise LedgerError(f"the ledger period {value!r} is not a {period}: write it like {example}")
    return match.group(1) + (match.group(2) or "") if period == "day" else match.group(1)


def _sort_key(key: Key) -> tuple[tuple[int, int, str], ...]:
    """Keys in a person's order: numbers numerically, then text, NULL last."""
    parts = []
    for value in key:
        if value is None:
            parts.append((2, 0, ""))
        elif value.lstrip("-").isdigit() and len(value) < 19:
            parts.append((0, int(value), ""))
        else:
            parts.append((1, 0, value))
    return tuple(parts)


# -- where the totals come from ------------------------------------------------------------------


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


def _ledger_source(source: LedgerSource) -> LedgerQuery | LedgerFile | pd.DataFrame:
    if isinstance(source, str | Path):
        return LedgerFile(source)
    return source


@contextlib.contextmanager
def _connection(connection: Any, role: str) -> Iterator[Any]:
    """Use a given connection as is, or open (and close) one from a conninfo string."""
    if connection is None or isinstance(connection, str):
        with connect(connection, role=role) as conn:
            yield conn
    else:
        yield connection


@contextlib.contextmanager
def _stream(conn: Any, query: sql.Composable | str, what: str, hint: str) -> Iterator[Any]:
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
    conn: Any,
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
    keys = _key_names(key)
    _check_amount_type(conn, table, amount)
    selected = [sql.SQL("{}::text").format(sql.Identifier(k)) for k in keys]
    if period is not None:
        if time_column is None:
            raise LedgerError("--period needs --time-column: the column that dates each row")
        selected.append(
            sql.SQL("to_char({}, {})").format(
                sql.Identifier(time_column), sql.Literal(_PERIOD_FORMAT[period])
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


def _check_amount_type(conn: Any, table: TableName, amount: str) -> None:
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
    keys = _key_names(key)
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
    live = (ds.field("outcome") == outcomes.APPLIED) & ds.field("op").isin(list(outcomes.LIVE_OPS))
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


def _key_names(key: str | Sequence[str]) -> tuple[str, ...]:
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
    source = _ledger_source(source)
    totals: dict[Key, Decimal] = {}

    def add(rows: Iterable[Sequence[Any]]) -> None:
        width = len(names) + (period is not None)
        for row in rows:
            group: Key = tuple(_key_text(v) for v in row[: len(names)])
            if period is not None:
                group = (*group, _period_label(row[len(names)], period))
            amount = _decimal(row[width], f"the {what} total for {_show(group)}")
            totals[group] = totals.get(group, Decimal(0)) + amount

    if isinstance(source, LedgerQuery):
        with _connection(source.connection or default_connection, "ledger") as conn:
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


def _show(key: Key) -> str:
    return ", ".join("NULL" if v is None else v for v in key)


def _ledger_query(
    conn: Any,
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
                header = next(csv.reader(fh), [])
            columns = _pick_columns(header, names, period, what)
            reader = pacsv.open_csv(
                path,
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


# -- the result ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """Why one key differs: its audit rows and what replay did with each."""

    key: Key
    #: The key's audit rows in seq order (at most ``explain_rows``): seq, commit time, LSN,
    #: xid, op, outcome, the row's identity, amount (after, before), and ``counted``: whether
    #: that row version is in the recovered total.
    rows: pd.DataFrame
    #: Per outcome and op (one group for the counted rows): how many rows and the sum of
    #: their amounts, over all of them.
    by_outcome: pd.DataFrame
    #: True if the key had more rows than ``rows`` shows.
    truncated: bool

    def text(self) -> str:
        """One line: ``3 counted (30.00); 1 superseded insert (4.00); 1 after_stop insert
        (5.00); 1 applied delete``: rows per outcome and op, with the sum of their amounts."""
        if self.by_outcome.empty:
            return "no audit rows for this key"
        parts = []
        for row in self.by_outcome.to_dict("records"):
            label = "counted" if row["counted"] else f"{row['outcome']} {row['op']}"
            amount = Decimal(row["amount"])
            shown = "" if row["op"] in ("delete", "truncate") else f" ({plain(amount)})"
            parts.append(f"{row['rows']} {label}{shown}")
        return "; ".join(parts)

    def to_dict(self, limit: int = 50) -> dict[str, Any]:
        return {
            "key": list(self.key),
            "summary": self.text(),
            "rows": [_jsonable(r) for r in self.rows.head(limit).to_dict("records")],
            "truncated": self.truncated or len(self.rows) > limit,
        }


def _jsonable(row: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        shown: Any = value
        if isinstance(value, Decimal):
            shown = plain(value)
        elif value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            shown = None
        elif hasattr(value, "isoformat"):
            shown = value.isoformat()
        out[str(name)] = shown
    return out


@dataclass(frozen=True)
class Reconciliation:
    """Per-key totals of the recovered side compared with the ledger.

    ``comparison`` has one row per key: ``key`` (a label), the key columns, ``period`` when
    there is one, ``rows`` (recovered rows), ``recovered``, ``opening`` (when given),
    ``ledger``, ``delta`` (recovered + opening - ledger) and ``status``.
    """

    #: True when every key matches (within the tolerance).
    matched: bool
    #: Keys compared (the union of both sides).
    keys: int
    matched_keys: int
    mismatched: int
    missing_in_recovered: int
    missing_in_ledger: int
    #: Sum of every key's delta.
    total_difference: Decimal
    tolerance: Decimal
    key_columns: tuple[str, ...]
    period: str | None
    recovered_total: Decimal
    ledger_total: Decimal
    opening_total: Decimal | None
    comparison: pd.DataFrame
    explanations: Mapping[Key, Explanation] = field(default_factory=dict)
    source: str = ""

    @property
    def differences(self) -> pd.DataFrame:
        """The keys that do not match."""
        return self.frame(MISMATCHED, MISSING_IN_RECOVERED, MISSING_IN_LEDGER)

    def frame(self, *statuses: str) -> pd.DataFrame:
        """The rows of ``comparison`` with one of ``statuses``."""
        if not statuses:
            return self.comparison
        mask = self.comparison["status"].isin(list(statuses))
        return self.comparison[mask].reset_index(drop=True)

    @property
    def matched_frame(self) -> pd.DataFrame:
        return self.frame(MATCHED)

    @property
    def mismatched_frame(self) -> pd.DataFrame:
        return self.frame(MISMATCHED)

    @property
    def missing_in_recovered_frame(self) -> pd.DataFrame:
        return self.frame(MISSING_IN_RECOVERED)

    @property
    def missing_in_ledger_frame(self) -> pd.DataFrame:
        return self.frame(MISSING_IN_LEDGER)

    def explain(self, *key: Any) -> Explanation:
        """The explanation of one differing key: ``rec.explain(7)``, ``rec.explain(1, "EUR")``."""
        wanted = tuple(_key_text(k) for k in key)
        try:
            return self.explanations[wanted]
        except KeyError:
            raise KeyError(
                f"no explanation for key {wanted}: only differing keys are explained, and only "
                "when an audit was given"
            ) from None

    def summary(self) -> dict[str, Any]:
        """The counts and totals, JSON-ready (Decimals as strings, so nothing is rounded)."""
        return {
            "matched": self.matched,
            "source": self.source,
            "key_columns": list(self.key_columns),
            "period": self.period,
            "keys": self.keys,
            "matched_keys": self.matched_keys,
            "mismatched": self.mismatched,
            "missing_in_recovered": self.missing_in_recovered,
            "missing_in_ledger": self.missing_in_ledger,
            "tolerance": plain(self.tolerance),
            "recovered_total": plain(self.recovered_total),
            "opening_total": None if self.opening_total is None else plain(self.opening_total),
            "ledger_total": plain(self.ledger_total),
            "total_difference": plain(self.total_difference),
        }

    def to_dict(self, limit: int = 1000) -> dict[str, Any]:
        """The summary, the first ``limit`` differences and the explanations, JSON-ready."""
        differences = self.differences
        return {
            **self.summary(),
            "differences": [_jsonable(r) for r in differences.head(limit).to_dict("records")],
            "differences_truncated": len(differences) > limit,
            "explanations": [e.to_dict() for e in self.explanations.values()],
        }

    def report(self, limit: int = 20) -> str:
        """The result for a person: counts, totals, the first differences and why."""
        what = ", ".join(self.key_columns) + (f" per {self.period}" if self.period else "")
        lines = [f"Reconciled the {self.source} against the ledger, per {what}."]
        if self.matched:
            tolerance = f" within {plain(self.tolerance)}" if self.tolerance else " exactly"
            lines.append(f"  all {self.keys} keys match{tolerance}.")
        else:
            lines.append(
                f"  {self.keys} keys: {self.matched_keys} match, {self.mismatched} differ, "
                f"{self.missing_in_recovered} missing in the recovered side, "
                f"{self.missing_in_ledger} missing in the ledger"
                + (f" (tolerance {plain(self.tolerance)})" if self.tolerance else "")
                + "."
            )
        opening = (
            f" + opening {plain(self.opening_total)}" if self.opening_total is not None else ""
        )
        lines.append(
            f"  recovered {plain(self.recovered_total)}{opening}, ledger "
            f"{plain(self.ledger_total)}; total difference {plain(self.total_difference)}."
        )
        differences = self.differences
        if len(differences):
            header = ["key", *(["period"] if self.period else []), "rows", "recovered"]
            header += [*(["opening"] if self.opening_total is not None else []), "ledger"]
            header += ["delta", "status"]
            table = [header]
            for row in differences.head(limit).to_dict("records"):
                table.append(
                    [plain(Decimal(row[c])) if c in _MONEY else str(row[c]) for c in header]
                )
            widths = [max(len(r[i]) for r in table) for i in range(len(header))]
            for row_text in table:
                lines.append(
                    "    "
                    + "  ".join(
                        cell.rjust(width)
                        if i and header[i] in (*_MONEY, "rows")
                        else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(row_text, widths, strict=True))
                    ).rstrip()
                )
            if len(differences) > limit:
                lines.append(f"    ... {len(differences) - limit} more (--out writes them all)")
        for explanation in list(self.explanations.values())[:limit]:
            lines.append(f"  why {_show(explanation.key)}: {explanation.text()}")
            # The rows that explain a difference first: those not counted, then the counted.
            rows = explanation.rows
            ordered = pd.concat([rows[~rows["counted"]], rows[rows["counted"]]])
            for row in ordered.head(8).to_dict("records"):
                amount = row.get("amount")
                shown = "-" if amount is None or amount is pd.NA else plain(Decimal(amount))
                flag = "counted" if row["counted"] else "not counted"
                lines.append(
                    f"      seq {row['seq']} {row['op']} xid {row['xid']} at {row['commit_lsn']}"
                    f": {shown}, {row['outcome']} ({flag})"
                )
            if len(explanation.rows) > 8 or explanation.truncated:
                lines.append("      ... (--json lists more rows)")
        return "\n".join(lines)

    def write_differences(self, path: str | Path) -> Path:
        """Write the differences to ``path``: ``.csv`` (exact decimal text) or ``.parquet``."""
        path = Path(path)
        differences = self.differences
        suffix = path.suffix.lower()
        try:
            if suffix == ".csv":
                frame = differences.copy()
                for name in ("recovered", "opening", "ledger", "delta"):
                    if name in frame:
                        frame[name] = [plain(Decimal(v)) for v in frame[name]]
                frame.to_csv(path, index=False)
            elif suffix in (".parquet", ".pq"):
                pq.write_table(pa.Table.from_pandas(differences, preserve_index=False), path)
            else:
                raise LedgerError(f"--out {path}: give a .csv or .parquet path")
        except OSError as exc:
            raise LedgerError(f"cannot write {path}: {exc}") from None
        return path


def _decimal_column(values: Sequence[Decimal]) -> pd.Series:
    """Decimals as an Arrow-backed decimal column, exact (object dtype if none fits)."""
    if not values:
        return pd.Series([], dtype=pd.ArrowDtype(pa.decimal128(38, 0)))
    scale = max(max(-int(v.as_tuple().exponent), 0) for v in values)
    integer = max(max(v.adjusted() + 1, 1) for v in values)
    for kind, limit in ((pa.decimal128, 38), (pa.decimal256, 76)):
        if integer + scale <= limit:
            return pd.Series(
                pa.array(values, kind(limit, scale)), dtype=pd.ArrowDtype(kind(limit, scale))
            )
    return pd.Series(list(values), dtype=object)


def compare_totals(
    recovered: Mapping[Key, tuple[Decimal, int]] | Mapping[Any, Decimal],
    ledger: Mapping[Any, Decimal],
    *,
    opening: Mapping[Any, Decimal] | None = None,
    tolerance: Decimal | int | str = 0,
    key_columns: Sequence[str] = ("key",),
    period: str | None = None,
    source: str = "",
) -> Reconciliation:
    """Compare per-key totals; a key missing on one side counts as 0 there.

    ``recovered`` maps a key to ``(total, rows)`` (or just a total); keys are tuples of text
    (a bare value is taken as a one-column key). The delta is ``recovered + opening - ledger``.
    """
    tol = _decimal(tolerance, "the tolerance")
    if tol < 0:
        raise LedgerError("the tolerance must not be negative")
    rec = {_as_key(k): (v if isinstance(v, tuple) else (v, 0)) for k, v in recovered.items()}
    led = {_as_key(k): v for k, v in ledger.items()}
    opn = {_as_key(k): v for k, v in (opening or {}).items()}
    names = tuple(key_columns)
    everything = sorted(set(rec) | set(led) | set(opn), key=_sort_key)
    columns: dict[str, list[Any]] = {
        "key": [],
        **{name: [] for name in names if name != "key"},
        **({"period": []} if period else {}),
        "rows": [],
        "recovered": [],
        **({"opening": []} if opening is not None else {}),
        "ledger": [],
        "delta": [],
        "status": [],
    }
    counts = dict.fromkeys(STATUSES, 0)
    total = Decimal(0)
    for key in everything:
        ours, rows = rec.get(key, (Decimal(0), 0))
        start = opn.get(key, Decimal(0))
        theirs = led.get(key, Decimal(0))
        delta = ours + start - theirs
        total += delta
        if abs(delta) <= tol:
            status = MATCHED
        elif key not in rec and key not in opn:
            status = MISSING_IN_RECOVERED
        elif key not in led:
            status = MISSING_IN_LEDGER
        else:
            status = MISMATCHED
        counts[status] += 1
        key_part = key[: len(names)]
        columns["key"].append(
            key_part[0] if len(key_part) == 1 else "(" + ", ".join(map(str, key_part)) + ")"
        )
        for name, value in zip(names, key_part, strict=False):
            if name != "key":
                columns[name].append(value)
        if period:
            columns["period"].append(key[-1])
        columns["rows"].append(rows)
        columns["recovered"].append(ours)
        if opening is not None:
            columns["opening"].append(start)
        columns["ledger"].append(theirs)
        columns["delta"].append(delta)
        columns["status"].append(status)
    frame = pd.DataFrame(
        {
            name: (
                _decimal_column(values)
                if name in ("recovered", "opening", "ledger", "delta")
                else pd.Series(values, dtype=pd.ArrowDtype(pa.int64()))
                if name == "rows"
                else pd.Series(values, dtype=pd.ArrowDtype(pa.string()))
            )
            for name, values in columns.items()
        }
    )
    return Reconciliation(
        matched=counts[MATCHED] == len(everything),
        keys=len(everything),
        matched_keys=counts[MATCHED],
        mismatched=counts[MISMATCHED],
        missing_in_recovered=counts[MISSING_IN_RECOVERED],
        missing_in_ledger=counts[MISSING_IN_LEDGER],
        total_difference=total,
        tolerance=tol,
        key_columns=names,
        period=period,
        recovered_total=sum((v[0] for v in rec.values()), Decimal(0)),
        ledger_total=sum(led.values(), Decimal(0)),
        opening_total=sum(opn.values(), Decimal(0)) if opening is not None else None,
        comparison=frame,
        source=source,
    )


def _as_key(key: Any) -> Key:
    if isinstance(key, tuple):
        return tuple(_key_text(v) for v in key)
    return (_key_text(key),)


# -- explanations --------------------------------------------------------------------------------


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
    before-image carries one of the keys, then every row of those keys or identities, so an
    update or delete whose images do not carry the key column still shows. A row *counts* for
    a key when it is live and its after-image carries that key (and period).
    """
    if not keys:
        return {}
    dataset = audit_dataset(path)
    schema = dataset.schema
    names = tuple(key_columns)
    n = len(names)
    new_fields = [typed_column(schema, k, "new") for k in names]
    old_fields = [typed_column(schema, k, "old") for k in names]
    amount_new = typed_column(schema, amount, "new")
    amount_old = typed_column(schema, amount, "old")
    time_new = typed_column(schema, time_column, "new") if time_column else None
    if any(f is None for f in new_fields) or amount_new is None:
        return {}
    first_values = sorted({k[0] for k in keys if k[0] is not None})
    match = ds.field(new_fields[0]).cast(pa.string()).isin(first_values)
    if old_fields[0] is not None:
        match = match | ds.field(old_fields[0]).cast(pa.string()).isin(first_values)
    identities = dataset.to_table(columns=["key"], filter=match).column("key").drop_null()
    if len(identities):
        match = match | ds.field("key").isin(sorted(set(identities.to_pylist())))
    base = ["seq", "commit_time", "commit_lsn", "xid", "op", "outcome", "key"]
    extra = [f for f in (*new_fields, *old_fields, amount_new, amount_old, time_new) if f]
    wanted = list(dict.fromkeys([*base, *extra]))
    table = dataset.to_table(columns=wanted, filter=match).sort_by("seq")
    records = table.to_pylist()

    def image_key(record: Mapping[str, Any], fields: Sequence[str | None]) -> Key | None:
        if any(f is None for f in fields):
            return None
        return tuple(_cell_text(record[f]) for f in fields if f)

    wanted_keys = set(keys)
    after_keys: list[Key | None] = []
    owners: list[set[Key]] = []
    by_identity: dict[str, set[Key]] = {}
    for record in records:
        after = image_key(record, new_fields) if record["op"] in outcomes.LIVE_OPS else None
        if after is not None and period is not None:
            stamp = record[time_new] if time_new else None
            after = (*after, None if stamp is None else _period_label(stamp, period))
        before = image_key(record, old_fields) if record["op"] in ("update", "delete") else None
        if before is not None and all(v is None for v in before):
            before = None  # the before-image does not carry the key columns
        found = {
            k
            for k in wanted_keys
            if (after is not None and k[:n] == after[:n])
            or (before is not None and k[:n] == before)
        }
        after_keys.append(after)
        owners.append(found)
        if record["key"] is not None:
            by_identity.setdefault(record["key"], set()).update(found)
    members: dict[Key, list[int]] = {k: [] for k in keys}
    counted: dict[Key, list[bool]] = {k: [] for k in keys}
    for i, record in enumerate(records):
        found = owners[i] | by_identity.get(record["key"], set())
        live = outcomes.is_live(record["op"], record["outcome"])
        for key in found:
            members[key].append(i)
            counted[key].append(live and after_keys[i] == key)
    rename = {amount_new: "amount", **({amount_old: "old_amount"} if amount_old else {})}
    result: dict[Key, Explanation] = {}
    for key in keys:
        rows = table.take(pa.array(members[key], pa.int64()))
        rows = rows.rename_columns([rename.get(c, c) for c in rows.column_names])
        rows = rows.append_column("counted", pa.array(counted[key], pa.bool_()))
        rows = rows.append_column(
            "meaning",
            pa.array([outcomes.describe(o) for o in rows.column("outcome").to_pylist()]),
        )
        result[key] = Explanation(
            key=key,
            rows=rows.slice(0, explain_rows).to_pandas(types_mapper=pd.ArrowDtype),
            by_outcome=_by_outcome(
                rows.column("outcome").to_pylist(),
                rows.column("op").to_pylist(),
                counted[key],
                rows.column("amount").to_pylist(),
            ),
            truncated=rows.num_rows > explain_rows,
        )
    return result


def _cell_text(value: Any) -> str | None:
    return None if value is None else _key_text(value)


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
    order = {o: i for i, o in enumerate(outcomes.ALL)}
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
    keys = _key_names(key)
    if period is not None and period not in _PERIOD_FORMAT:
        raise LedgerError(f"--period {period!r}: give day or month")
    if period is not None and opening is not None:
        raise LedgerError(
            "opening balances apply to totals per key, not per period: drop --period or the "
            "opening balances"
        )
    default_conn: Any = None
    if isinstance(recovered, RecoveredAudit):
        totals = audit_totals(recovered.path, keys, amount, period=period, time_column=time_column)
        audit = audit if audit is not None else recovered.path
        default_conn = None
        ledger_totals_ = _ledger_or_error(ledger, keys, period, None)
        opening_totals = (
            _ledger_or_error(opening, keys, None, None, "opening") if opening is not None else None
        )
    else:
        with _connection(recovered.connection, "target") as conn:
            totals = table_totals(
                conn, recovered.name, keys, amount, period=period, time_column=time_column
            )
            default_conn = conn
            ledger_totals_ = _ledger_or_error(ledger, keys, period, default_conn)
            opening_totals = (
                _ledger_or_error(opening, keys, None, default_conn, "opening")
                if opening is not None
                else None
            )
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


def _ledger_or_error(
    source: LedgerSource | None,
    keys: Sequence[str],
    period: Period | None,
    default_connection: Any,
    what: str = "ledger",
) -> dict[Key, Decimal]:
    assert source is not None
    source = _ledger_source(source)
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
