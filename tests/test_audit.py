"""The Parquet audit: typed columns for every type, one row per change, outcomes, layouts.

Typed values are checked two ways: a real recovery of a table holding one column per type
(values written by hand here), and every value of every type in the recorded decoder fixtures of
all four plugins, checked against psycopg's own text loaders as an independent oracle.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import struct
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from audit_helpers import (
    LEDGER,
    delete,
    insert,
    ledger_stream,
    stream,
    truncate,
    update,
    write_audit,
)
from every_way import WAY_IDS, WAYS, create_source, recover_way
from helpers import (
    FIXTURES,
    PASSWORD,
    SLOT,
    Database,
    differences,
    drop_with_truth,
    recover_table,
    run_script,
    source_untouched,
    stop_workload,
    stream_commits,
    table_exists,
)
from psycopg.adapt import Transformer
from psycopg.pq import Format

import walrecover
import walrecover.audit.finalise
import walrecover.audit.format
import walrecover.audit.outputs
import walrecover.audit.writer
from walrecover.audit.format import CHAIN_SEED, DATASET_MANIFEST
from walrecover.audit.reader import read_metadata
from walrecover.audit.verify import verify_audit
from walrecover.audit.writer import AuditWriter
from walrecover.drill.cluster import Cluster
from walrecover.errors import AuditError, StopPointError
from walrecover.ledger.reconcile import audit_totals
from walrecover.rebuild.recover import recover
from walrecover.rebuild.replay import AppliedChange
from walrecover.stream.decoders import decode_all, make_decoder
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import (
    Begin,
    Change,
    Column,
    Commit,
    Op,
    Outcome,
    RawMessage,
    Relation,
    StopPoint,
    TableName,
)
from walrecover.stream.pgtext import parse_array, parse_interval

META_COLUMNS = [
    ("seq", pa.int64()),
    ("commit_lsn", pa.string()),
    ("lsn", pa.string()),
    ("xid", pa.int64()),
    ("commit_time", pa.timestamp("us", tz="UTC")),
    ("op", pa.string()),
    ("relation", pa.string()),
    ("key", pa.string()),
    ("outcome", pa.string()),
    ("new_values", pa.string()),
    ("old_values", pa.string()),
]
INTERVAL = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("microseconds", pa.int64())])

#: column, PostgreSQL type, SQL literal, Arrow type, the value read back from the audit.
TYPES: list[tuple[str, str, str, pa.DataType, Any]] = [
    ("id", "integer", "-2147483648", pa.int32(), -2147483648),
    ("big", "bigint", "9223372036854775807", pa.int64(), 9223372036854775807),
    ("small", "smallint", "-7", pa.int16(), -7),
    (
        "amount",
        "numeric(20,8)",
        "12345678.12345678",
        pa.decimal128(20, 8),
        Decimal("12345678.12345678"),
    ),
    ("tiny", "numeric(20,8)", "0.00000001", pa.decimal128(20, 8), Decimal("0.00000001")),
    (
        "widest",
        "numeric(20,8)",
        "123456789012.12345678",
        pa.decimal128(20, 8),
        Decimal("123456789012.12345678"),
    ),
    ("price", "numeric(12,2)", "-0.10", pa.decimal128(12, 2), Decimal("-0.10")),
    (
        "whole",
        "numeric(38,0)",
        "99999999999999999999999999999999999999",
        pa.decimal128(38, 0),
        Decimal("99999999999999999999999999999999999999"),
    ),
    (
        "unconstrained",
        "numeric",
        "3.14159265358979323846264338327950288",
        pa.string(),
        "3.14159265358979323846264338327950288",
    ),
    (
        "huge",
        "numeric(40,10)",
        "123456789012345678901234567890.1234567890",
        pa.string(),
        "123456789012345678901234567890.1234567890",
    ),
    ("r", "real", "3.14159", pa.float32(), struct.unpack("f", struct.pack("f", 3.14159))[0]),
    ("d", "double precision", "0.1", pa.float64(), 0.1),
    (
        "at",
        "timestamptz",
        "'2024-05-01 12:00:00.123456+02'",
        pa.timestamp("us", tz="UTC"),
        datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC),
    ),
    ("forever", "timestamptz", "'infinity'", pa.timestamp("us", tz="UTC"), None),
    (
        "local",
        "timestamp",
        "'2024-02-29 23:59:59.5'",
        pa.timestamp("us"),
        datetime(2024, 2, 29, 23, 59, 59, 500000),
    ),
    ("clock", "time", "'23:59:59.123456'", pa.time64("us"), time(23, 59, 59, 123456)),
    ("clock_tz", "timetz", "'10:00:00+02'", pa.string(), "10:00:00+02"),
    (
        "span",
        "interval",
        "'1 year 2 mons 3 days 04:05:06.5'",
        INTERVAL,
        {"months": 14, "days": 3, "microseconds": 14706500000},
    ),
    (
        "back",
        "interval",
        "'-1 days +02:00:00'",
        INTERVAL,
        {"months": 0, "days": -1, "microseconds": 7200000000},
    ),
    ("note", "text", "'ünïcødé 💸\ttab'", pa.string(), "ünïcødé 💸\ttab"),
    ("code", "varchar(20)", "'v'", pa.string(), "v"),
    ("padded", "char(5)", "'ab'", pa.string(), "ab   "),
    ("flag", "boolean", "true", pa.bool_(), True),
    ("off", "boolean", "false", pa.bool_(), False),
    (
        "meta",
        "jsonb",
        '\'{"fee": 0.25, "k": [1, "x"]}\'',
        pa.string(),
        '{"k": [1, "x"], "fee": 0.25}',
    ),
    ("doc", "json", '\'{"b": 1, "a": 2.50}\'', pa.string(), '{"b": 1, "a": 2.50}'),
    (
        "uid",
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        pa.string(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    ("born", "date", "'2024-02-29'", pa.date32(), date(2024, 2, 29)),
    ("raw", "bytea", "'\\x00ff'", pa.binary(), b"\x00\xff"),
    ("addr", "inet", "'192.168.0.1'", pa.string(), "192.168.0.1"),
    ("ints", "integer[]", "'{1,NULL,3}'", pa.list_(pa.int32()), [1, None, 3]),
    (
        "words",
        "text[]",
        '\'{"a b","q\\"d",NULL,"NULL"}\'',
        pa.list_(pa.string()),
        ["a b", 'q"d', None, "NULL"],
    ),
    (
        "prices",
        "numeric(10,2)[]",
        "'{1.50,-2.25}'",
        pa.list_(pa.decimal128(10, 2)),
        [Decimal("1.50"), Decimal("-2.25")],
    ),
    ("grid", "integer[]", "'{{1,2},{3,4}}'", pa.list_(pa.int32()), None),
    ("missing", "integer", "NULL", pa.int32(), None),
]

TYPES_SLOT = "audit_types_cdc"


def _read(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


@pytest.fixture(scope="module")
def typed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The audit of a table with one column per type in :data:`TYPES`, one row inserted and
    then updated (so the before-image is typed too: the table has REPLICA IDENTITY FULL)."""
    name = "audit_types"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    try:
        columns = ", ".join(f"{c} {t}" for c, t, _, _, _ in TYPES)
        db.execute(f"CREATE TABLE t ({columns}, PRIMARY KEY (id))")
        db.execute("ALTER TABLE t REPLICA IDENTITY FULL")
        db.create_slot(TYPES_SLOT)  # slots are cluster-wide: not the tests' "cdc"
        values = ", ".join(literal for _, _, literal, _, _ in TYPES)
        run_script(db, [f"INSERT INTO t VALUES ({values})", "UPDATE t SET small = 8"])
        drop_with_truth(db)
        path = tmp_path_factory.mktemp("audit") / "types.parquet"
        recover_table(db, slot=TYPES_SLOT, audit_path=path)
        # json has no equality operator, so EXCEPT cannot compare: compare the text instead.
        assert db.execute("SELECT t::text FROM truth t") == db.execute(
            "SELECT t::text FROM t_recovered t"
        )
        yield path
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_schema_is_the_meta_columns_then_both_images_then_the_hashes(typed: Path) -> None:
    schema = pq.read_schema(typed)
    expected = (
        META_COLUMNS
        + [(f"new_{c}", arrow) for c, _, _, arrow, _ in TYPES]
        + [(f"old_{c}", arrow) for c, _, _, arrow, _ in TYPES]
        + [("row_hash", pa.string()), ("chain_hash", pa.string())]
    )
    assert [(f.name, f.type) for f in schema] == expected
    amount = schema.field("new_amount").metadata
    assert amount[b"walrecover.pg_type"] == b"numeric(20,8)"
    assert amount[b"walrecover.column"] == b"amount"


@pytest.mark.parametrize(
    ("column", "pg_type", "arrow_type", "value"),
    [(c, t, a, v) for c, t, _, a, v in TYPES],
    ids=[f"{c}-{t}" for c, t, _, _, _ in TYPES],
)
def test_typed_images(
    typed: Path, column: str, pg_type: str, arrow_type: pa.DataType, value: Any
) -> None:
    table = pq.read_table(typed)
    assert table.schema.field(f"new_{column}").type == arrow_type
    if pg_type.startswith("numeric"):
        assert not pa.types.is_floating(arrow_type)
    insert_row, update_row = table.to_pylist()
    for got in (
        insert_row[f"new_{column}"],
        update_row[f"old_{column}"],  # the full before-image of the update, typed too
        update_row[f"new_{column}"] if column != "small" else value,
    ):
        if pg_type in ("jsonb", "json"):
            assert json.loads(got) == json.loads(value)
        else:
            assert got == value
            assert type(got) is type(value)
    exact = json.loads(insert_row["new_values"])[column]
    if pg_type.startswith("numeric") and not pg_type.endswith("[]") and value is not None:
        assert Decimal(exact) == Decimal(value)  # the exact text, never a JSON number
    if column in ("forever", "grid"):
        assert exact in ("infinity", "{{1,2},{3,4}}")  # no typed form: the text keeps it


def test_read_audit_gives_exact_arrow_backed_dtypes(typed: Path) -> None:
    frame = walrecover.read_audit(typed)

    assert frame["new_amount"].dtype == pd.ArrowDtype(pa.decimal128(20, 8))
    assert frame["new_amount"].iloc[0] == Decimal("12345678.12345678")
    assert frame["commit_time"].dtype == pd.ArrowDtype(pa.timestamp("us", tz="UTC"))
    assert frame["new_at"].iloc[0] == pd.Timestamp("2024-05-01 10:00:00.123456", tz="UTC")
    assert frame["new_span"].dtype == pd.ArrowDtype(pa.month_day_nano_interval())
    span = frame["new_span"].iloc[0]
    assert (span.months, span.days, span.nanoseconds) == (14, 3, 14706500000 * 1000)
    assert list(frame["seq"]) == [0, 1]
    part = walrecover.read_audit(typed, columns=["new_price"])
    assert list(part.columns) == ["new_price"]
    assert part["new_price"].iloc[0] == Decimal("-0.10")


# -- every type in the recorded decoder fixtures --------------------------------------------------


def _rows(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _messages(plugin: str) -> list[RawMessage]:
    if plugin == "pgoutput":
        return [
            RawMessage(bytes.fromhex(r["hex"]), Lsn.parse(r["lsn"]), int(r["xid"]))
            for r in _rows(FIXTURES / "pgoutput" / "v1.jsonl.gz")
        ]
    folder = {"wal2json": "wal2json", "wal2json_v1": "wal2json_v1"}.get(plugin, plugin)
    return [
        RawMessage(r["data"], Lsn.parse(r["lsn"]), int(r["xid"]))
        for r in _rows(FIXTURES / folder / "workload.jsonl")
    ]


DECODERS = {
    "wal2json": lambda: make_decoder("wal2json"),
    "wal2json_v1": lambda: make_decoder("wal2json", {"format-version": "1"}),
    "test_decoding": lambda: make_decoder("test_decoding"),
    "pgoutput": lambda: make_decoder("pgoutput", {"proto_version": "1"}),
}


@cache
def fixture_audits(plugin: str, root: str) -> dict[str, tuple[Relation, list[dict[str, Any]]]]:
    """Each fixture table's changes through an AuditWriter: table -> (relation, audit rows)."""
    groups: dict[tuple[str, tuple[str, ...]], list[AppliedChange]] = {}
    relations: dict[tuple[str, tuple[str, ...]], Relation] = {}
    begin: Begin | None = None
    for event in decode_all(DECODERS[plugin](), _messages(plugin)):
        if isinstance(event, Begin):
            begin = event
        elif isinstance(event, Commit):
            begin = None
        elif isinstance(event, Change) and event.op is not Op.TRUNCATE:
            signature = tuple(f"{c.name}:{c.type_name}" for c in event.relation.columns)
            group = (event.relation.qualified_name, signature)
            if event.relation.complete:
                relations.setdefault(group, event.relation)
            xid = begin.xid if begin else event.xid
            lsn = begin.commit_lsn if begin else None
            when = begin.commit_time if begin else None
            groups.setdefault(group, []).append(
                AppliedChange(event, xid, lsn, None, when, Outcome.APPLIED)
            )
    audits = {}
    for n, (group, applied) in enumerate(sorted(groups.items())):
        if group not in relations:
            continue
        path = Path(root) / f"{plugin}-{n}.parquet"
        writer = AuditWriter(path, {"tool": "test"})
        writer.start(None, resuming=False)
        writer.write(applied)
        writer.commit(Lsn(1))
        writer.close()
        audits[f"{group[0]}#{n}"] = (relations[group], _read(path))
    return audits


def expected_arrow(type_name: str) -> pa.DataType:
    """The mapping the audit promises (the module docstring's table), written out again."""
    if type_name.endswith("[]"):
        element = type_name[:-2]
        return pa.string() if element.startswith("box") else pa.list_(expected_arrow(element))
    compact = type_name.replace(" ", "")
    if compact.startswith("numeric("):
        p, s = (int(x) for x in compact[8:-1].split(","))
        return pa.decimal128(p, s) if 1 <= p <= 38 and 0 <= s <= p else pa.string()
    base = type_name.split("(", maxsplit=1)[0].strip()
    if type_name.startswith(("timestamp", "time(", "time ")):
        base = type_name.replace("(3)", "").replace("(6)", "")
    if base.startswith("interval"):
        return INTERVAL
    return {
        "smallint": pa.int16(),
        "integer": pa.int32(),
        "bigint": pa.int64(),
        "oid": pa.int64(),
        "real": pa.float32(),
        "double precision": pa.float64(),
        "boolean": pa.bool_(),
        "bytea": pa.binary(),
        "date": pa.date32(),
        "time without time zone": pa.time64("us"),
        "timestamp without time zone": pa.timestamp("us"),
        "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    }.get(base, pa.string())


_TX = Transformer()


def oracle(type_name: str, arrow: pa.DataType, text: str) -> Any:
    """What the typed cell must hold for ``text``, by psycopg's loaders (None if no typed form)."""
    if arrow == pa.string():
        return text
    element = type_name[:-2] if type_name.endswith("[]") else type_name
    base = element.split("(")[0].strip()
    if element.startswith(("timestamp", "time")):
        base = element.replace("(3)", "").replace("(6)", "")
    if base.startswith("interval"):
        base = "interval"
    info = psycopg.postgres.types.get(base)
    if info is None:  # an enum or domain array: its elements print like text's
        info = psycopg.postgres.types["text"]
    oid = info.array_oid if type_name.endswith("[]") else info.oid
    try:
        value = psycopg.adapters.get_loader(oid, Format.TEXT)(oid, _TX).load(text.encode())  # type: ignore[misc]
    except psycopg.DataError:
        return None  # infinity, years past 9999: no typed form
    if isinstance(value, list) and any(isinstance(v, list) for v in value):
        return None  # a multi-dimensional array
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    if isinstance(value, float) and arrow == pa.float32():
        return struct.unpack("f", struct.pack("f", value))[0]
    if isinstance(value, timedelta):  # psycopg counts a year as 365 days, a month as 30
        return value
    return value


def _same(got: Any, want: Any, arrow: pa.DataType) -> bool:
    if arrow == INTERVAL and got is not None:
        years, months = divmod(got["months"], 12)
        span = timedelta(
            days=years * 365 + months * 30 + got["days"], microseconds=got["microseconds"]
        )
        return bool(span == want)
    if isinstance(got, float) and isinstance(want, float) and math.isnan(got):
        return math.isnan(want)
    return bool(got == want) and type(got) is type(want)


@pytest.mark.parametrize("plugin", list(DECODERS))
def test_every_fixture_type_round_trips_exactly(
    plugin: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    audits = fixture_audits(plugin, str(tmp_path_factory.mktemp(plugin)))
    checked: Counter[str] = Counter()
    for table, (relation, rows) in audits.items():
        for column in relation.columns:
            arrow = expected_arrow(column.type_name)
            for image in ("new", "old"):
                for row in rows:
                    values = row[f"{image}_values"]
                    text = json.loads(values).get(column.name) if values else None
                    got = row[f"{image}_{column.name}"]
                    want = None if text is None else oracle(column.type_name, arrow, text)
                    assert _same(got, want, arrow), (table, column, image, text, got, want)
                    checked[column.type_name] += text is not None
    # Together the fixtures hold every family of types the decoders handle.
    families = {str(expected_arrow(t)) for t, n in checked.items() if n}
    assert FAMILIES[plugin] <= families, FAMILIES[plugin] - families


#: The Arrow types each plugin's fixture exercises with at least one non-NULL value.
_COMMON = {"int16", "int32", "int64", "double", "bool", "binary", "string", "timestamp[us, tz=UTC]"}
_WIDE = {
    "float",
    "date32[day]",
    "time64[us]",
    "timestamp[us]",
    "struct<months: int32, days: int32, microseconds: int64>",
    "list<item: int32>",
    "list<item: string>",
}
FAMILIES = {
    "wal2json": _COMMON | {"decimal128(20, 8)", "decimal128(12, 2)"},
    "wal2json_v1": _COMMON | _WIDE | {"decimal128(12, 2)"},
    "test_decoding": _COMMON | _WIDE,  # no type modifiers: numeric stays exact text
    "pgoutput": _COMMON
    | _WIDE
    | {"decimal128(20, 8)", "decimal128(12, 2)", "list<item: decimal128(10, 2)>"},
}


def test_audit_schema_follows_every_fixture_column_type(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    audits = fixture_audits("pgoutput", str(tmp_path_factory.mktemp("pgoutput-schema")))
    for relation, _ in audits.values():
        schema = walrecover.audit.format.audit_schema(relation)
        for column in relation.columns:
            assert schema.field(f"new_{column.name}").type == expected_arrow(column.type_name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:00", (0, 0, 0)),
        ("1 year 2 mons 3 days 04:05:06.5", (14, 3, 14_706_500_000)),
        ("-1 days +02:00:00", (0, -1, 7_200_000_000)),
        ("-1 years -2 mons -00:00:00.000001", (-14, 0, -1)),
        ("100:00:00", (0, 0, 360_000_000_000)),
        ("3 days", (0, 3, 0)),
    ],
)
def test_intervals_keep_months_days_and_microseconds_apart(
    text: str, expected: tuple[int, int, int]
) -> None:
    value = parse_interval(text)
    assert (value["months"], value["days"], value["microseconds"]) == expected


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("{}", []),
        ('{""}', [""]),
        ('{a,"b,c",NULL,"NULL","x\\\\y"}', ["a", "b,c", None, "NULL", "x\\y"]),
    ],
)
def test_arrays_are_split_like_postgres_prints_them(text: str, items: list[str | None]) -> None:
    assert parse_array(text) == items


@pytest.mark.parametrize("text", ["{{1,2},{3,4}}", "[0:1]={1,2}"])
def test_arrays_without_a_flat_typed_form_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="array"):
        parse_array(text)


# -- one row per change, and what became of it ----------------------------------------------------


def _aborted(db: Database, statement: str) -> int:
    with db.connect() as conn:
        conn.execute("BEGIN")
        row = conn.execute("SELECT txid_current()").fetchone()
        conn.execute(statement)
        conn.execute("ROLLBACK")
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("batch_size", [20_000, 1], ids=["one-batch", "batch-per-txn"])
def test_one_row_per_recovered_row_change(db: Database, tmp_path: Path, batch_size: int) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)")
    db.execute("INSERT INTO t VALUES (0, 0, 'older than the slot')")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')",
            "UPDATE t SET amount = 11 WHERE id = 1",
            "UPDATE t SET id = 20 WHERE id = 2",
            "DELETE FROM t WHERE id = 1",
            "UPDATE t SET note = 'touched' WHERE id = 0",
        ],
    )
    aborted = _aborted(db, "INSERT INTO t VALUES (5, 5, 'aborted')")
    run_script(
        db,
        [
            "BEGIN; INSERT INTO t VALUES (6, 6, 'kept'); SAVEPOINT s;"
            " INSERT INTO t VALUES (7, 7, 'rolled back'); ROLLBACK TO s; COMMIT",
            "DELETE FROM t WHERE id = 0",
            "TRUNCATE t",
            "INSERT INTO t VALUES (9, 9, 'after the truncate')",
        ],
    )
    drop_with_truth(db)
    path = tmp_path / "audit.parquet"

    result = recover_table(db, audit_path=path, batch_size=batch_size)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    rows = _read(path)
    assert result.audit is not None
    assert len(rows) == result.changes == result.audit.rows == 10
    assert [r["seq"] for r in rows] == list(range(10))
    assert [r["op"] for r in rows] == [
        "insert", "insert", "update", "update", "delete",
        "update", "insert", "delete", "truncate", "insert",
    ]  # fmt: skip
    # Insert 1 and 2 were updated later; update 1 was deleted, update 2 (now 20) and insert 6
    # truncated; the last insert is what the table holds.
    assert [r["outcome"] for r in rows] == [
        "superseded", "superseded", "removed", "removed", "applied",
        "no_row", "removed", "no_row", "applied", "applied",
    ]  # fmt: skip
    assert result.audit.outcomes == {"applied": 3, "no_row": 2, "removed": 3, "superseded": 2}
    assert read_metadata(path)["outcomes"] == result.audit.outcomes
    assert result.no_row == 2
    assert [None if r["key"] is None else json.loads(r["key"]) for r in rows] == [
        {"id": "1"}, {"id": "2"}, {"id": "1"}, {"id": "2"}, {"id": "1"},
        {"id": "0"}, {"id": "6"}, {"id": "0"}, None, {"id": "9"},
    ]  # fmt: skip
    assert [r["new_id"] for r in rows] == [1, 2, 1, 20, None, 0, 6, None, None, 9]
    assert [r["old_id"] for r in rows] == [None, None, 1, 2, 1, 0, None, 0, None, None]
    assert json.loads(rows[4]["old_values"]) == {"id": "1"}
    assert rows[4]["new_values"] is None
    assert {r["relation"] for r in rows} == {"public.t"}
    # Transactions in commit order, each with the xid, commit LSN and time the slot shows.
    commits = {c.xid: c for c in stream_commits(db)}
    assert aborted not in {r["xid"] for r in rows}
    for row in rows:
        commit = commits[row["xid"]]
        assert row["commit_lsn"] == str(commit.commit_lsn)
        assert row["commit_time"] == commit.commit_time
    positions = [commits[r["xid"]].commit_lsn for r in rows]
    assert positions == sorted(positions)
    assert len({r["xid"] for r in rows}) == 9
    assert not path.with_name(path.name + ".partial").exists()
    assert verify_audit(path).ok


def test_changes_after_the_stop_point_supersede_nothing(db: Database, tmp_path: Path) -> None:
    work = stop_workload(db)
    path = tmp_path / "audit.parquet"

    recover_table(db, stop=StopPoint(lsn=work.lsn), audit_path=path)

    rows = [(r["op"], r["new_id"] or r["old_id"], r["outcome"]) for r in _read(path)]
    assert rows == [
        ("insert", 1, "applied"),  # updated only after the stop point
        ("insert", 2, "superseded"),
        ("insert", 3, "removed"),
        ("update", 2, "applied"),  # deleted only after the stop point
        ("delete", 3, "applied"),
        ("insert", 4, "after_stop"),
        ("update", 1, "after_stop"),
        ("insert", 5, "after_stop"),
        ("delete", 2, "after_stop"),
    ]
    # The live rows of the audit are exactly the rebuilt table.
    live = {r[1] for r in rows if r[2] == "applied" and r[0] != "delete"}
    assert live == {row[0] for row in db.execute("SELECT id FROM t_recovered")}


def test_keyless_rows_are_matched_by_their_whole_image(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (aid integer, delta integer)")
    db.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 5), (1, 5), (2, -3)",
            "DELETE FROM t WHERE ctid = (SELECT min(ctid) FROM t WHERE aid = 1)",
            "UPDATE t SET delta = 4 WHERE aid = 2",
        ],
    )
    drop_with_truth(db)
    path = tmp_path / "audit.parquet"

    recover_table(db, audit_path=path)

    rows = [(r["op"], r["key"], r["new_aid"], r["outcome"]) for r in _read(path)]
    assert [r[:3] for r in rows] == [
        ("insert", None, 1),
        ("insert", None, 1),
        ("insert", None, 2),
        ("delete", None, None),
        ("update", None, 2),
    ]
    # One of the two equal rows is gone (which one cannot be told apart), one is live.
    assert sorted(r[3] for r in rows[:2]) == ["applied", "removed"]
    assert [r[3] for r in rows[2:]] == ["superseded", "applied", "applied"]


def test_typed_columns_wait_for_a_change_that_shows_the_whole_table(tmp_path: Path) -> None:
    """A truncate (or a key-only delete) shows only some columns: the typed columns come
    from the first change that shows the table whole."""
    path = tmp_path / "audit.parquet"

    write_audit(path, stream([truncate(), delete(7), insert(1, "1.50")]), commit_every=1)

    table = pq.read_table(path)
    assert table.schema.field("new_amount").type == pa.decimal128(12, 2)
    assert table.column("op").to_pylist() == ["truncate", "delete", "insert"]
    assert table.column("new_amount").to_pylist() == [None, None, Decimal("1.50")]
    assert table.column("old_id").to_pylist() == [None, 7, None]


def test_outcomes_come_from_later_changes_only(tmp_path: Path) -> None:
    """The finalisation on its own: a key reused after a delete, a key changed, a truncate."""
    key_change = Change(
        Op.UPDATE, LEDGER, new={**(insert(2, "2.00").new or {}), "id": "3"}, old={"id": "2"}
    )
    applied = stream(
        [
            insert(1, "1.00"),  # 0: deleted by 2
            insert(2, "2.00"),  # 1: its key changes at 4
            delete(1),  # 2
            insert(1, "1.50"),  # 3: same key again, updated at 5
            key_change,  # 4: id 2 -> 3, then truncated
            update(1, "1.75"),  # 5: truncated
            truncate(),  # 6
            insert(1, "9.00"),  # 7: live
            update(9, "0.00"),  # 8: found no row
        ],
        outcomes=[Outcome.APPLIED] * 8 + [Outcome.NO_ROW],
    )
    with_after_stop = [*applied, stream([update(1, "5.00")], outcomes=[Outcome.AFTER_STOP])[0]]
    path = tmp_path / "a.parquet"

    writer = write_audit(path, with_after_stop, commit_every=2)

    assert [r["outcome"] for r in _read(path)] == [
        "removed", "superseded", "applied", "superseded", "removed",
        "removed", "applied", "applied", "no_row", "after_stop",
    ]  # fmt: skip
    assert writer.outcome_counts == {
        "after_stop": 1, "applied": 3, "no_row": 1, "removed": 3, "superseded": 2,
    }  # fmt: skip


def test_after_image_keeps_an_unchanged_toasted_value(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, note text, s text)")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t SELECT 1, string_agg(md5(random()::text), ''), 'new'"
            " FROM generate_series(1, 400)",
            "UPDATE t SET s = 'settled'",
            "UPDATE t SET id = 2",
        ],
    )
    drop_with_truth(db)
    long = db.scalar("SELECT note FROM truth")
    path = tmp_path / "audit.parquet"

    recover_table(db, audit_path=path)

    rows = _read(path)
    assert [r["op"] for r in rows] == ["insert", "update", "update"]
    assert [r["new_note"] for r in rows] == [long, long, long]
    assert [json.loads(r["new_values"])["note"] for r in rows] == [long, long, long]
    assert [r["new_s"] for r in rows] == ["new", "settled", "settled"]
    assert [r["outcome"] for r in rows] == ["superseded", "superseded", "applied"]


@pytest.mark.parametrize(("plugin", "kind"), WAYS, ids=WAY_IDS)
def test_unchanged_toasted_values_keep_their_text(
    db: Database, tmp_path: Path, plugin: str, kind: str
) -> None:
    """An unchanged TOAST value the target fills in comes back as the text the table holds:
    bytea as hex (not Python bytes), jsonb 1.50 as 1.50 (not a float's 1.5)."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, doc jsonb, blob bytea, s text);"
        " ALTER TABLE t ALTER COLUMN blob SET STORAGE EXTERNAL;"
        " ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL"
    )
    create_source(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t SELECT 1, jsonb_build_object('amount', 1.50::numeric, 'pad',"
            " string_agg(md5(g::text), '')), decode(string_agg(md5(g::text), ''), 'hex'), 'new'"
            " FROM generate_series(1, 400) g",
            "UPDATE t SET s = 'settled'",
        ],
    )
    drop_with_truth(db)
    ((doc, blob),) = db.execute("SELECT doc::text, blob::text FROM truth")
    path = tmp_path / "audit.parquet"

    # test_decoding prints no key for an update that keeps it: the DDL names it.
    ddl = "CREATE TABLE t_recovered (id integer PRIMARY KEY, doc jsonb, blob bytea, s text)"
    result = recover_way(db, plugin, kind, tmp_path, audit_path=path, ddl=ddl)

    assert result.exact
    assert differences(db, "truth", "t_recovered") == (0, 0)
    rows = _read(path)
    assert [r["op"] for r in rows] == ["insert", "update"]
    after = json.loads(rows[1]["new_values"])
    assert (after["doc"], after["blob"], after["s"]) == (doc, blob, "settled")
    assert '"amount": 1.50' in after["doc"]


# -- metadata, manifest, hashes -------------------------------------------------------------------


def test_metadata_describes_the_run(db: Database, tmp_path: Path) -> None:
    work = stop_workload(db)
    start = db.slot_position()[0]
    path = tmp_path / "audit.parquet"

    result = recover_table(db, stop=StopPoint(lsn=work.lsn), audit_path=path)

    meta = read_metadata(path)
    stop_commit = next(c for c in stream_commits(db) if c.xid == work.stop_xid)
    assert meta["slot"] == SLOT
    assert meta["plugin"] == "wal2json"
    assert meta["table"] == "public.t"
    assert meta["into"] == "public.t_recovered"
    assert meta["stop"] == f"before LSN {work.lsn}"
    assert meta["stopped_before_lsn"] == str(stop_commit.commit_lsn)
    assert meta["stream_start_lsn"] == start
    rows = _read(path)
    assert meta["rows"] == len(rows)
    assert sum(row["outcome"] != "after_stop" for row in rows) == result.changes == 5
    assert meta["transactions"] == result.transactions == 2
    assert meta["first_lsn"] == str(result.first_lsn)
    assert meta["last_lsn"] == str(result.last_lsn)
    assert f"dbname={db.name}" in meta["source"]
    assert meta["tool"].startswith("walrecover ")
    assert meta["format"] == "walrecover-audit/2"
    assert meta["started_at"] <= meta["finished_at"]
    assert meta["outcomes"] == dict(sorted(Counter(r["outcome"] for r in rows).items()))
    assert meta["columns"] == [["id", "integer", True], ["amount", "numeric(12,2)", False],
                               ["note", "text", False]]  # fmt: skip
    # The stop transaction and later ones are audited as left out, never as applied.
    assert all(r["outcome"] == "after_stop" for r in rows if r["xid"] == work.stop_xid)
    assert any(r["xid"] == work.stop_xid for r in rows)


def test_manifest_carries_the_checksum_and_the_chain_head(db: Database, tmp_path: Path) -> None:
    stop_workload(db)
    path = tmp_path / "audit.parquet"

    result = recover(db.cluster.tcp_dsn(db.name, password=PASSWORD), SLOT,
                     TableName("public", "t"), audit_path=path)  # fmt: skip

    manifest_file = path.with_name("audit.parquet.manifest.json")
    manifest = json.loads(manifest_file.read_text())
    assert result.audit is not None
    assert result.audit.manifest == str(manifest_file)
    assert manifest["files"] == [
        {
            "path": "audit.parquet",
            "rows": 9,
            "first_seq": 0,
            "last_seq": 8,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    ]
    assert manifest["rows"] == 9
    assert manifest["chain_head"] == result.audit.chain_head == read_metadata(path)["chain_head"]
    assert manifest["chain_seed"] == CHAIN_SEED
    assert manifest["metadata"]["slot"] == SLOT
    assert PASSWORD not in manifest_file.read_text()


def test_large_audit_is_written_in_several_row_groups(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each module that sizes row groups or batches by it (they import it from the format).
    for module in (walrecover.audit.writer, walrecover.audit.finalise, walrecover.audit.outputs):
        monkeypatch.setattr(module, "ROW_GROUP_ROWS", 10)
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot()
    run_script(
        db,
        [
            f"INSERT INTO t SELECT g, 'v' || g FROM generate_series({i * 7 + 1}, {i * 7 + 7}) g"
            for i in range(5)
        ],
    )
    drop_with_truth(db)
    path = tmp_path / "audit.parquet"

    result = recover_table(db, audit_path=path)

    parquet = pq.ParquetFile(path)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert sizes == [10, 10, 10, 5]
    rows = _read(path)
    assert result.changes == 35
    assert [r["seq"] for r in rows] == list(range(35))
    assert [r["new_id"] for r in rows] == list(range(1, 36))
    assert verify_audit(path).ok


def test_rows_are_hashed_in_a_chain(db: Database, tmp_path: Path) -> None:
    stop_workload(db)
    path = tmp_path / "audit.parquet"

    recover_table(db, audit_path=path)

    rows = _read(path)
    assert len(rows) == 9
    assert len({r["row_hash"] for r in rows}) == len(rows)
    previous = CHAIN_SEED
    for row in rows:
        content = json.dumps(
            [
                row[c].isoformat() if isinstance(row[c], datetime) else row[c]
                for c in walrecover.audit.format.HASHED
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        assert row["row_hash"] == hashlib.sha256(content.encode()).hexdigest()
        link = hashlib.sha256((previous + row["row_hash"]).encode()).hexdigest()
        assert row["chain_hash"] == link
        previous = link
    assert read_metadata(path)["chain_head"] == previous


# -- the partitioned dataset ----------------------------------------------------------------------


def test_audit_dir_reads_back_whole_and_equals_the_single_file(
    db: Database, tmp_path: Path
) -> None:
    stop_workload(db)
    single, directory = tmp_path / "audit.parquet", tmp_path / "audit"

    recover_table(db, audit_path=single)
    result = recover_table(db, into=TableName("public", "again"), audit_dir=directory)

    assert result.audit is not None and result.audit.path == str(directory)
    assert (directory / DATASET_MANIFEST).is_file()
    parts = sorted(p.relative_to(directory).parts[0] for p in directory.rglob("*.parquet"))
    assert parts and all(p.startswith("commit_date=") for p in parts)
    # Both recoveries read the same stream: the rows are the same, the hashes too.
    expected = _read(single)
    rows = sorted(pq.read_table(directory).to_pylist(), key=lambda r: r["seq"])
    assert len(rows) == len(expected) == 9
    for row, want in zip(rows, expected, strict=True):
        assert str(row.pop("commit_date")) == want["commit_time"].date().isoformat()
        assert row == want
    with_pandas = pd.read_parquet(directory).sort_values("seq")
    assert list(with_pandas["seq"]) == list(range(9))
    assert list(with_pandas["row_hash"]) == [r["row_hash"] for r in expected]
    frame = walrecover.read_audit(directory)
    assert list(frame["seq"]) == list(range(9))
    assert frame["new_amount"].dtype == pd.ArrowDtype(pa.decimal128(12, 2))
    assert verify_audit(directory).ok


def test_dataset_partitions_by_commit_date_in_seq_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commit times cross midnight (and step back once, as concurrent commits can); one has
    no commit time; files hold runs of consecutive seqs, at most DATASET_FILE_ROWS each."""
    monkeypatch.setattr(walrecover.audit.outputs, "DATASET_FILE_ROWS", 2)
    day = datetime(2024, 5, 1, 23, 59, 59, tzinfo=UTC)
    times: list[datetime | None] = [day, day, day + timedelta(seconds=2), day, None,
                                    day + timedelta(days=1), day + timedelta(days=1)]  # fmt: skip
    applied = stream([insert(i, f"{i}.00") for i in range(1, 8)], times)
    directory = tmp_path / "audit"

    write_audit(directory, applied, partitioned=True)

    manifest = json.loads((directory / DATASET_MANIFEST).read_text())
    assert [(f["path"], f["first_seq"], f["last_seq"]) for f in manifest["files"]] == [
        ("commit_date=2024-05-01/part-000000.parquet", 0, 1),
        ("commit_date=2024-05-02/part-000001.parquet", 2, 2),
        ("commit_date=2024-05-01/part-000002.parquet", 3, 3),
        ("commit_date=unknown/part-000003.parquet", 4, 4),
        ("commit_date=2024-05-02/part-000004.parquet", 5, 6),
    ]
    frame = walrecover.read_audit(directory)
    assert list(frame["seq"]) == list(range(7))
    assert list(frame["new_amount"]) == [Decimal(f"{i}.00") for i in range(1, 8)]
    dates = [None if d is pd.NA else d.isoformat() for d in frame["commit_date"]]
    assert dates == ["2024-05-01", "2024-05-01", "2024-05-02", "2024-05-01", None,
                     "2024-05-02", "2024-05-02"]  # fmt: skip
    assert len(pd.read_parquet(directory)) == 7
    assert verify_audit(directory).ok


@pytest.mark.parametrize("partitioned", [False, True], ids=["file", "dir"])
def test_reconciling_an_audit_sums_its_live_rows(tmp_path: Path, partitioned: bool) -> None:
    applied = ledger_stream(20)
    path = tmp_path / ("audit" if partitioned else "audit.parquet")
    write_audit(path, applied, partitioned=partitioned)
    live: dict[str | None, Decimal] = {}
    for applied_change in applied:  # replay it by hand: the last version of each id
        change = applied_change.change
        if change.op is Op.DELETE:
            live.pop((change.old or {})["id"], None)
        else:
            live[(change.new or {})["id"]] = Decimal(str((change.new or {})["amount"]))

    totals = audit_totals(path, "id", "amount")
    assert {k[0]: v for k, (v, _) in totals.items()} == live


# -- refusals -------------------------------------------------------------------------------------


def test_failed_run_leaves_no_audit_file(db: Database, tmp_path: Path) -> None:
    work = stop_workload(db)
    path = tmp_path / "audit.parquet"

    with source_untouched(db), pytest.raises(StopPointError):
        recover(
            db.dsn,
            SLOT,
            TableName("public", "t"),
            stop=StopPoint(xid=work.stop_xid + 100_000),
            audit_path=path,
        )

    # A file at PATH is always whole: nothing there, and no half-written merge either.
    assert not path.exists()
    assert not path.with_name(path.name + ".partial").exists()


@pytest.mark.parametrize(
    ("where", "partitioned", "message"),
    [
        ("no/a.parquet", False, "does not exist"),
        ("dir", False, "is a directory"),
        ("file", True, "is a file"),
        ("busy", True, "not empty"),
    ],
)
def test_unusable_audit_paths_are_refused_before_anything(
    db: Database, tmp_path: Path, where: str, partitioned: bool, message: str
) -> None:
    stop_workload(db)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    option = {"audit_dir" if partitioned else "audit_path": tmp_path / where}

    with source_untouched(db), pytest.raises(AuditError, match=message):
        recover(db.dsn, SLOT, TableName("public", "t"), **option)  # type: ignore[arg-type]

    assert not table_exists(db, "t_recovered")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_a_column_named_like_a_meta_column_gets_its_own_name(tmp_path: Path) -> None:
    relation = Relation("public", "odd", (Column("values", "integer", 23, -1, True),))
    change = Change(Op.INSERT, relation, new={"values": "7"})
    path = tmp_path / "odd.parquet"

    write_audit(path, [AppliedChange(change, 1, Lsn(1), None, None, Outcome.APPLIED)])

    (row,) = _read(path)
    assert row["new_values"] == '{"values": "7"}'
    assert row["new_values_"] == 7
    assert verify_audit(path).ok


def test_a_resumed_writer_keeps_what_was_sealed_and_the_columns_it_saw(tmp_path: Path) -> None:
    """A killed run leaves sealed parts (and an unsealed one); the rerun keeps exactly what the
    target committed, knows the columns from before, and takes back a rolled-back savepoint."""
    path = tmp_path / "audit.parquet"
    first = stream([insert(1, "1.00"), insert(2, "2.00"), insert(3, "3.00")])
    writer = AuditWriter(path, {"tool": "test"})
    writer.start(None, resuming=False)
    writer.write(first[:2])
    writer.commit(first[1].commit_lsn)
    writer.write(first[2:])  # never sealed: the target did not commit it
    writer.abort()

    later = stream([insert(3, "3.00"), delete(1), insert(4, "4.00"), delete(2)])
    rerun = AuditWriter(path, {"tool": "test"})
    rerun.start(first[1].commit_lsn, resuming=True)
    assert rerun.rows == 2
    rerun.write([later[1]])  # a key-only delete: its relation shows every column anyway
    rerun.savepoint()
    rerun.write([later[2]])
    rerun.rollback_to_savepoint()  # the transaction turned out to be past the stop point
    rerun.write([later[3]])
    rerun.commit(later[3].commit_lsn)
    rows = rerun.close()

    table = pq.read_table(path)
    assert rows == 4
    assert table.column("seq").to_pylist() == [0, 1, 2, 3]
    assert table.column("op").to_pylist() == ["insert", "insert", "delete", "delete"]
    assert table.column("new_amount").to_pylist() == [Decimal("1.00"), Decimal("2.00"), None, None]
    assert table.column("outcome").to_pylist() == ["removed", "removed", "applied", "applied"]
    assert not path.with_name("audit.parquet.parts").exists()
    assert verify_audit(path).ok


def test_an_empty_audit_is_whole_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    writer = write_audit(path, [])
    assert writer.rows == 0
    assert writer.chain_head == CHAIN_SEED
    result = verify_audit(path)
    assert result.ok and result.rows == 0
    assert read_metadata(path)["rows"] == 0


def test_parts_left_by_a_run_killed_before_publishing_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.parquet"
    applied = stream([insert(1, "1.00"), insert(2, "2.00")])
    writer = AuditWriter(path, {"tool": "test"})
    assert writer.unpublished() is None
    writer.start(None, resuming=False)
    writer.write(applied)
    writer.commit(applied[-1].commit_lsn)
    writer.abort()  # killed between the target's last commit and close()

    rerun = AuditWriter(path, {"tool": "test"})
    assert rerun.unpublished() == applied[-1].commit_lsn
    rerun.start(rerun.unpublished(), resuming=True)
    assert rerun.close() == 2
    assert rerun.unpublished() is None
    assert verify_audit(path).ok
