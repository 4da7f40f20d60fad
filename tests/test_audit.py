"""The Parquet audit of a real recovery: schema, one row per row change, metadata, row groups."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Database
from helpers import (
    SLOT,
    differences,
    drop_with_truth,
    recover_table,
    run_script,
    source_untouched,
    stop_workload,
    stream_commits,
    table_exists,
)

import walrecover.audit
from walrecover.audit import read_metadata
from walrecover.cluster import Cluster
from walrecover.errors import AuditError, StopPointError
from walrecover.model import StopPoint, TableName
from walrecover.recover import recover

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
    (
        "at",
        "timestamptz",
        "'2024-05-01 12:00:00.123456+02'",
        pa.timestamp("us", tz="UTC"),
        datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC),
    ),
    ("note", "text", "'ünïcødé 💸\ttab'", pa.string(), "ünïcødé 💸\ttab"),
    ("flag", "boolean", "true", pa.bool_(), True),
    ("off", "boolean", "false", pa.bool_(), False),
    (
        "meta",
        "jsonb",
        '\'{"fee": 0.25, "k": [1, "x"]}\'',
        pa.string(),
        '{"k": [1, "x"], "fee": 0.25}',
    ),
    ("born", "date", "'2024-02-29'", pa.date32(), date(2024, 2, 29)),
    ("raw", "bytea", "'\\x00ff'", pa.binary(), b"\x00\xff"),
    ("missing", "integer", "NULL", pa.int32(), None),
]


TYPES_SLOT = "audit_types_cdc"


def _read(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


@pytest.fixture(scope="module")
def typed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The audit of a table with one column per type in :data:`TYPES`, one row inserted."""
    name = "audit_types"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    try:
        columns = ", ".join(f"{c} {t}" for c, t, _, _, _ in TYPES)
        db.execute(f"CREATE TABLE t ({columns}, PRIMARY KEY (id))")
        db.create_slot(TYPES_SLOT)  # slots are cluster-wide: not the tests' "cdc"
        values = ", ".join(literal for _, _, literal, _, _ in TYPES)
        run_script(db, [f"INSERT INTO t VALUES ({values})"])
        drop_with_truth(db)
        path = tmp_path_factory.mktemp("audit") / "types.parquet"
        recover_table(db, slot=TYPES_SLOT, audit_path=path)
        assert differences(db, "truth", "t_recovered") == (0, 0)
        yield path
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_schema_is_the_meta_columns_then_the_after_image(typed: Path) -> None:
    schema = pq.read_schema(typed)
    expected = (
        META_COLUMNS
        + [(f"new_{c}", arrow) for c, _, _, arrow, _ in TYPES]
        + [("row_hash", pa.string()), ("chain_hash", pa.string())]
    )
    assert [(f.name, f.type) for f in schema] == expected


@pytest.mark.parametrize(
    ("column", "pg_type", "arrow_type", "value"),
    [(c, t, a, v) for c, t, _, a, v in TYPES],
    ids=[f"{c}-{t}" for c, t, _, _, _ in TYPES],
)
def test_typed_after_image(
    typed: Path, column: str, pg_type: str, arrow_type: pa.DataType, value: Any
) -> None:
    table = pq.read_table(typed)
    field = table.schema.field(f"new_{column}")
    assert field.type == arrow_type
    if pg_type.startswith("numeric"):
        assert not pa.types.is_floating(field.type)
    (got,) = table.column(f"new_{column}").to_pylist()
    if pg_type == "jsonb":
        assert json.loads(got) == json.loads(value)
    else:
        assert got == value
        assert type(got) is type(value)
    (row,) = _read(typed)
    exact = json.loads(row["new_values"])[column]
    if value is None:
        assert exact is None
    elif pg_type.startswith("numeric"):
        assert Decimal(exact) == Decimal(value)  # the exact text, never a JSON number


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
    assert [r["outcome"] for r in rows] == ["applied"] * 5 + [
        "no_row", "applied", "no_row", "applied", "applied",
    ]  # fmt: skip
    assert result.no_row == 2
    assert [None if r["key"] is None else json.loads(r["key"]) for r in rows] == [
        {"id": "1"}, {"id": "2"}, {"id": "1"}, {"id": "2"}, {"id": "1"},
        {"id": "0"}, {"id": "6"}, {"id": "0"}, None, {"id": "9"},
    ]  # fmt: skip
    assert [r["new_id"] for r in rows] == [1, 2, 1, 20, None, 0, 6, None, None, 9]
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


def test_table_without_a_key_has_no_key_column_values(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (aid integer, delta integer)")
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 5), (1, 5), (2, -3)"])
    drop_with_truth(db)
    path = tmp_path / "audit.parquet"

    recover_table(db, audit_path=path)

    rows = _read(path)
    assert [(r["op"], r["key"], r["new_aid"], r["new_delta"]) for r in rows] == [
        ("insert", None, 1, 5),
        ("insert", None, 1, 5),
        ("insert", None, 2, -3),
    ]


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
    # The stop transaction and later ones are audited as left out, never as applied.
    assert all(r["outcome"] == "after_stop" for r in rows if r["xid"] == work.stop_xid)
    assert any(r["xid"] == work.stop_xid for r in rows)


def test_large_audit_is_written_in_several_row_groups(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(walrecover.audit, "ROW_GROUP_ROWS", 10)
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


def test_rows_are_hashed_in_a_chain(db: Database, tmp_path: Path) -> None:
    stop_workload(db)
    path = tmp_path / "audit.parquet"

    recover_table(db, audit_path=path)

    rows = _read(path)
    assert len(rows) == 9
    assert len({r["row_hash"] for r in rows}) == len(rows)
    previous = rows[0]["chain_hash"]
    for row in rows[1:]:
        link = hashlib.sha256((previous + row["row_hash"]).encode()).hexdigest()
        assert row["chain_hash"] == link
        previous = link
    assert read_metadata(path)["chain_head"] == previous


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


def test_audit_in_a_missing_directory_is_refused_before_anything(
    db: Database, tmp_path: Path
) -> None:
    stop_workload(db)

    with source_untouched(db), pytest.raises(AuditError, match="does not exist"):
        recover(db.dsn, SLOT, TableName("public", "t"), audit_path=tmp_path / "no" / "a.parquet")

    assert not table_exists(db, "t_recovered")
