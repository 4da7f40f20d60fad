"""walrecover.stream.walinspect against the real server's WAL, and its parsing of pg_walinspect
text."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from helpers import Database
from psycopg.conninfo import make_conninfo

from walrecover.db import connect
from walrecover.errors import WalUnavailable
from walrecover.stream.lsn import Lsn
from walrecover.stream.sources import wait_for_flush
from walrecover.stream.walinspect import (
    RelFile,
    WalInspect,
    parse_block_ref,
    parse_commit,
    parse_relids,
    waldump_command,
)


def test_commit_descriptions_parse() -> None:
    """PostgreSQL 15's xact_desc text: rels (default, global, other tablespace, temporary),
    dropped stats, subxacts, and a COMMIT PREPARED's own xid."""
    record = parse_commit(
        Lsn(100),
        Lsn(160),
        729,
        "COMMIT",
        "2026-12-06 16:10:04.800537+00; rels: base/16384/16394 global/1262 "
        "pg_tblspc/16500/PG_15_202209061/16384/16600 base/16384/t3_16700; subxacts: 730 731; "
        "dropped stats: 2/16384/16394 3/16384/99; inval msgs: catcache 7 relcache 16394",
    )
    assert record.time == datetime(2026, 12, 6, 16, 10, 4, 800537, tzinfo=UTC)
    assert record.dropped_files == (
        RelFile(1663, 16384, 16394),
        RelFile(1664, 0, 1262),
        RelFile(16500, 16384, 16600),
    )
    assert record.subxacts == (730, 731)
    assert record.dropped_relations(16384) == {16394}
    assert record.dropped_relfilenodes(16384) == {16394, 16600}
    assert record.catalog
    prepared = parse_commit(Lsn(1), Lsn(2), 0, "COMMIT_PREPARED", "808: 2026-12-06 17:32:55+00")
    assert (prepared.xid, prepared.prepared, prepared.catalog) == (808, True, False)
    assert parse_block_ref("blkref #0: rel 1663/16384/16394 fork main blk 0") == RelFile(
        1663, 16384, 16394
    )
    assert parse_block_ref("") is None
    assert waldump_command(Lsn(1), None, "x") == (
        "pg_waldump --path=$PGDATA/pg_wal --start=0/1 --rmgr=Transaction | grep -E 'x'"
    )


def test_reads_drops_files_and_subtransactions(db: Database) -> None:
    db.execute("CREATE EXTENSION pg_walinspect")
    start = Lsn.parse(db.lsn())
    db.execute("CREATE TABLE t (id integer PRIMARY KEY)")
    oid, filenode = db.execute("SELECT 't'::regclass::oid::int, pg_relation_filenode('t')")[0]
    db.create_slot("look", "test_decoding")
    with db.connect() as conn:  # decoding reads flushed WAL only
        conn.execute("SET synchronous_commit = on")
        conn.execute("INSERT INTO t VALUES (1)")
    (insert_at,) = db.execute(
        "SELECT lsn::text FROM pg_logical_slot_peek_changes('look', NULL, NULL)"
        " WHERE data LIKE 'table public.t: INSERT%'"
    )[0]
    with db.connect() as conn, conn.transaction():
        top = conn.execute("SELECT txid_current()").fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO t VALUES (3)")
        sub = int(conn.execute("SELECT xmin::text FROM t WHERE id = 3").fetchone()[0])  # type: ignore[index]
    db.execute("DROP TABLE t")
    database = int(db.scalar("SELECT oid::int FROM pg_database WHERE datname = current_database()"))
    with connect(db.dsn, autocommit=True) as conn:
        wal = WalInspect.open(conn)
        assert wal.database == database
        drops = [c for c in wal.commits(start, catalog_only=True) if c.dropped_stats]
        assert len(drops) == 1
        assert oid in drops[0].dropped_relations(database)
        assert filenode in drops[0].dropped_relfilenodes(database)
        created = [s.file.relfilenode for s in wal.storage_created(start)]
        assert filenode in created
        # The change's LSN, as test_decoding gives it, is its record's: it names the file.
        assert wal.relfile_at(Lsn.parse(insert_at)) == RelFile(1663, database, filenode)
        assert wal.relfile_at(Lsn(int(Lsn.parse(insert_at)) + 1)) is None
        record = wal.top_level(sub, start)
        assert record is not None
        assert (record.xid, sub in record.subxacts) == (int(top), True)


def test_a_truncate_record_names_the_truncated_tables(db: Database) -> None:
    """``nrelids 2 relids 16390 16400``: the oids after ``relids``, not the count that
    ``nrelids`` ends with (truncated_at returned (2,) for any TRUNCATE of two tables, and (1,)
    for one; the test failed before the fix)."""
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE a (id integer PRIMARY KEY)")
    db.execute("CREATE TABLE b (id integer PRIMARY KEY)")
    oids = tuple(db.execute("SELECT 'a'::regclass::oid::int, 'b'::regclass::oid::int")[0])
    start = Lsn.parse(db.lsn())
    db.execute("TRUNCATE a")
    db.execute("TRUNCATE a, b")
    with connect(db.dsn, autocommit=True) as conn:
        wal = WalInspect.open(conn)
        rows = conn.execute(
            "SELECT start_lsn::text FROM pg_get_wal_records_info(%s, %s)"
            " WHERE resource_manager = 'Heap' AND record_type = 'TRUNCATE' ORDER BY start_lsn",
            (str(start), str(wait_for_flush(conn))),
        ).fetchall()
        found = [tuple(sorted(wal.truncated_at(Lsn.parse(row[0])))) for row in rows]
    assert found == [oids[:1], tuple(sorted(oids))]
    assert parse_relids("nrelids: 2, relids: [16390, 16400]") == (16390, 16400)


def test_refuses_clearly_without_the_extension_or_the_privilege(db: Database) -> None:
    with connect(db.dsn, autocommit=True) as conn, pytest.raises(WalUnavailable) as missing:
        WalInspect.open(conn)
    assert f"pg_walinspect is not installed in database {db.name!r}" in missing.value.message
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE ROLE walreader LOGIN")
    try:
        with (
            connect(make_conninfo(db.dsn, user="walreader"), autocommit=True) as conn,
            pytest.raises(WalUnavailable) as denied,
        ):
            WalInspect.open(conn)
        assert "role 'walreader' may not use pg_walinspect" in denied.value.message
        assert "GRANT pg_read_server_files TO walreader" in denied.value.message
    finally:
        db.execute("DROP ROLE walreader")
