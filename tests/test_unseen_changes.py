"""Changes a stream cannot show, against the real server (issue 8: A4 capture, C17, D1).

Each test snapshots the truth before the DROP and runs the CLI: the recovery is either exactly
the truth with exit 0, or ends with exit 4 (``not proven exact``) naming what the stream could
not show and what to do.

- D1: wal2json ``format-version 1`` prints a ``TRUNCATE`` as a transaction without change, so a
  recovery through it puts the truncated rows back: exit 4 when such a transaction lies between
  the table's changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from capture_helpers import CAPTURE_OPTIONS, capture_dir, o_args, pg_recvlogical
from click.testing import Result
from fault_helpers import peek_capture
from helpers import SLOT, Database, cli, differences, drop_with_truth, run_script, source_untouched

from walrecover.errors import EXIT_UNPROVEN


def unproven(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "not proven exact" in line]


# -- D1: format 1 cannot carry TRUNCATE ----------------------------------------------------------


FORMAT_1 = {
    "format-version": "1",
    "include-xids": "1",
    "include-timestamp": "1",
    "include-lsn": "1",
}


def _recover_format_1(db: Database, source: str, tmp_path: Path) -> Result:
    """``recover`` of public.t through wal2json format 1: the slot, or a capture of it."""
    if source == "slot":
        args = ["-d", db.dsn, "--slot", SLOT, "-o", "format-version=1"]
    else:
        path = tmp_path / "v1.capture"
        peek_capture(db.dsn, SLOT, "wal2json", path, options=FORMAT_1)
        args = ["--from-file", str(path), "--plugin", "wal2json"]
        args += [f"-o{name}={value}" for name, value in FORMAT_1.items()]
    with source_untouched(db):
        return cli("recover", *args, "--target", db.dsn, "--table", "public.t")


@pytest.mark.parametrize("source", ["slot", "capture"])
def test_format_1_truncate_between_changes_is_not_proven(
    db: Database, source: str, tmp_path: Path
) -> None:
    """Truth {(2,1)}; format 1 rebuilds {(1,0),(2,1)}: exit 4 naming the TRUNCATE's transaction
    and format-version 2. Before the fix it ended with exit 4 for a possible DROP only, never
    saying that a TRUNCATE was lost nor how to read one (the oracle's D1)."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer)")
    db.create_slot()
    run_script(
        db,
        ["INSERT INTO t VALUES (1, 0)", "TRUNCATE t", "INSERT INTO t VALUES (2, 1)"],
    )
    truncated = db.scalar(
        "SELECT max(xid::text::bigint) FROM pg_logical_slot_peek_changes(%s, NULL, NULL)"
        " WHERE data LIKE '%%\"change\":[]%%'",
        (SLOT,),
    )
    drop_with_truth(db)
    result = _recover_format_1(db, source, tmp_path)
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    reasons = unproven(result.stderr)
    assert any(
        "may have been emptied by a TRUNCATE" in r
        and "format-version 1" in r
        and "-o format-version=2" in r
        for r in reasons
    ), result.stderr
    assert truncated is None or any(f"transaction {truncated}" in r for r in reasons)
    # The rebuilt table is what format 1 shows: the truncated row is back (hence exit 4).
    assert differences(db, "truth", "t_recovered") == (0, 1)


def test_format_2_carries_the_truncate_exactly(db: Database) -> None:
    """The same history through format 2: exact, exit 0."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer)")
    db.create_slot()
    run_script(
        db,
        ["INSERT INTO t VALUES (1, 0)", "TRUNCATE t", "INSERT INTO t VALUES (2, 1)"],
    )
    drop_with_truth(db)
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


# -- A4: a wal2json capture of a table without a usable replica identity -------------------------

A4_SHAPES = {
    # REPLICA IDENTITY NOTHING with a primary key: include-pk prints the key; the UPDATE and
    # DELETE transactions are in the capture without a change (plain commits).
    "identity-nothing": (
        "CREATE TABLE t (id integer PRIMARY KEY, v text); ALTER TABLE t REPLICA IDENTITY NOTHING",
        "transaction",
    ),
    # No primary key, default identity: include-pk prints "pk":[].
    "no-key": ("CREATE TABLE t (id integer, v text)", "without a primary key"),
    "deferrable-key": (
        "CREATE TABLE t (id integer PRIMARY KEY DEFERRABLE, v text)",
        "without a primary key",
    ),
}


def _capture(db: Database, tmp_path: Path, options: dict[str, str] | None = None) -> Path:
    directory = capture_dir(db.cluster)
    try:
        path = pg_recvlogical(db, SLOT, "wal2json", directory / "cdc.capture", options=options)
        (tmp_path / "cdc.capture").write_bytes(path.read_bytes())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return tmp_path / "cdc.capture"


@pytest.mark.parametrize("shape", list(A4_SHAPES))
def test_capture_without_identity_is_not_proven(db: Database, shape: str, tmp_path: Path) -> None:
    """Truth {(1,a2),(20,b)}; the capture holds only the inserts, and pg_recvlogical printed the
    warning: exit 4 naming the table and pg_recvlogical's log (the test failed before the fix:
    exit 0 with the old rows)."""
    create, says = A4_SHAPES[shape]
    db.execute(create)
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
            "UPDATE t SET v = 'a2' WHERE id = 1",
            "DELETE FROM t WHERE id = 3",
            "UPDATE t SET id = 20 WHERE id = 2",
        ],
    )
    drop_with_truth(db)
    path = _capture(db, tmp_path)
    result = cli("recover", "--from-file", str(path), *o_args("wal2json"), "--target", db.dsn,
                 "--table", "public.t")  # fmt: skip
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    reasons = unproven(result.stderr)
    assert any(
        says in r and "public.t" in r and "no tuple identifier" in r and "pg_recvlogical" in r
        for r in reasons
    ), result.stderr
    assert differences(db, "truth", "t_recovered") != (0, 0)


@pytest.mark.parametrize("include_pk", ["1", "0"])
def test_keyed_insert_only_capture_is_exact(db: Database, include_pk: str, tmp_path: Path) -> None:
    """A keyed table that only had inserts: exit 0 and the truth, and a warning that points at
    pg_recvlogical's log: without include-pk the capture cannot show the key; with it, not
    whether the table had REPLICA IDENTITY NOTHING."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 'a')", "INSERT INTO t VALUES (2, 'b')"])
    drop_with_truth(db)
    options = {**CAPTURE_OPTIONS["wal2json"], "include-pk": include_pk}
    path = _capture(db, tmp_path, options)
    o = [f"-o{name}={value}" for name, value in options.items()]
    result = cli("recover", "--from-file", str(path), "--plugin", "wal2json", *o,
                 "--target", db.dsn, "--table", "public.t")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert "shows no UPDATE or DELETE of public.t" in result.stderr
    assert "no tuple identifier" in result.stderr
    assert ("REPLICA IDENTITY NOTHING" in result.stderr) == (include_pk == "1")


def test_identity_nothing_changes_beside_inserts_are_not_silent(
    db: Database, tmp_path: Path
) -> None:
    """REPLICA IDENTITY NOTHING on a keyed table, its UPDATE and DELETE in transactions that
    also insert: the capture (with include-pk) looks like an insert-only history, so the
    rebuilt table keeps rows the truth changed. A documented limit of captures (the oracle's
    A4c, seed 9081726): exit 0 with a warning naming REPLICA IDENTITY NOTHING and the log."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.execute("ALTER TABLE t REPLICA IDENTITY NOTHING")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (7, 'a')",
            "BEGIN; INSERT INTO t VALUES (9, 'b'); UPDATE t SET id = 1 WHERE id = 7;"
            " DELETE FROM t WHERE id = 1; COMMIT",
        ],
    )
    drop_with_truth(db)
    options = {**CAPTURE_OPTIONS["wal2json"], "include-pk": "1"}
    path = _capture(db, tmp_path, options)
    o = [f"-o{name}={value}" for name, value in options.items()]
    result = cli("recover", "--from-file", str(path), "--plugin", "wal2json", *o,
                 "--target", db.dsn, "--table", "public.t")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 1)  # row 7 is back
    assert "REPLICA IDENTITY NOTHING" in result.stderr
    assert "no tuple identifier" in result.stderr


def test_capture_with_updates_proves_the_identity(db: Database, tmp_path: Path) -> None:
    """An UPDATE in the capture proves the table had an identity: exit 0, no warning of it."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')", "UPDATE t SET v = 'c'"])
    drop_with_truth(db)
    path = _capture(db, tmp_path)
    result = cli("recover", "--from-file", str(path), *o_args("wal2json"), "--target", db.dsn,
                 "--table", "public.t")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert "no tuple identifier" not in result.stderr


def test_a_change_that_finds_no_row_is_not_proven(db: Database) -> None:
    """A slot younger than the table: the update of a row written before it found no row and
    the run exited 0 with a table lacking that row (the oracle found it through a keyless
    TOASTed table whose deletes could not be matched). The test failed before the fix."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')")
    db.create_slot(SLOT, "wal2json")
    run_script(db, ["INSERT INTO t VALUES (2, 'new')", "UPDATE t SET v = 'changed' WHERE id = 1"])
    drop_with_truth(db)
    args = ("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    with source_untouched(db):
        result = cli(*args)

    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "1 update(s) or delete(s) of public.t found no row in public.t_recovered" in (
        result.stderr
    )
    assert differences(db, "truth", "t_recovered") == (1, 0)


def test_a_doubt_without_xids_names_no_none(db: Database, tmp_path: Path) -> None:
    """A format-1 capture made without options carries no xids: the doubt said "transaction
    None" and advised "--stop-before-xid None". The test failed before the fix."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer)")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 0)",
            "CREATE TABLE other (x int)",
            "INSERT INTO t VALUES (2, 1)",
        ],
    )
    drop_with_truth(db)
    # What pg_recvlogical -P wal2json writes without -o: format 1, no xids, no LSNs.
    rows = db.execute("SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (SLOT,))
    path = tmp_path / "default.capture"
    path.write_text("".join(f"{data}\n" for (data,) in rows))
    result = cli(
        "recover", "--from-file", str(path), "--plugin", "wal2json",
        "--target", db.dsn, "--table", "public.t",
    )  # fmt: skip

    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "None" not in result.stderr, result.stderr
    assert "a transaction (the stream has no xids)" in result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


FORMAT_1_OWN_TRUNCATE = {
    # The oracle's D1 draw (seed 3856345): the TRUNCATE sits in a savepoint of a transaction
    # that also updates the table; format 1 prints the UPDATE and nothing of the TRUNCATE.
    "update-then-truncate": [
        "INSERT INTO t VALUES (1, 0), (2, 0)",
        "BEGIN; UPDATE t SET v = 5 WHERE id = 1; SAVEPOINT s; TRUNCATE t; RELEASE s; COMMIT",
        "INSERT INTO t VALUES (3, 1)",
    ],
    "truncate-then-insert": [
        "INSERT INTO t VALUES (1, 0), (2, 0)",
        "BEGIN; TRUNCATE t; INSERT INTO t VALUES (3, 1); COMMIT",
    ],
    "insert-then-truncate": [
        "INSERT INTO t VALUES (1, 0)",
        "BEGIN; INSERT INTO t VALUES (2, 0); TRUNCATE t; COMMIT",
        "INSERT INTO t VALUES (3, 1)",
    ],
    "truncate-last": ["INSERT INTO t VALUES (1, 0)", "TRUNCATE t"],
    "insert-then-truncate-last": [
        "INSERT INTO t VALUES (1, 0)",
        "BEGIN; INSERT INTO t VALUES (2, 0); TRUNCATE t; COMMIT",
    ],
    "first-transaction": ["BEGIN; INSERT INTO t VALUES (1, 0); TRUNCATE t; COMMIT"],
}


@pytest.mark.parametrize("wal", ["walinspect", "no-wal"])
@pytest.mark.parametrize("shape", list(FORMAT_1_OWN_TRUNCATE))
def test_format_1_truncate_inside_a_transaction_of_the_table_is_not_proven(
    db: Database, shape: str, wal: str
) -> None:
    """Truth {(3,1)}. Format 1 drops the TRUNCATE but prints the transaction's other changes
    of the table, so no transaction without change marks it: the commit record's size does (a
    TRUNCATE's invalidations). Before the fix: exit 0 with the truncated rows back (the
    oracle's D1, seed 3856345)."""
    if wal == "walinspect":
        db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer)")
    db.create_slot()
    run_script(db, FORMAT_1_OWN_TRUNCATE[shape])
    drop_with_truth(db)
    with source_untouched(db):
        result = cli(
            "recover", "-d", db.dsn, "--slot", SLOT, "-o", "format-version=1",
            "--target", db.dsn, "--table", "public.t",
        )  # fmt: skip
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert any("may have been emptied by a TRUNCATE" in r for r in unproven(result.stderr))
    assert differences(db, "truth", "t_recovered") != (0, 0), result.stderr  # format 1 is wrong


@pytest.mark.parametrize("wal", ["walinspect", "no-wal"])
def test_format_1_without_truncate_is_exact_only_when_the_wal_says_so(
    db: Database, wal: str
) -> None:
    """The same shapes without the TRUNCATE, with rewrites that replace the table's file as a
    TRUNCATE does (VACUUM FULL between changes and after the last one, a rewriting ALTER in a
    savepoint): with the WAL, exact and exit 0 (no TRUNCATE record); without it, nothing rules
    a TRUNCATE out, so exit 4 naming the first unchecked transaction."""
    if wal == "walinspect":
        db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer)")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 0), (2, 0)",
            "BEGIN; UPDATE t SET v = 5 WHERE id = 1; SAVEPOINT s; DELETE FROM t WHERE id = 2;"
            " RELEASE s; COMMIT",
            "ANALYZE t",
            "VACUUM FULL t",
            "INSERT INTO t VALUES (3, 1)",
            "BEGIN; INSERT INTO t VALUES (4, 1); SAVEPOINT s;"
            " ALTER TABLE t ALTER COLUMN v TYPE integer USING v + 0; RELEASE s; COMMIT",
            "VACUUM FULL t",
        ],
    )
    drop_with_truth(db)
    with source_untouched(db):
        result = cli(
            "recover", "-d", db.dsn, "--slot", SLOT, "-o", "format-version=1",
            "--target", db.dsn, "--table", "public.t",
        )  # fmt: skip
    assert differences(db, "truth", "t_recovered") == (0, 0)
    if wal == "walinspect":
        assert result.exit_code == 0, result.stderr
    else:
        assert result.exit_code == EXIT_UNPROVEN, result.stderr
        assert any(
            "format-version 1 left out" in r and "could not be checked" in r
            for r in unproven(result.stderr)
        ), result.stderr


@pytest.mark.parametrize("source", ["slot", "capture"])
def test_format_1_a_row_back_twice_names_the_lost_truncate(
    db: Database, source: str, tmp_path: Path
) -> None:
    """A row inserted, truncated and inserted again in one transaction: format 1 shows the
    INSERT twice, and the refusal says format 1 left a TRUNCATE out, not only that the table
    may have been dropped (the oracle, seed 9081726)."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer)")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 0)",
            "BEGIN; INSERT INTO t VALUES (8, 1); TRUNCATE t; INSERT INTO t VALUES (8, 1); COMMIT",
        ],
    )
    drop_with_truth(db)
    result = _recover_format_1(db, source, tmp_path)
    assert result.exit_code == 1, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "duplicate key" in line and "a row came back twice" in line
    assert "format-version 1 leaves a TRUNCATE out" in line and "-o format-version=2" in line
