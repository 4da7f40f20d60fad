"""Which row an update or delete changes: exactly the one its old image names, in every plugin.

A keyless table (``REPLICA IDENTITY FULL``) may hold duplicate rows, and rows that are equal
under ``=`` but print differently (numeric ``1.5`` and ``1.50``, float ``-0`` and ``0``, jsonb
``{"a": 1.0}`` and ``{"a": 1.00}``), and columns without an equality operator (json, point). An
old row image identifies ONE row, by the text the stream printed. Every test snapshots the table
before the DROP and compares the rebuilt table with it as text, row for row, duplicates counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from every_way import WAY_IDS, WAYS, capture_of, create_source, recover_way, slot_name
from fault_helpers import LSN_RE, run
from helpers import Database, drop_with_truth, in_transaction, run_script
from psycopg import sql

from walrecover.rebuild.recover import recover_capture
from walrecover.stream.model import TableName

#: 3,200 characters that neither compress nor fit a btree index entry (an index holds ~2,700).
BIG = "(SELECT string_agg(md5(g::text || {seed}), '') FROM generate_series(1, 100) g)"


def text_differences(db: Database, expected: str, actual: str) -> tuple[int, int]:
    """EXCEPT ALL both ways on each row's text (works for json and point, and tells 1.5 from
    1.50): (rows of ``expected`` missing from ``actual``, rows of ``actual`` not expected)."""
    query = sql.SQL(
        "SELECT (SELECT count(*) FROM (SELECT row_e::text FROM {e} row_e EXCEPT ALL"
        " SELECT row_a::text FROM {a} row_a) x),"
        " (SELECT count(*) FROM (SELECT row_a::text FROM {a} row_a EXCEPT ALL"
        " SELECT row_e::text FROM {e} row_e) y)"
    ).format(e=sql.Identifier(expected), a=sql.Identifier(actual))
    row = db.execute(query.as_string(None))[0]
    return int(row[0]), int(row[1])


def by_ctid(condition: str) -> str:
    """A WHERE clause matching exactly the first row (in physical order) that ``condition``
    matches: how one of several identical rows is changed."""
    return f"ctid = (SELECT min(ctid) FROM t WHERE {condition})"


@pytest.mark.parametrize(("plugin", "kind"), WAYS, ids=WAY_IDS)
def test_an_old_row_image_changes_exactly_one_of_its_duplicates(
    db: Database, tmp_path: Path, plugin: str, kind: str
) -> None:
    """Issue 8 A2: deleting one of three identical rows and updating one of two left the
    rebuilt table with ``2:7 2:7`` (every duplicate changed) through pgoutput and
    test_decoding, which mark every column of a REPLICA IDENTITY FULL table as its key."""
    db.execute(
        "CREATE TABLE t (account integer, amount numeric(12,2));"
        " ALTER TABLE t REPLICA IDENTITY FULL"
    )
    create_source(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 10), (1, 10), (1, 10), (2, 5), (2, 5)",
            f"DELETE FROM t WHERE {by_ctid('account = 1')}",
            f"UPDATE t SET amount = 7 WHERE {by_ctid('account = 2')}",
        ],
    )
    assert drop_with_truth(db) == 4

    result = recover_way(db, plugin, kind, tmp_path)

    assert text_differences(db, "truth", "t_recovered") == (0, 0)
    assert (result.rows, result.no_row, result.unproven) == (4, 0, ())
    assert db.execute("SELECT account, amount::text FROM t_recovered ORDER BY 1, 2") == [
        (1, "10.00"),
        (1, "10.00"),
        (2, "5.00"),
        (2, "7.00"),
    ]


@pytest.mark.parametrize(
    ("plugin", "kind", "options"),
    [*((p, k, None) for p, k in WAYS), ("wal2json", "slot", {"format-version": "1"})],
    ids=[*WAY_IDS, "wal2json-v1-slot"],
)
def test_rows_equal_under_eq_are_told_apart_by_their_text(
    db: Database, tmp_path: Path, plugin: str, kind: str, options: dict[str, str] | None
) -> None:
    """Issue 8 A14 and A7: the old image names its row by the text the stream printed, not by
    ``=`` (which finds 1.50 for 1.5, 0 for -0, {"a": 1.0} for {"a": 1.00}), and it works for
    columns without an equality operator (json, point failed with "operator does not exist").
    wal2json format 1 says nothing of the identity: an old image printing a json or point
    column is REPLICA IDENTITY FULL (it matched by ``=`` as a key: exit 1, the oracle, seed
    8642097)."""
    if options:
        db.execute("CREATE EXTENSION pg_walinspect")  # format 1's TRUNCATE check needs the WAL
    db.execute(
        "CREATE TABLE t (n numeric, f float8, jb jsonb, js json, p point, note text);"
        " ALTER TABLE t REPLICA IDENTITY FULL"
    )
    create_source(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES"
            " (1.5, 0, '{\"a\": 1.0}', '{\"x\": 1}', '(1,1)', 'a'),"
            " (1.50, 0, '{\"a\": 1.0}', '{\"x\": 1}', '(1,1)', 'a'),"
            " (2, 0, '{\"a\": 1}', '{\"x\": 1}', '(1,1)', 'b'),"
            " (2, '-0', '{\"a\": 1}', '{\"x\": 1}', '(1,1)', 'b'),"
            " (3, 1, '{\"a\": 1.0}', '{\"x\": 1}', '(1,1)', 'c'),"
            " (3, 1, '{\"a\": 1.00}', '{\"x\": 1}', '(1,1)', 'c'),"
            " (4, 1, '{}', '{\"x\": 1}', '(2,2)', 'd'),"
            " (4, 1, '{}', '{\"x\":  1}', '(2,2)', 'd'),"
            " (5, 1, '{}', '[1]', '(3,3)', 'e'),"
            " (5, 1, '{}', '[1]', '(3,3)', 'e')",
            # Each statement changes the SECOND of two rows that are equal under "=".
            "DELETE FROM t WHERE n::text = '1.50'",
            "UPDATE t SET note = 'minus zero' WHERE f::text = '-0'",
            "UPDATE t SET note = 'two zeros' WHERE jb::text = '{\"a\": 1.00}'",
            # json keeps its input text: only the row with two spaces.
            "UPDATE t SET note = 'two spaces' WHERE js::text = '{\"x\":  1}'",
            # Identical rows with a json and a point column: one of them.
            f"DELETE FROM t WHERE {by_ctid('n = 5')}",
        ],
    )
    assert drop_with_truth(db) == 8

    result = recover_way(db, plugin, kind, tmp_path, plugin_options=options)

    assert text_differences(db, "truth", "t_recovered") == (0, 0)
    assert (result.rows, result.no_row, result.unproven) == (8, 0, ())


@pytest.mark.parametrize(("plugin", "kind"), WAYS, ids=WAY_IDS)
def test_an_old_image_without_its_null_columns_is_not_a_key(
    db: Database, tmp_path: Path, plugin: str, kind: str
) -> None:
    """test_decoding's old image of a REPLICA IDENTITY FULL row skips NULL columns, so the first
    one looks like a key (here ``a, c``). Taken as a key, the delete of ``(1, NULL, x)`` also
    deleted ``(1, y, x)``; the row whose unprinted columns are NULL is the one it names."""
    db.execute("CREATE TABLE t (a integer, b text, c text); ALTER TABLE t REPLICA IDENTITY FULL")
    create_source(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, NULL, 'x'), (1, 'y', 'x'), (1, 'y', 'x')",
            "DELETE FROM t WHERE b IS NULL",
            "INSERT INTO t VALUES (2, NULL, NULL), (2, 'z', NULL), (2, NULL, 'w')",
            "UPDATE t SET a = 3 WHERE a = 2 AND b IS NULL AND c IS NULL",
            f"UPDATE t SET c = 'v' WHERE {by_ctid('a = 1')}",
            "INSERT INTO t VALUES (1, 'y', 'x')",
            "DELETE FROM t WHERE a = 2 AND c IS NULL",
        ],
    )
    assert drop_with_truth(db) == 5

    result = recover_way(db, plugin, kind, tmp_path)

    assert text_differences(db, "truth", "t_recovered") == (0, 0)
    assert (result.rows, result.no_row, result.unproven) == (5, 0, ())


# -- inserts move ahead of updates and deletes only when they cannot touch the same row ---------


def _key_reuse_with_toast(db: Database) -> None:
    """Issue 8 A16: a key moved away and reused while the key is still unknown to replay."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, body text, note text);"
        " ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL"
    )
    db.create_slot(slot_name(db, "wal2json"), "wal2json")
    run_script(
        db,
        [
            "INSERT INTO t VALUES (240, 'x', 'x')",
            f"INSERT INTO t VALUES (33, {BIG.format(seed=1)}, 'a')",
            "UPDATE t SET id = -7 WHERE id = 33",
            "INSERT INTO t VALUES (33, 'B', 'c')",
            "UPDATE t SET body = 'C' WHERE id = 240",
        ],
    )
    assert drop_with_truth(db) == 3


#: The options of the issue's capture: no include-pk, so the key is unknown until an old key.
WITHOUT_PK = {
    "format-version": "2",
    "include-xids": "1",
    "include-timestamp": "1",
    "include-lsn": "1",
}


def test_an_insert_waits_for_updates_whose_row_is_unknown_capture(
    db: Database, tmp_path: Path
) -> None:
    """A wal2json capture without include-pk: the insert of key 33 (reused) was copied before
    the update that moved the old 33 to -7, so the update moved the new row instead."""
    _key_reuse_with_toast(db)
    capture = tmp_path / "capture"
    flat = [item for pair in WITHOUT_PK.items() for item in pair]
    rows = db.execute(
        "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        (slot_name(db, "wal2json"), flat),
    )
    capture.write_text("".join(row[0] + "\n" for row in rows))

    result = recover_capture(
        capture, "wal2json", TableName("public", "t"), target=db.dsn, options=WITHOUT_PK
    )

    assert text_differences(db, "truth", "t_recovered") == (0, 0)
    assert (result.rows, result.unproven) == (3, ())


def test_an_insert_waits_for_updates_whose_row_is_unknown_slot(db: Database) -> None:
    """The same through a slot read with include-pk off."""
    _key_reuse_with_toast(db)

    result = recover_way(db, "wal2json", "slot", Path(), plugin_options={"include-pk": "0"})

    assert text_differences(db, "truth", "t_recovered") == (0, 0)
    assert (result.rows, result.unproven) == (3, ())


@pytest.mark.parametrize(("plugin", "kind"), WAYS, ids=WAY_IDS)
def test_a_keyless_insert_waits_for_a_delete_of_the_same_row(
    db: Database, tmp_path: Path, plugin: str, kind: str
) -> None:
    """A keyless row that predates the slot is deleted, then the same row is inserted: copied
    first, the insert would give the delete a row to find, and the rebuilt table would lack
    it (the delete of a row the stream never showed must find nothing)."""
    db.execute("CREATE TABLE t (a integer, b text); ALTER TABLE t REPLICA IDENTITY FULL")
    db.execute("INSERT INTO t VALUES (1, 'old')")
    create_source(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (2, 'new')",
            "BEGIN; DELETE FROM t WHERE a = 1; INSERT INTO t VALUES (1, 'old'); COMMIT",
        ],
    )
    drop_with_truth(db)

    result = recover_way(db, plugin, kind, tmp_path)

    assert db.execute("SELECT a, b FROM t_recovered ORDER BY a") == [(1, "old"), (2, "new")]
    assert result.no_row == 1


# -- a learned key never makes the recovery fail ---------------------------------------------------


@pytest.mark.parametrize(("plugin", "kind"), WAYS, ids=WAY_IDS)
def test_a_value_too_big_for_an_index_is_recovered(
    db: Database, tmp_path: Path, plugin: str, kind: str
) -> None:
    """Issue 8 A19: test_decoding, a primary key, REPLICA IDENTITY FULL and a 3 kB value. The
    old image (NULL note skipped) looked like a key (id, body); indexing it failed with "index
    row size ... exceeds btree maximum", reported as a lost connection to rerun."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, body text, note text);"
        " ALTER TABLE t REPLICA IDENTITY FULL; ALTER TABLE t ALTER COLUMN body SET STORAGE"
        " EXTERNAL"
    )
    create_source(db, plugin)
    run_script(
        db,
        [
            f"INSERT INTO t VALUES (1, {BIG.format(seed=1)}, NULL)",
            "UPDATE t SET note = 'n' WHERE id = 1",
            f"INSERT INTO t VALUES (2, {BIG.format(seed=2)}, NULL)",
            f"INSERT INTO t VALUES (3, {BIG.format(seed=3)}, 'x')",
            "UPDATE t SET note = 'm' WHERE id = 2",
            "DELETE FROM t WHERE id = 3",
        ],
    )
    assert drop_with_truth(db) == 2

    result = recover_way(db, plugin, kind, tmp_path)

    assert text_differences(db, "truth", "t_recovered") == (0, 0)
    assert (result.rows, result.no_row, result.unproven) == (2, 0, ())


# -- a change the target refuses names the change, and advises no rerun ---------------------------

#: The rebuilt table's definition with an index no 3 kB value fits in.
TOO_SMALL_INDEX = (
    "CREATE TABLE t_recovered (id integer PRIMARY KEY, body text, note text);"
    " CREATE INDEX ON t_recovered (body)"
)


def _big_value_workload(db: Database, plugin: str) -> int:
    """Three inserts, the second with a 3 kB value; returns that transaction's xid."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, body text, note text);"
        " ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL"
    )
    create_source(db, plugin)
    run_script(db, ["INSERT INTO t VALUES (1, 'small', 'a')"])
    xid = in_transaction(db, f"INSERT INTO t VALUES (2, {BIG.format(seed=2)}, 'b')")
    run_script(db, ["INSERT INTO t VALUES (3, 'small', 'c')"])
    drop_with_truth(db)
    return xid


@pytest.mark.parametrize("kind", ["slot", "capture"])
def test_a_change_the_target_refuses_is_named_without_advising_a_rerun(
    db: Database, tmp_path: Path, kind: str
) -> None:
    """The --ddl indexes a column the big value cannot fit in: PostgreSQL's "index row size
    exceeds btree maximum" (SQLSTATE 54000, which psycopg reports as an OperationalError) was
    reported as "lost the target connection ... rerun the same command to resume"."""
    plugin = "wal2json" if kind == "slot" else "test_decoding"
    xid = _big_value_workload(db, plugin)
    ddl = tmp_path / "ddl.sql"
    ddl.write_text(TOO_SMALL_INDEX)
    if kind == "slot":
        source = ["-d", db.dsn, "--slot", slot_name(db, plugin)]
    else:
        capture = capture_of(db, plugin, tmp_path / "capture")
        source = ["--from-file", str(capture), "--plugin", plugin, "--target", db.dsn]

    done = run(["recover", *source, "--table", "public.t", "--ddl", str(ddl)])

    assert done.returncode == 1, done.describe()
    (line,) = done.lines
    assert line.startswith("walrecover: error: "), line
    assert "index row size" in line and f"transaction {xid}" in line, line
    if kind == "slot":
        assert LSN_RE.search(line), line
    assert "rerun" not in line and "lost" not in line and "connection" not in line, line
    assert "--ddl" in line, line
