"""``walrecover decode`` with a start: ``--start-at-lsn/-xid/-time`` and ``--xid``.

The incident these exist for: a bad ``DELETE`` of 33 rows out of 100. Undo SQL of just that
transaction, applied with psql, must bring back exactly those 33 rows and touch nothing else;
undo SQL without a start (which used to reverse the slot's whole history and empty the table)
is refused. The start mirrors the stop point: a start and a stop at the same place split the
stream without overlap or gap.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from click.testing import Result
from helpers import (
    Database,
    cli,
    differences,
    in_transaction,
    snapshot,
    source_untouched,
    stderr_lines,
    stop_workload,
    stream_commits,
)

from walrecover.db import safe_dsn
from walrecover.drill.cluster import Cluster
from walrecover.stream.lsn import Lsn

#: Plugins that show a REPLICA IDENTITY FULL old row unambiguously (see test_decode_cli).
PLUGINS = {
    "wal2json": [],
    "pgoutput": ["-o", "publication_names=pub"],
}


def bad_delete(db: Database, plugin: str) -> int:
    """100 accounts (REPLICA IDENTITY FULL), a slot, a good update, a bad 33-row DELETE, then
    later good work. ``before`` is the table just before the DELETE; returns its xid."""
    db.execute(
        "CREATE TABLE accounts (id integer PRIMARY KEY, owner text, balance numeric(12,2),"
        " note text)"
    )
    db.execute("ALTER TABLE accounts REPLICA IDENTITY FULL")
    db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    db.create_slot("cdc", plugin)
    db.execute(
        "INSERT INTO accounts SELECT i, 'owner ' || i, i * 1.25, CASE WHEN i % 7 = 0 THEN NULL"
        " ELSE E'it''s\\n#' || i END FROM generate_series(1, 100) i"
    )
    db.execute("UPDATE accounts SET balance = balance + 0.01 WHERE id <= 10")
    snapshot(db, "accounts", "before")
    xid = in_transaction(db, "DELETE FROM accounts WHERE id % 3 = 0")
    assert (
        db.scalar("SELECT count(*) FROM before") - db.scalar("SELECT count(*) FROM accounts") == 33
    )
    # Later, legitimate work the undo must leave alone; ``expected`` is ``before`` with it.
    snapshot(db, "before", "expected")
    for name in ("accounts", "expected"):
        db.execute(f"INSERT INTO {name} VALUES (101, 'late', 5.00, NULL)")
        db.execute(f"UPDATE {name} SET note = 'later' WHERE id = 1")
    return xid


def psql(cluster: Cluster, db: Database, script: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` through psql as a user would pipe it, stopping at the first error."""
    return subprocess.run(
        [
            str(cluster.installation.bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            db.dsn,
        ],
        input=script,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_undo_of_one_bad_delete_restores_exactly_its_33_rows(
    cluster: Cluster, db: Database, plugin: str
) -> None:
    xid = bad_delete(db, plugin)
    snapshot(db, "accounts", "after")  # the damaged table with the later work
    source = ["-d", db.dsn, "--slot", "cdc", *PLUGINS[plugin], "--table", "public.accounts"]
    with source_untouched(db):
        result = cli("decode", *source, "--xid", str(xid), "--format", "undo-sql")
    assert result.exit_code == 0, result.stderr
    script = result.stdout_bytes
    text = script.decode()
    # The header says what the script undoes.
    assert "-- tables: public.accounts" in text
    assert f"-- selected: only transaction {xid}" in text
    assert "-- undoes 33 row changes of 1 transaction (0 insert, 0 update, 33 delete" in text
    assert f"-- first transaction: xid {xid}, commit LSN " in text
    assert f"-- last transaction:  xid {xid}, commit LSN " in text
    assert "CANNOT BE UNDONE" not in text
    assert text.count("INSERT INTO") == 33 and "DELETE" not in text.split("BEGIN;", 1)[1]
    done = psql(cluster, db, script)
    assert done.returncode == 0, done.stderr
    # Exactly the 33 deleted rows came back, and the later work is still there.
    assert differences(db, "accounts", "after") == (33, 0)
    assert differences(db, "accounts", "expected") == (0, 0)


@pytest.mark.parametrize(
    "start",
    [[], ["--stop-before-lsn", "0/1000000"]],
    ids=["no-start", "only-a-stop"],
)
def test_undo_sql_without_a_start_is_refused(db: Database, start: list[str]) -> None:
    bad_delete(db, "wal2json")
    snapshot(db, "accounts", "after")
    with source_untouched(db):
        result = cli("decode", "-d", db.dsn, "--slot", "cdc", "--format", "undo-sql", *start)
    assert result.exit_code == 2, result.stdout[-300:]
    assert result.stdout == ""
    assert "--format undo-sql needs a start" in result.stderr
    assert "--xid" in result.stderr and "--start-at-lsn" in result.stderr
    assert "every change" in result.stderr
    assert differences(db, "after", "accounts") == (0, 0)


# -- a start mirrors the stop point --------------------------------------------------------------

#: How each plugin is read from the stop workload's wal2json slot (the copy is made with it).
VIA = {
    "wal2json": [],
    "test_decoding": ["--via-plugin", "test_decoding"],  # commit LSN and time only at COMMIT
    "pgoutput": ["--via-plugin", "pgoutput", "-o", "publication_names=pub"],
}


def _jsonl(result: Result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("kind", ["lsn", "xid", "time"])
@pytest.mark.parametrize("plugin", list(VIA))
def test_a_start_and_a_stop_at_the_same_place_split_the_stream(
    db: Database, plugin: str, kind: str
) -> None:
    db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    marks = stop_workload(db)
    at = {"lsn": str(marks.lsn), "xid": str(marks.stop_xid), "time": marks.time.isoformat()}[kind]
    source = ["-d", db.dsn, "--slot", "cdc", *VIA[plugin], "--table", "public.t"]
    with source_untouched(db):
        everything = _jsonl(cli("decode", *source))
        before = _jsonl(cli("decode", *source, f"--stop-before-{kind}", at))
        after = _jsonl(cli("decode", *source, f"--start-at-{kind}", at))
        one = _jsonl(cli("decode", *source, "--xid", str(marks.stop_xid)))
    assert before and after
    assert before + after == everything
    assert {json.loads(line)["xid"] for line in after[: len(one)]} == {marks.stop_xid}
    assert after[: len(one)] == one
    assert [json.loads(line)["op"] for line in one] == ["insert", "update"]


def test_a_start_before_a_stop_selects_what_lies_between(db: Database) -> None:
    marks = stop_workload(db)
    commits = stream_commits(db)
    xids = [c.xid for c in commits]
    first = xids.index(marks.stop_xid)
    result = cli(
        "decode",
        "-d",
        db.dsn,
        "--slot",
        "cdc",
        "--start-at-xid",
        str(marks.stop_xid),
        "--stop-before-lsn",
        str(commits[first + 2].commit_lsn),
    )
    lines = [json.loads(line) for line in _jsonl(result)]
    assert [line["xid"] for line in lines] == [xids[first]] * 2 + [xids[first + 1]]


# -- starts the stream never reaches -------------------------------------------------------------


def test_an_xid_that_is_not_in_the_stream_exits_1(db: Database) -> None:
    marks = stop_workload(db)
    aborted = db.scalar("SELECT txid_current()")  # a transaction without changes: not decoded
    for option in ("--xid", "--start-at-xid"):
        with source_untouched(db):
            result = cli("decode", "-d", db.dsn, "--slot", "cdc", option, str(aborted))
        assert result.exit_code == 1, result.stdout[-300:]
        assert result.stdout == ""
        (line,) = stderr_lines(result)
        assert line.startswith(f"walrecover: error: transaction {aborted} does not commit in")
        assert f"check {option}" in line
    # A start after the stop point is never reached either.
    result = cli(
        "decode",
        "-d",
        db.dsn,
        "--slot",
        "cdc",
        "--start-at-xid",
        str(marks.stop_xid),
        "--stop-before-lsn",
        str(marks.lsn),
        "--format",
        "undo-sql",
    )
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = stderr_lines(result)
    assert f"transaction {marks.stop_xid} does not commit in the stream before LSN" in line


def test_an_aborted_xid_is_named_as_aborted(db: Database) -> None:
    stop_workload(db)
    with db.connect() as conn:
        conn.execute("BEGIN")
        row = conn.execute("SELECT txid_current()").fetchone()
        assert row is not None
        xid = int(row[0])
        conn.execute("CREATE TABLE scratch (x int)")
        conn.execute("ROLLBACK")
    result = cli("decode", "-d", db.dsn, "--slot", "cdc", "--xid", str(xid), "--format", "undo-sql")
    assert result.exit_code == 1
    (line,) = stderr_lines(result)
    assert f"transaction {xid} is aborted on the source" in line and "--xid" in line


@pytest.mark.parametrize("where", ["before-the-slot", "after-the-wal", "after-the-last-commit"])
def test_a_start_lsn_outside_the_stream_exits_1(db: Database, where: str) -> None:
    stop_workload(db)
    start, end = Lsn.parse(db.slot_position()[0]), Lsn.parse(db.lsn())
    value = {
        "before-the-slot": Lsn(start - 1),
        "after-the-wal": Lsn(end + (1 << 24)),
        "after-the-last-commit": end,
    }[where]
    with source_untouched(db):
        result = cli("decode", "-d", db.dsn, "--slot", "cdc", "--start-at-lsn", str(value))
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = stderr_lines(result)
    expected = {
        "before-the-slot": f"is before the slot's start ({start})",
        "after-the-wal": "is after the end of the WAL",
        "after-the-last-commit": f"no transaction commits at or after LSN {value}",
    }[where]
    assert expected in line and "--start-at-lsn" in line


def test_a_start_time_after_the_last_commit_exits_1(db: Database) -> None:
    stop_workload(db)
    time.sleep(0.05)
    later = db.scalar("SELECT clock_timestamp()")
    result = cli("decode", "-d", db.dsn, "--slot", "cdc", "--start-at-time", later.isoformat())
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = stderr_lines(result)
    assert "no transaction commits at or after" in line and "--start-at-time" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--xid", "5", "--start-at-xid", "4"], "give one start, not --start-at-xid and --xid"),
        (["--start-at-lsn", "0/1", "--start-at-time", "2024-01-01 00:00+00"], "give one start"),
        (["--xid", "5", "--stop-before-xid", "6"], "--xid selects one transaction"),
        (["--start-at-time", "2024-01-01 10:00"], "has no time zone"),
        (["--start-at-time", "yesterday"], "is not an ISO time"),
        (["--start-at-lsn", "nonsense"], "--start-at-lsn"),
        (["--xid", "0"], "positive"),
        (["--format", "undo-sql", "--stop-before-xid", "6"], "--format undo-sql needs a start"),
    ],
    ids=[
        "two-starts",
        "lsn-and-time",
        "xid-and-stop",
        "no-zone",
        "bad-time",
        "bad-lsn",
        "xid-zero",
        "undo-with-only-a-stop",
    ],
)
def test_start_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = cli("decode", "--slot", "cdc", *args)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    assert message in result.stderr


def test_a_start_not_before_the_stop_exits_1(db: Database) -> None:
    marks = stop_workload(db)
    result = cli(
        "decode",
        "-d",
        db.dsn,
        "--slot",
        "cdc",
        "--start-at-lsn",
        str(marks.lsn),
        "--stop-before-lsn",
        str(marks.lsn),
    )
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = stderr_lines(result)
    assert "is not before the stop point" in line


# -- what the scripts say about themselves -------------------------------------------------------


def test_undo_of_a_keyless_table_changes_one_of_equal_rows(cluster: Cluster, db: Database) -> None:
    """Undoing an insert or update of one of several equal rows (a keyless REPLICA IDENTITY
    FULL table) must touch one row, not every copy."""
    db.execute("CREATE TABLE ledger (account integer, amount numeric(12,2))")
    db.execute("ALTER TABLE ledger REPLICA IDENTITY FULL")
    db.create_slot("cdc", "wal2json")
    db.execute("INSERT INTO ledger VALUES (1, 10), (1, 10), (2, 5), (2, 5)")
    snapshot(db, "ledger", "before")
    xid = in_transaction(
        db,
        "INSERT INTO ledger VALUES (1, 10)",
        "UPDATE ledger SET amount = 7"
        " WHERE ctid = (SELECT min(ctid) FROM ledger WHERE account = 2)",
        "DELETE FROM ledger WHERE ctid = (SELECT min(ctid) FROM ledger WHERE account = 1)",
    )
    result = cli("decode", "-d", db.dsn, "--slot", "cdc", "--xid", str(xid), "--format", "undo-sql")
    assert result.exit_code == 0, result.stderr
    assert "-- undoes 3 row changes of 1 transaction (1 insert, 1 update, 1 delete" in result.stdout
    done = psql(cluster, db, result.stdout_bytes)
    assert done.returncode == 0, done.stderr
    assert differences(db, "before", "ledger") == (0, 0)


def test_undo_header_names_what_cannot_be_undone(db: Database) -> None:
    db.execute("CREATE TABLE plain (id integer PRIMARY KEY, v text)")  # default identity
    db.create_slot("cdc", "wal2json")
    db.execute("INSERT INTO plain VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    first = in_transaction(db, "DELETE FROM plain WHERE id = 1", "UPDATE plain SET v = 'x'")
    last = in_transaction(db, "TRUNCATE plain")
    result = cli(
        "decode",
        "-d",
        db.dsn,
        "--slot",
        "cdc",
        "--start-at-xid",
        str(first),
        "--format",
        "undo-sql",
    )
    assert result.exit_code == 0, result.stderr
    head = result.stdout.split("BEGIN;")[0]
    assert (
        "-- undoes 4 row changes of 2 transactions (0 insert, 2 update, 1 delete, 1 truncate)"
        in head
    )
    assert f"-- first transaction: xid {first}, " in head
    assert f"-- last transaction:  xid {last}, " in head
    assert "-- CANNOT BE UNDONE: 4 row changes (1 delete, 1 truncate, 2 update)" in head
    assert "REPLICA IDENTITY FULL" in head
    (warning,) = stderr_lines(result)
    assert "4 of the 4 row changes cannot be undone" in warning


def test_redo_script_says_what_it_redoes(db: Database) -> None:
    marks = stop_workload(db)
    result = cli(
        "decode",
        "-d",
        db.dsn,
        "--slot",
        "cdc",
        "--table",
        "t",
        "--xid",
        str(marks.stop_xid),
        "--format",
        "sql",
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "-- walrecover redo script",
        f"-- source: slot cdc on {safe_dsn(db.dsn)}",
        "-- tables: public.t",
        f"-- selected: only transaction {marks.stop_xid}, end of stream",
    ]
    assert lines[-3].startswith("-- redoes 2 row changes of 1 transaction (1 insert, 1 update")
    assert lines[-2].startswith(f"-- first transaction: xid {marks.stop_xid}, commit LSN ")


@pytest.mark.parametrize("fmt", ["undo-sql", "sql"])
def test_a_line_break_in_a_name_does_not_end_a_comment(
    cluster: Cluster, db: Database, fmt: str
) -> None:
    """The scripts' comments name tables (header, '-- cannot undo ...'): a name with a line
    break would end the comment and run the rest of the name as SQL."""
    name = "x\nDROP TABLE victim; --"
    quoted = '"' + name + '"'
    db.execute("CREATE TABLE victim (id integer)")
    db.execute(f"CREATE TABLE {quoted} (id integer, v text)")  # keyless: no redo of its update
    db.create_slot("cdc", "test_decoding")  # wal2json cannot filter on such a name
    xid = in_transaction(
        db, f"INSERT INTO {quoted} VALUES (1, 'a')", f"UPDATE {quoted} SET v = 'b'"
    )
    result = cli(
        "decode",
        "-d",
        db.dsn,
        "--slot",
        "cdc",
        "--table",
        quoted,
        "--xid",
        str(xid),
        "--format",
        fmt,
    )
    assert result.exit_code == 0, result.stderr
    assert "x\\nDROP TABLE victim; --" in result.stdout  # shown, escaped, in the comments
    done = psql(cluster, db, result.stdout_bytes)
    assert done.returncode == 0, done.stderr
    assert db.scalar("SELECT to_regclass('victim') IS NOT NULL")
