"""A ledger's (or opening balances') totals per key, exactly: from a SQL query, a CSV or
Parquet file, or a pandas DataFrame.

A query streams through a server-side cursor and files are read in Arrow batches, so only the
per-key totals stay in memory. Every value is read as text or an exact type and kept as
:class:`~decimal.Decimal`; a float total is refused with what to do.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..db import Connection
from ..errors import LedgerError
from .totals import (
    FETCH_ROWS,
    Key,
    Period,
    connection,
    key_text,
    period_label,
    show_key,
    stream_rows,
    to_decimal,
)

_FLOAT_OIDS = {700, 701}


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
    with stream_rows(conn, query, f"the {what} query failed", f"check {option}") as cur:
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
            _ledger_csv(path, names, period, what, add)
        elif suffix in (".parquet", ".pq"):
            _ledger_parquet(path, names, period, what, add)
        else:
            raise LedgerError(f"the {what} file {path} is neither .csv nor .parquet")
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read the {what} file {path}: {exc}") from None


def _ledger_csv(
    path: Path,
    names: Sequence[str],
    period: Period | None,
    what: str,
    add: Callable[[Iterable[Sequence[Any]]], None],
) -> None:
    """A CSV ledger, every value read as text, in Arrow batches."""
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


def _ledger_parquet(
    path: Path,
    names: Sequence[str],
    period: Period | None,
    what: str,
    add: Callable[[Iterable[Sequence[Any]]], None],
) -> None:
    """A Parquet ledger in batches; a float total is refused."""
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
