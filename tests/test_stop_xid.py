"""``--stop-before-xid`` with an epoch-qualified xid8 and with a subtransaction's xid (issue 8,
A8), against real servers: one put past xid wraparound with ``pg_resetwal -e 1``.

The stream prints 32-bit top-level xids. ``pg_current_xact_id()`` returns an xid8 (epoch and
xid), and a row written after a SAVEPOINT carries its subtransaction's xid; both used to get
"does not commit in the stream".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fault_helpers import peek_capture
from helpers import SLOT, Database, cli, differences, run_script, snapshot, source_untouched

from walrecover.drill.cluster import Cluster

DDL = "CREATE TABLE t (id integer PRIMARY KEY, v text)"


def subtransaction_workload(db: Database) -> tuple[int, int]:
    """One row, the expected table, then a transaction whose second row is written in a
    subtransaction, then more; returns (subtransaction xid, top-level xid)."""
    run_script(db, ["INSERT INTO t VALUES (1, 'before')"])
    snapshot(db, "t", "expected")
    with db.connect() as conn, conn.transaction():
        top = int(conn.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        conn.execute("INSERT INTO t VALUES (2, 'top')")
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO t VALUES (3, 'sub')")
        sub = int(conn.execute("SELECT xmin::text FROM t WHERE id = 3").fetchone()[0])  # type: ignore[index]
        conn.execute("RELEASE SAVEPOINT a")
    run_script(db, ["INSERT INTO t VALUES (4, 'after')", "DROP TABLE t"])
    assert sub != top
    return sub, top


@pytest.mark.parametrize("plugin", ["wal2json", "test_decoding"])
def test_a_subtransaction_xid_stops_before_its_top_level_transaction(
    db: Database, plugin: str
) -> None:
    """With pg_walinspect installed, the commit record's ``subxacts`` resolve it: exit 0, the
    table before the top-level transaction, and a warning saying so. The test failed before
    the fix ("does not commit in the stream")."""
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute(DDL)
    db.create_slot(SLOT, plugin)
    sub, top = subtransaction_workload(db)
    with source_untouched(db):
        result = cli(
            "recover",
            *("-d", db.dsn, "--slot", SLOT, "--table", "public.t"),
            *("--stop-before-xid", str(sub)),
        )
    assert result.exit_code == 0, result.stderr
    assert (
        f"warning: transaction {sub} is a subtransaction of transaction {top} (commit LSN "
        in result.stderr
    )
    assert f"the recovery stops before transaction {top}" in result.stderr
    assert f"stopped before transaction {top}" in result.stdout
    assert differences(db, "expected", "t_recovered") == (0, 0)


def test_without_pg_walinspect_a_subtransaction_xid_says_how_to_find_its_top(
    db: Database,
) -> None:
    """Without the WAL: one line that says it may be a subtransaction and gives the
    pg_waldump command that finds its top-level transaction."""
    db.execute(DDL)
    db.create_slot(SLOT, "wal2json")
    sub, _ = subtransaction_workload(db)
    with source_untouched(db):
        result = cli(
            "recover",
            *("-d", db.dsn, "--slot", SLOT, "--table", "public.t"),
            *("--stop-before-xid", str(sub)),
        )
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"transaction {sub} does not commit in the stream" in lines[0]
    assert "If it is a subtransaction (the stream shows only top-level xids)" in lines[0]
    assert f"--rmgr=Transaction | grep -E 'subxacts:.* {sub}( |$)'" in lines[0]


@pytest.mark.parametrize("with_wal", [True, False], ids=["walinspect", "no-walinspect"])
def test_a_transaction_pgoutput_leaves_out_gets_its_commit_lsn(
    db: Database, with_wal: bool
) -> None:
    """A transaction with only DELETEs under a publication that does not publish them is not in
    pgoutput's stream at all, so its xid "does not commit in the stream" (exit 1, the oracle's
    seed 9090901, with only the subtransaction hint). The message now says why, and with
    pg_walinspect gives its commit LSN: the same stop point, which rebuilds the table."""
    if with_wal:
        db.execute("CREATE EXTENSION pg_walinspect")
    db.execute(DDL)
    db.execute("CREATE PUBLICATION pub FOR TABLE t WITH (publish = 'insert, truncate')")
    db.create_slot(SLOT, "pgoutput")
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')"])
    snapshot(db, "t", "expected")
    with db.connect() as conn, conn.transaction():
        xid = int(conn.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        conn.execute("DELETE FROM t WHERE id = 1")
    run_script(db, ["INSERT INTO t VALUES (3, 'c')", "DROP TABLE t"])
    args = ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t"]
    with source_untouched(db):
        result = cli(*args, "--stop-before-xid", str(xid))
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"transaction {xid} does not commit in the stream" in lines[0]
    assert (
        "pgoutput sends no transaction whose every change its publications leave out" in (lines[0])
    )
    if not with_wal:
        assert "stop before its commit with --stop-before-lsn" in lines[0]
        return
    commit = str(
        db.scalar(
            "SELECT start_lsn::text FROM pg_get_wal_records_info("
            f"(SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'),"
            " pg_current_wal_flush_lsn())"
            " WHERE resource_manager = 'Transaction' AND xid = %s::xid"
            " AND record_type = 'COMMIT'",
            (str(xid),),
        )
    )
    assert f"it committed at LSN {commit}" in lines[0]
    assert lines[0].endswith(f"the same stop point is --stop-before-lsn {commit}")
    with source_untouched(db):
        again = cli(*args, "--stop-before-lsn", commit, "--into", "public.t_again")
    # The publication leaves DELETEs out, so pgoutput cannot prove the table (exit 4); the rows
    # are those before the transaction.
    assert again.exit_code == 4, again.stderr
    assert differences(db, "expected", "t_again") == (0, 0)


@pytest.fixture(scope="module")
def epoch_cluster() -> Iterator[Cluster]:
    """A throwaway cluster in xid epoch 1, as a cluster past wraparound is."""
    with Cluster() as running:
        running.reset_wal("-e", "1")
        yield running


@pytest.fixture
def epoch_db(epoch_cluster: Cluster) -> Iterator[Database]:
    with psycopg.connect(epoch_cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE epoch")
    try:
        yield Database(epoch_cluster, "epoch")
    finally:
        with psycopg.connect(epoch_cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE NOT active"
            )
            conn.execute("DROP DATABASE epoch WITH (FORCE)")


def test_an_xid8_stop_point_in_a_cluster_past_wraparound(
    epoch_db: Database, tmp_path: Path
) -> None:
    """``pg_current_xact_id()`` (xid 727 of epoch 1 is 4294968023) is accepted and stops where
    its 32-bit xid does; an xid8 of an epoch the stream cannot hold is refused. The test failed
    before the fix ("does not commit in the stream")."""
    db = epoch_db
    db.execute(DDL)
    db.create_slot(SLOT, "wal2json")
    run_script(db, ["INSERT INTO t VALUES (1, 'before')"])
    snapshot(db, "t", "expected")
    with db.connect() as conn, conn.transaction():
        xid8 = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
        conn.execute("INSERT INTO t VALUES (2, 'stop here')")
    run_script(db, ["INSERT INTO t VALUES (3, 'after')", "DROP TABLE t"])
    assert xid8 >> 32 == 1
    base = ("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    with source_untouched(db):
        result = cli(*base, "--stop-before-xid", str(xid8))
    assert result.exit_code == 0, result.stderr
    assert f"stopped before transaction {xid8 & 0xFFFFFFFF}" in result.stdout
    assert differences(db, "expected", "t_recovered") == (0, 0)

    with source_untouched(db):
        future = cli(*base, "--into", "t_future", "--stop-before-xid", str(xid8 + (1 << 32)))
    assert future.exit_code == 1
    assert (
        f"error: --stop-before-xid {xid8 + (1 << 32)} is xid {xid8 & 0xFFFFFFFF} of epoch 2, "
        f"but the server is in epoch 1, where xid {xid8 & 0xFFFFFFFF} is {xid8}" in future.stderr
    )
    assert "has not been assigned yet" in future.stderr

    # A capture has no epochs: the xid8 is matched by its 32 bits, and the run says so.
    path = tmp_path / "wal2json.capture"
    peek_capture(db.dsn, SLOT, "wal2json", path)
    captured = cli(
        "recover",
        *("--from-file", str(path), "--plugin", "wal2json", "--target", db.dsn),
        *("--table", "public.t", "--into", "t_capture", "--stop-before-xid", str(xid8)),
    )
    assert captured.exit_code == 0, captured.stderr
    assert f"a capture records no epochs: --stop-before-xid {xid8} is matched as xid" in (
        captured.stderr
    )
    assert differences(db, "expected", "t_capture") == (0, 0)


def test_an_xid_above_64_bits_is_a_usage_error() -> None:
    result = cli("recover", "--slot", "x", "--table", "t", "--stop-before-xid", str(1 << 64))
    assert result.exit_code == 2
    assert "is not a transaction id: give a positive 32-bit xid or a 64-bit xid8" in (result.stderr)
