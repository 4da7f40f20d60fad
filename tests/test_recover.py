"""Recovering a dropped table from a wal2json slot, against a real server.

Every scenario creates the slot before the rows are written, records the ground truth just before
``DROP TABLE``, recovers, and compares with EXCEPT ALL both ways. Every recovery goes through
:func:`helpers.recover_table`, which also proves the user's slot did not move and no copy slot
was left behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import pytest
from helpers import (
    SLOT,
    Database,
    differences,
    drop_with_truth,
    in_transaction,
    recover_table,
    run_script,
    snapshot,
    source_untouched,
    stop_workload,
    stream_commits,
    table_exists,
)
from psycopg import sql

from walrecover.errors import StopPointError, TargetExists, WalrecoverError
from walrecover.rebuild.recover import recover
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import StopPoint, TableName

LEDGER_DDL = "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)"


@dataclass(frozen=True)
class Scenario:
    """A table, a workload on it, and how many row changes of it commit."""

    ddl: str
    steps: tuple[str, ...]
    changes: int


SCENARIOS = {
    "primary-key-updates": Scenario(
        LEDGER_DDL,
        (
            "INSERT INTO t SELECT g, g * 1.25, 'row ' || g FROM generate_series(1, 5) g",
            "UPDATE t SET id = id + 100 WHERE id <= 2",
            "INSERT INTO t VALUES (1, 9.99, 'reuses the key 1 moved away from')",
            "BEGIN; UPDATE t SET id = 30 WHERE id = 3; UPDATE t SET id = 3000 WHERE id = 30;"
            " INSERT INTO t VALUES (3, 3.33, 'reuses key 3 in the same transaction');"
            " UPDATE t SET note = 'moved twice' WHERE id = 3000; COMMIT",
            "UPDATE t SET id = 2, note = 'back home' WHERE id = 102",
        ),
        changes=13,
    ),
    "deletes": Scenario(
        LEDGER_DDL,
        (
            "INSERT INTO t SELECT g, g, 'row ' || g FROM generate_series(1, 6) g",
            "DELETE FROM t WHERE id % 2 = 0",
            "BEGIN; DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1, 100, 'reinserted');"
            " COMMIT",
            "DELETE FROM t WHERE id = 3",
            "INSERT INTO t VALUES (3, 300, 'back again'), (2, 200, 'two again')",
            "BEGIN; INSERT INTO t VALUES (7, 7, 'short-lived'); DELETE FROM t WHERE id = 7; COMMIT",
        ),
        changes=16,
    ),
    "rolled-back-savepoint": Scenario(
        LEDGER_DDL,
        (
            "INSERT INTO t VALUES (1, 1, 'first')",
            "BEGIN; INSERT INTO t VALUES (2, 2, 'kept'); SAVEPOINT a;"
            " INSERT INTO t VALUES (3, 3, 'rolled back');"
            " UPDATE t SET note = 'rolled back' WHERE id = 1; DELETE FROM t WHERE id = 2;"
            " ROLLBACK TO SAVEPOINT a;"
            " INSERT INTO t VALUES (3, 33, 'inserted again after the rollback');"
            " INSERT INTO t VALUES (4, 4, 'after rollback'); SAVEPOINT b;"
            " UPDATE t SET amount = 44 WHERE id = 4; RELEASE SAVEPOINT b;"
            " UPDATE t SET note = 'updated in the transaction' WHERE id = 1; COMMIT",
        ),
        changes=6,
    ),
    "aborted-and-prepared": Scenario(
        LEDGER_DDL,
        (
            "INSERT INTO t VALUES (1, 1, 'committed')",
            "BEGIN; INSERT INTO t VALUES (2, 2, 'aborted');"
            " UPDATE t SET note = 'aborted' WHERE id = 1; DELETE FROM t WHERE id = 1; ROLLBACK",
            "INSERT INTO t VALUES (2, 22, 'same key as the aborted insert')",
            "BEGIN; INSERT INTO t VALUES (5, 5, 'prepared, committed'); PREPARE TRANSACTION 'p1'",
            "COMMIT PREPARED 'p1'",
            "BEGIN; INSERT INTO t VALUES (6, 6, 'prepared, rolled back'); PREPARE TRANSACTION 'p2'",
            "ROLLBACK PREPARED 'p2'",
        ),
        changes=3,
    ),
    "no-primary-key-insert-only": Scenario(
        "CREATE TABLE t (tid integer, bid integer, aid integer, delta integer,"
        " mtime timestamp, filler char(22))",
        (
            "INSERT INTO t SELECT g % 3, 1, g, g * 10 - 25,"
            " '2024-05-01 10:00:00'::timestamp + g * interval '1 second', NULL"
            " FROM generate_series(1, 20) g",
            "INSERT INTO t VALUES (1, 1, 1, 5, '2024-05-01 11:00:00', 'dup'),"
            " (1, 1, 1, 5, '2024-05-01 11:00:00', 'dup')",
            "INSERT INTO t VALUES (NULL, NULL, NULL, NULL, NULL, NULL)",
        ),
        changes=23,
    ),
    "no-primary-key-replica-identity-full": Scenario(
        "CREATE TABLE t (account integer, amount numeric(12,2), note text);"
        " ALTER TABLE t REPLICA IDENTITY FULL",
        (
            "INSERT INTO t VALUES (1, 5, 'dup'), (1, 5, 'dup'), (1, 5, 'dup'), (2, NULL, NULL)",
            "UPDATE t SET note = 'one of three' WHERE ctid = (SELECT min(ctid) FROM t"
            " WHERE note = 'dup')",
            "DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t WHERE note = 'dup')",
            "UPDATE t SET amount = 7 WHERE account = 2",
        ),
        changes=7,
    ),
    "composite-primary-key": Scenario(
        "CREATE TABLE t (account integer, seq integer, amount numeric(12,2) NOT NULL,"
        " note text, PRIMARY KEY (account, seq))",
        (
            "INSERT INTO t SELECT a, s, a * 100 + s, 'a' || a || 's' || s"
            " FROM generate_series(1, 3) a, generate_series(1, 3) s",
            "UPDATE t SET seq = 10 WHERE account = 1 AND seq = 1",
            "UPDATE t SET account = 4 WHERE account = 2 AND seq = 2",
            "UPDATE t SET amount = amount + 0.01 WHERE seq = 3",
            "DELETE FROM t WHERE account = 3 AND seq = 1",
            "INSERT INTO t VALUES (1, 1, 0.5, 'reuses (1,1)'), (3, 1, 0.7, 'reuses (3,1)')",
            "UPDATE t SET account = 2, seq = 2 WHERE account = 4 AND seq = 2",
        ),
        changes=18,
    ),
    "truncate": Scenario(
        LEDGER_DDL,
        (
            "INSERT INTO t SELECT g, g, 'before truncate' FROM generate_series(1, 3) g",
            "TRUNCATE t",
            "INSERT INTO t VALUES (2, 22, 'after truncate'), (4, 44, 'after truncate')",
            "UPDATE t SET amount = 45 WHERE id = 4",
            "BEGIN; INSERT INTO t VALUES (5, 5, 'truncated in its transaction'); TRUNCATE t;"
            " INSERT INTO t VALUES (6, 6, 'survivor');"
            " UPDATE t SET note = 'survivor, updated' WHERE id = 6; COMMIT",
        ),
        changes=11,
    ),
    "value-types": Scenario(
        "CREATE TABLE t (id integer PRIMARY KEY, big bigint, small smallint,"
        " amount numeric(20,8), plain numeric, ratio double precision, r real, flag boolean,"
        " born date, at timestamptz, local_at timestamp, span interval, body text,"
        " code char(5), tags text[], meta jsonb, raw bytea, addr inet, uid uuid)",
        (
            "INSERT INTO t VALUES (1, 9223372036854775807, -32768, 123456789012.12345678,"
            " 0.00000000000000000001, 0.1, 3.14, true, '2024-02-29',"
            " '2024-05-01 12:00:00.123456+02', '2024-05-01 12:00:00.5', '1 day 02:03:04.5',"
            " E'tab\\there\\nnew line \\\\backslash \\\\N ''quoted'' \"dq\" ünïcødé 💸',"
            ' \'ab\', \'{"a b","c,d","\\"q\\"",NULL}\','
            ' \'{"fee": 0.25, "nested": {"k": [1, 2.50, "x"]}}\','
            " '\\x00ff5c0a', '10.0.0.1', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
            "INSERT INTO t (id) VALUES (2)",
            "INSERT INTO t VALUES (3, -1, 0, 0.00000001, -0.0, -1.5e-300, -0, false,"
            " '0001-01-01', 'infinity', '-infinity', '-1 mon', '', '', '{}', '{}', '\\x',"
            " '::1', '00000000-0000-0000-0000-000000000000')",
            "UPDATE t SET body = E'line1\\r\\nline2', meta = '[null, \"\"]' WHERE id = 3",
        ),
        changes=4,
    ),
}


@pytest.mark.parametrize("batch_size", [20_000, 1], ids=["one-batch", "batch-per-txn"])
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_rebuilt_table_equals_the_dropped_table(
    db: Database, scenario: Scenario, batch_size: int
) -> None:
    db.execute(scenario.ddl)
    db.create_slot()
    run_script(db, scenario.steps)
    rows = drop_with_truth(db)
    assert rows > 0

    result = recover_table(db, batch_size=batch_size)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert result.rows == rows
    assert result.changes == scenario.changes
    assert result.into == "public.t_recovered"
    assert result.no_row == 0


LONG = "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400)"


@pytest.mark.parametrize("batch_size", [20_000, 1], ids=["one-batch", "batch-per-txn"])
def test_toasted_values_survive_updates_of_other_columns(db: Database, batch_size: int) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, note text, amount numeric(12,2), s text)")
    db.create_slot()
    run_script(
        db,
        [
            f"INSERT INTO t VALUES (1, ({LONG}), 10, 'new'), (2, ({LONG}), 20, 'new'),"
            " (3, 'short', 30, 'new')",
            "UPDATE t SET s = 'settled' WHERE id = 1",
            "UPDATE t SET amount = amount + 1",
            "UPDATE t SET id = 20 WHERE id = 2",
            "BEGIN; UPDATE t SET s = 'twice' WHERE id = 1; UPDATE t SET amount = 0 WHERE id = 1;"
            " COMMIT",
            f"UPDATE t SET note = ({LONG}) WHERE id = 20",
            "UPDATE t SET s = 'after a new long value' WHERE id = 20",
            "UPDATE t SET note = note || ' tail' WHERE id = 3",
        ],
    )

    drop_with_truth(db)
    # The workload means something only if wal2json really left the long value out (peek after
    # the DROP: its commit flushes the WAL, so every earlier transaction is decodable).
    messages = [
        json.loads(data)
        for (data,) in db.execute(
            "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, 'format-version', '2')",
            (SLOT,),
        )
    ]
    omitted = [
        m
        for m in messages
        if m["action"] == "U" and "note" not in {c["name"] for c in m["columns"]}
    ]
    assert len(omitted) >= 6
    assert db.scalar("SELECT min(length(note)) FROM truth WHERE id <> 3") > 8192

    recover_table(db, batch_size=batch_size)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    query = "SELECT id, length(note), md5(note) FROM {} ORDER BY id"
    assert db.execute(query.format("t_recovered")) == db.execute(query.format("truth"))
    assert db.scalar("SELECT count(*) FROM t_recovered WHERE note IS NULL") == 0


# -- stop points -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lsn", "xid", "time"])
def test_stop_point_leaves_out_the_stop_transaction_and_later(
    db: Database, kind: str, read_mode: str
) -> None:
    work = stop_workload(db)
    stop = {
        "lsn": StopPoint(lsn=work.lsn),
        "xid": StopPoint(xid=work.stop_xid),
        "time": StopPoint(time=work.time),
    }[kind]

    result = recover_table(db, stop=stop)

    assert differences(db, "expected", "t_recovered") == (0, 0)
    assert result.transactions == 2
    assert result.changes == 5
    assert result.stopped_before is not None
    xid, at = result.stopped_before
    if kind == "xid" or xid == work.stop_xid:
        assert xid == work.stop_xid
    else:
        # A background transaction (autovacuum's ANALYZE takes an xid) committed between the
        # stop LSN or time and the workload's next transaction: it is the first one left out.
        assert xid is not None and at is not None
        assert kind == "time" or at >= work.lsn


@pytest.mark.parametrize(
    ("kind", "offset", "expected"),
    [
        ("lsn", 0, "expected"),
        ("lsn", 1, "expected_next"),
        ("time", 0, "expected"),
        ("time", 1, "expected_next"),
    ],
    ids=["lsn-at-commit", "lsn-after-commit", "time-at-commit", "time-after-commit"],
)
def test_stop_point_boundary_is_the_commit_record(
    db: Database, kind: str, offset: int, expected: str, read_mode: str
) -> None:
    """A stop exactly at a transaction's commit (LSN or time) leaves it out; one unit later
    lets it in."""
    db.execute(LEDGER_DDL)
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')"])
    snapshot(db, "t", "expected")
    xid = in_transaction(
        db,
        "UPDATE t SET amount = 3 WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        "INSERT INTO t VALUES (3, 3, 'c')",
    )
    snapshot(db, "t", "expected_next")
    run_script(db, ["INSERT INTO t VALUES (4, 4, 'd')", "DROP TABLE t"])
    commits = stream_commits(db)
    position = next(i for i, c in enumerate(commits) if c.xid == xid)
    commit = commits[position]
    stop = (
        StopPoint(lsn=Lsn(commit.commit_lsn + offset))
        if kind == "lsn"
        else StopPoint(time=commit.commit_time + timedelta(microseconds=offset))
    )

    result = recover_table(db, stop=stop)

    assert differences(db, expected, "t_recovered") == (0, 0)
    assert result.stopped_before is not None
    assert result.stopped_before == (
        commits[position + offset].xid,
        commits[position + offset].commit_lsn,
    )


def test_stop_xid_follows_commit_order_not_xid_order(db: Database) -> None:
    """Like recovery_target_xid: what commits after the stop transaction is out, even with a
    smaller xid; what commits before it is in, even with a larger one."""
    db.execute(LEDGER_DDL)
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 1, 'before everything')"])
    with db.connect() as early, db.connect() as stopper, db.connect() as late:
        xids = []
        for conn, row in ((early, 10), (stopper, 20), (late, 30)):
            conn.execute("BEGIN")
            xids.append(int(conn.execute("SELECT txid_current()").fetchall()[0][0]))
            conn.execute("INSERT INTO t VALUES (%s, %s, 'interleaved')", (row, row))
        late.execute("COMMIT")
        snapshot(db, "t", "expected")
        stopper.execute("COMMIT")
        early.execute("COMMIT")
    run_script(db, ["DROP TABLE t"])
    early_xid, stop_xid, late_xid = xids
    assert early_xid < stop_xid < late_xid

    result = recover_table(db, stop=StopPoint(xid=stop_xid))

    assert differences(db, "expected", "t_recovered") == (0, 0)
    assert db.execute("SELECT id FROM t_recovered ORDER BY id") == [(1,), (30,)]
    assert result.stopped_before is not None
    assert result.stopped_before[0] == stop_xid


def _aborted_xid(db: Database) -> int:
    with db.connect() as conn:
        conn.execute("BEGIN")
        row = conn.execute("SELECT txid_current()").fetchone()
        conn.execute("INSERT INTO t VALUES (99, 99, 'aborted')")
        conn.execute("ROLLBACK")
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("which", ["aborted", "never-assigned"])
def test_stop_xid_that_never_commits_is_refused(db: Database, which: str) -> None:
    db.execute(LEDGER_DDL)
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 1, 'a')"])
    aborted = _aborted_xid(db)
    run_script(db, ["INSERT INTO t VALUES (2, 2, 'b')", "DROP TABLE t"])
    xid = aborted if which == "aborted" else aborted + 100_000

    with source_untouched(db), pytest.raises(StopPointError, match=f"transaction {xid} "):
        recover(db.dsn, SLOT, TableName("public", "t"), stop=StopPoint(xid=xid))


def test_failed_stop_xid_leaves_nothing_that_looks_complete(db: Database) -> None:
    """The run failed, so the target must not hold a finished-looking rebuild past the stop the
    user asked for; rerunning with the right xid must then work without --force."""
    db.execute(LEDGER_DDL)
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 1, 'a')"])
    aborted = _aborted_xid(db)
    snapshot(db, "t", "expected")
    good = in_transaction(db, "INSERT INTO t VALUES (2, 2, 'the disaster')")
    run_script(db, ["DROP TABLE t"])
    with pytest.raises(StopPointError):
        recover(db.dsn, SLOT, TableName("public", "t"), stop=StopPoint(xid=aborted))

    assert not table_exists(db, "t_recovered")
    recover_table(db, stop=StopPoint(xid=good))
    assert differences(db, "expected", "t_recovered") == (0, 0)


@pytest.mark.parametrize("where", ["before-the-slot", "at-the-slot-start", "after-the-wal-end"])
def test_stop_lsn_outside_the_stream_is_refused(db: Database, where: str) -> None:
    db.execute(LEDGER_DDL)
    before = Lsn.parse(db.lsn())
    db.create_slot()
    start = Lsn.parse(db.slot_position()[0])
    run_script(db, ["INSERT INTO t VALUES (1, 1, 'a')", "DROP TABLE t"])
    lsn = {
        "before-the-slot": before,
        "at-the-slot-start": start,
        "after-the-wal-end": Lsn(Lsn.parse(db.lsn()) + (1 << 32)),
    }[where]

    with source_untouched(db), pytest.raises(StopPointError, match=str(lsn)):
        recover(db.dsn, SLOT, TableName("public", "t"), stop=StopPoint(lsn=lsn))
    assert not table_exists(db, "t_recovered")


# -- read-only toward the source ---------------------------------------------------------------


def _small_workload(db: Database) -> None:
    db.execute(LEDGER_DDL)
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, g, 'row ' || g FROM generate_series(1, 10) g",
            "UPDATE t SET amount = amount * 2 WHERE id % 3 = 0",
            "DELETE FROM t WHERE id = 5",
        ],
    )
    drop_with_truth(db)


def test_orphan_copy_slot_is_swept(db: Database) -> None:
    _small_workload(db)
    orphan = "walrecover_999999_deadbeef"
    db.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (SLOT, orphan))
    assert db.leftover_copies() == [orphan]

    result = recover_table(db)  # also asserts that no walrecover_ slot is left

    assert result.swept_slots == (orphan,)
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_a_rerun_answered_from_the_record_sweeps_orphan_copies(db: Database) -> None:
    """A run killed after its last commit leaves its copy slot; the rerun finds the recovery
    complete and answers without opening the slot, so it swept nothing (the oracle, seed
    1357911: a copy left behind). It sweeps now."""
    _small_workload(db)
    first = recover_table(db)
    assert first.swept_slots == ()
    orphan = "walrecover_999999_deadbeef"
    db.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (SLOT, orphan))

    again = recover_table(db)  # also asserts that no walrecover_ slot is left

    assert again.already_complete
    assert again.swept_slots == (orphan,)
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_copy_slot_of_a_live_backend_is_not_swept(db: Database) -> None:
    """A copy whose backend is alive may belong to a concurrent run: it must be left alone."""
    _small_workload(db)
    with db.connect() as holder:
        pid = holder.info.backend_pid
        live = f"walrecover_{pid}_cafef00d"
        db.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (SLOT, live))
        before = db.slot_position()

        result = recover(db.dsn, SLOT, TableName("public", "t"))

        assert db.leftover_copies() == [live]
        assert result.swept_slots == ()
        assert db.slot_position() == before
        db.execute("SELECT pg_drop_replication_slot(%s)", (live,))


@pytest.mark.parametrize("existing", ["user-table", "earlier-recovery"])
def test_existing_target_is_refused_and_force_rebuilds_it(db: Database, existing: str) -> None:
    _small_workload(db)
    if existing == "user-table":
        db.execute("CREATE TABLE t_recovered (x integer); INSERT INTO t_recovered VALUES (42)")
    else:
        recover_table(db)
    kept = db.execute("SELECT * FROM t_recovered ORDER BY 1")
    assert kept

    if existing == "user-table":
        with source_untouched(db), pytest.raises(TargetExists, match="--force"):
            recover(db.dsn, SLOT, TableName("public", "t"))
    else:
        # The same command again: already complete, nothing read or written.
        again = recover_table(db)
        assert again.already_complete
        with source_untouched(db), pytest.raises(TargetExists, match=r"another command.*--force"):
            recover(db.dsn, SLOT, TableName("public", "t"), stop=StopPoint(lsn=Lsn(1 << 40)))

    assert db.execute("SELECT * FROM t_recovered ORDER BY 1") == kept
    first = recover_table(db, force=True)
    assert differences(db, "truth", "t_recovered") == (0, 0)
    # The slot was never consumed: the same recovery can be run again and again.
    second = recover_table(db, force=True)
    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert (second.transactions, second.changes) == (first.transactions, first.changes)


def test_into_the_dropped_table_itself_is_refused(db: Database) -> None:
    _small_workload(db)
    with source_untouched(db), pytest.raises(WalrecoverError, match="new table"):
        recover(db.dsn, SLOT, TableName("public", "t"), into=TableName("public", "t"))


@pytest.mark.parametrize(
    ("schema", "name"),
    [("public", "Ledger"), ("Fin Ops", "ledger.2024"), ("odd", "it's, a *table*")],
)
def test_table_names_that_need_quoting(db: Database, schema: str, name: str) -> None:
    table = TableName(schema, name)
    if schema != "public":
        db.execute(f"CREATE SCHEMA {sql.Identifier(schema).as_string(None)}")
    db.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, v text)")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")  # a decoy with rows too
    db.create_slot()
    run_script(
        db,
        [
            f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 5) g",
            "INSERT INTO t SELECT g, 'decoy' FROM generate_series(1, 5) g",
            f"UPDATE {table} SET v = 'changed' WHERE id = 2",
            f"CREATE UNLOGGED TABLE truth AS SELECT * FROM {table}",
            f"DROP TABLE {table}",
        ],
    )
    into = TableName(schema, f"{name}_recovered")

    with source_untouched(db):
        result = recover(db.dsn, SLOT, table)

    assert result.into == str(into)
    assert result.changes == 6
    assert differences(db, "truth", into) == (0, 0)


def test_damaged_table_with_recent_asynchronous_commits_is_complete(
    db: Database, read_mode: str
) -> None:
    """A damaged (not dropped) table: no DROP forces a WAL flush, commits are asynchronous
    (synchronous_commit = off), and the run starts right after them. Every transaction committed
    before the run started must be in the rebuilt table."""
    db.execute(LEDGER_DDL)
    db.create_slot()
    db.execute("INSERT INTO t SELECT g, g, 'old' FROM generate_series(1, 5) g")
    db.execute("CHECKPOINT")  # everything so far is on disk; what follows is recent
    with db.connect() as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("INSERT INTO t VALUES (6, 6, 'recent')")
        conn.execute("UPDATE t SET note = 'damaged by a bad migration'")

    result = recover_table(db)

    assert differences(db, "t", "t_recovered") == (0, 0)
    assert result.changes == 12
