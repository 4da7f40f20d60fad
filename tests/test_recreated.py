"""A table dropped and re-created under the same name (issue 8, C15), against the real server.

wal2json and test_decoding carry no relation id, so two tables that had the same name one after
the other used to be merged (exit 0 with rows of both). With pg_walinspect installed in the
source database walrecover reads the WAL, finds the DROP and rebuilds only the later table (what
the name held at the stop point), saying which LSN rebuilds the earlier one; without it the
stream cannot tell a DROP from other DDL, so the recovery ends with exit 4 naming the transaction.
A capture without an LSN per change (test_decoding) cannot be matched to the WAL: exit 4 too.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from every_way import create_source, recover_way
from fault_helpers import peek_capture, start, wait_for_progress
from helpers import (
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    run_script,
    snapshot,
    source_untouched,
)

from walrecover.errors import EXIT_UNPROVEN

SCENARIO = [
    "CREATE TABLE t (id integer PRIMARY KEY, v text)",
    "INSERT INTO t VALUES (1, 'old')",
    "DROP TABLE t",
    "CREATE TABLE t (id integer PRIMARY KEY, v text)",
    "INSERT INTO t VALUES (2, 'new')",
]

PLUGINS = ("wal2json", "test_decoding")


def walinspect(db: Database) -> None:
    """What an operator does before the incident (walrecover never does it)."""
    db.execute("CREATE EXTENSION pg_walinspect")


def rows(db: Database, table: str = "t_recovered") -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in db.execute(f"SELECT id, v FROM {table} ORDER BY 1")]


def recover_args(db: Database, source: str, plugin: str, tmp_path: Path) -> list[str]:
    """``recover`` from the slot, or from a capture of it (the slot is only peeked)."""
    if source == "slot":
        return ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t"]
    path = tmp_path / f"{plugin}.capture"
    if not path.exists():
        peek_capture(db.dsn, SLOT, plugin, path)
    return [
        "recover",
        *("--from-file", str(path), "--plugin", plugin),
        *("-d", db.dsn, "--table", "public.t"),
    ]


def stop_hint(stderr: str) -> list[str]:
    """The stop option a message advises, as arguments."""
    match = re.search(r"(--stop-before-(?:lsn|xid)) (\S+?)[,.;]?(?:\s|$)", stderr)
    assert match, stderr
    return [match.group(1), match.group(2)]


@pytest.mark.parametrize("with_wal", [True, False], ids=["walinspect", "no-walinspect"])
@pytest.mark.parametrize("source", ["slot", "capture"])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_re_created_table_is_never_merged(
    db: Database, tmp_path: Path, plugin: str, source: str, with_wal: bool
) -> None:
    """The issue's scenario: main recovered {(1,old),(2,new)} with exit 0 (the test failed
    before the fix). With the WAL, only the later table is rebuilt, exactly, and the message
    names the DROP's LSN, which rebuilds the earlier table; without it, exit 4 naming the
    transaction and what to do, and the advised stop point rebuilds the earlier table."""
    if with_wal:
        walinspect(db)
    db.create_slot(SLOT, plugin)
    run_script(db, SCENARIO)
    snapshot(db, "t", "truth")
    db.execute("DROP TABLE t")
    args = recover_args(db, source, plugin, tmp_path)
    with source_untouched(db):
        result = cli(*args)
    exact = with_wal and not (source == "capture" and plugin == "test_decoding")
    if exact:
        assert result.exit_code == 0, result.stderr
        assert differences(db, "truth", "t_recovered") == (0, 0)
        assert rows(db) == [(2, "new")]
        assert "public.t was re-created under the same name: the earlier table was dropped" in (
            result.stderr
        )
    else:
        assert result.exit_code == EXIT_UNPROVEN, result.stderr
        assert (
            "not proven exact: public.t may have been dropped and re-created under the same "
            "name: transaction" in result.stderr
        )
        reason = (
            "the stream gives no LSN per change"
            if with_wal
            else "pg_walinspect is not installed in database"
        )
        assert reason in result.stderr
    # The advised stop point rebuilds the earlier table, exactly and without a doubt.
    with source_untouched(db):
        earlier = cli(*args, *stop_hint(result.stderr), "--into", "public.t_earlier")
    assert earlier.exit_code == 0, earlier.stderr
    assert "re-created" not in earlier.stderr
    assert rows(db, "t_earlier") == [(1, "old")]


def control(db: Database, plugin: str) -> None:
    """Changes with TRUNCATE, VACUUM FULL, CLUSTER, a rewriting ALTER and unrelated DDL
    between them (twice in a row, too): none of it is a re-creation."""
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'a')",
            "TRUNCATE t",
            "INSERT INTO t VALUES (2, 'b')",
            "VACUUM FULL t",
            "INSERT INTO t VALUES (3, 'c')",
            "ALTER TABLE t ALTER COLUMN v TYPE text USING v || ''",
            "DELETE FROM t WHERE id = 3",
            "CLUSTER t USING t_pkey",
            "VACUUM FULL t",
            "INSERT INTO t VALUES (4, 'd')",
            "CREATE TABLE other (i integer)",
            "DROP TABLE other",
            "ANALYZE t",
            "INSERT INTO t VALUES (5, 'e')",
            "BEGIN; TRUNCATE t; CREATE TABLE o2 (i int); DROP TABLE o2;"
            " INSERT INTO t VALUES (6, 'f'); COMMIT",
            "INSERT INTO t VALUES (7, 'g')",
            # A rewrite in a subtransaction: its new file is the subtransaction's, the old one
            # is dropped by the top-level commit (once judged a DROP: rows 1-8 were lost).
            "BEGIN; INSERT INTO t VALUES (8, 'h'); SAVEPOINT s;"
            " ALTER TABLE t ALTER COLUMN v TYPE text USING v || ''; RELEASE s; COMMIT",
            "INSERT INTO t VALUES (9, 'i')",
        ],
    )
    snapshot(db, "t", "truth")
    db.execute("DROP TABLE t")


@pytest.mark.parametrize("before_slot", [False, True], ids=["created-in-stream", "older"])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_rewrites_and_other_ddl_are_not_a_re_creation(
    db: Database, plugin: str, before_slot: bool
) -> None:
    """The control, with the WAL: exit 0, exact, no word of a re-creation. A table older than
    the slot (its oid unknown to the WAL at first) is judged as well."""
    walinspect(db)
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    if before_slot:
        db.execute("INSERT INTO t VALUES (0, 'z')")
        db.execute("VACUUM FULL t")  # its file is no longer its oid
        db.execute("DELETE FROM t")
    control(db, plugin)
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == 0, result.stderr
    assert "re-created" not in result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_without_the_wal_a_vacuum_full_between_changes_is_a_doubt(db: Database) -> None:
    """Without the WAL a VACUUM FULL's commit carries catalog changes like a DROP's, and the
    stream cannot tell them apart: exit 4 naming it (documented; pg_walinspect settles it)."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot(SLOT, "wal2json")
    run_script(
        db, ["INSERT INTO t VALUES (1, 'a')", "VACUUM FULL t", "INSERT INTO t VALUES (2, 'b')"]
    )
    snapshot(db, "t", "truth")
    db.execute("DROP TABLE t")
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "may have been dropped and re-created under the same name" in result.stderr
    assert "ANALYZE or other DDL" in result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_without_the_wal_other_tables_and_truncate_keep_exit_0(db: Database) -> None:
    """The other half of the rule: no doubt without positive evidence (wal2json and
    test_decoding, slot)."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE TABLE o (i integer)")
    for plugin in PLUGINS:
        db.create_slot(f"s_{plugin}", plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'a')",
            "INSERT INTO o VALUES (1)",
            "BEGIN; SAVEPOINT a; INSERT INTO o VALUES (2); RELEASE a; COMMIT",
            "TRUNCATE t",
            "INSERT INTO t VALUES (2, 'b')",
            "INSERT INTO o VALUES (3)",
            "INSERT INTO t VALUES (3, 'c')",
        ],
    )
    snapshot(db, "t", "truth")
    db.execute("DROP TABLE t")
    for plugin in PLUGINS:
        with source_untouched(db, f"s_{plugin}"):
            result = cli(
                "recover",
                *("-d", db.dsn, "--slot", f"s_{plugin}", "--table", "public.t"),
                *("--into", f"t_{plugin}"),
            )
        assert result.exit_code == 0, (plugin, result.stderr)
        assert differences(db, "truth", f"t_{plugin}") == (0, 0)


@pytest.mark.parametrize("one_transaction", [False, True], ids=["apart", "one-transaction"])
def test_a_table_renamed_into_place_is_refused(db: Database, one_transaction: bool) -> None:
    """``ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t``: the new table's rows
    written under its old name are not in the stream of ``t``, so no rebuild of it can be
    exact: exit 1 naming the LSN that rebuilds the earlier table. Also when the rows under the
    old name are written by the transaction whose change of ``t`` is the first (a write of a
    later commit is not counted: the stream shows it later)."""
    walinspect(db)
    db.create_slot(SLOT, "wal2json")
    steps = [
        "CREATE TABLE t_new (id integer PRIMARY KEY, v text)",
        "INSERT INTO t_new VALUES (10, 'written as t_new')",
        "ALTER TABLE t RENAME TO t_old",
        "ALTER TABLE t_new RENAME TO t",
        "INSERT INTO t VALUES (11, 'written as t')",
    ]
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'old')",
            *(["BEGIN; " + "; ".join(steps) + "; COMMIT"] if one_transaction else steps),
            "DROP TABLE t",
        ],
    )
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == 1
    assert "error: public.t was replaced by another table of the same name: the earlier table" in (
        result.stderr
    )
    assert "before it took the name" in result.stderr
    with source_untouched(db):
        earlier = cli(
            "recover",
            *("-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--into", "public.t_early"),
            *stop_hint(result.stderr),
        )
    assert earlier.exit_code == 0, earlier.stderr
    assert rows(db, "t_early") == [(1, "old")]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_dropped_and_created_in_one_transaction(db: Database, plugin: str) -> None:
    """``BEGIN; INSERT; DROP; CREATE; INSERT; COMMIT``: the changes of one transaction belong
    to two tables; only the later one's are kept."""
    walinspect(db)
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'old')",
            "BEGIN; INSERT INTO t VALUES (2, 'old'); DROP TABLE t;"
            " CREATE TABLE t (id integer PRIMARY KEY, v text);"
            " INSERT INTO t VALUES (3, 'new'); COMMIT",
            "INSERT INTO t VALUES (4, 'new')",
        ],
    )
    snapshot(db, "t", "truth")
    db.execute("DROP TABLE t")
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == 0, result.stderr
    assert "was re-created under the same name" in result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


@pytest.mark.parametrize("kill_after", [200, 1300], ids=["in-earlier", "in-later"])
def test_resume_keeps_only_the_later_table(db: Database, kill_after: int) -> None:
    """Killed while rebuilding the earlier table (its rows committed, the DROP not reached) or
    after the switch: the rerun still leaves only the later table (the judge follows the
    changes a resume skips)."""
    walinspect(db)
    db.create_slot(SLOT, "test_decoding")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    with db.connect() as conn:
        for i in range(1000):
            conn.execute("INSERT INTO t VALUES (%s, 'old')", (i,))
        conn.execute("DROP TABLE t")
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
        for i in range(1000):
            conn.execute("INSERT INTO t VALUES (%s, 'new')", (5000 + i,))
    snapshot(db, "t", "truth")
    db.execute("DROP TABLE t")
    args = ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--batch-size", "1"]
    running = start(args)
    wait_for_progress(db.dsn, "public.t_recovered", running, transactions=kill_after)
    running.signal(signal.SIGKILL)
    running.finish()
    with source_untouched(db):
        result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "was re-created under the same name" in result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


@pytest.mark.parametrize("with_wal", [True, False], ids=["walinspect", "no-walinspect"])
def test_a_transaction_past_the_stop_point_is_not_judged(db: Database, with_wal: bool) -> None:
    """test_decoding decides a transaction's stop at its commit, after its changes were read:
    the later table's first transaction, past the stop point, raises neither a doubt nor an
    error (here the renamed-in table that would be refused)."""
    if with_wal:
        walinspect(db)
    db.create_slot(SLOT, "test_decoding")
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'old')",
            "CREATE TABLE t_new (id integer PRIMARY KEY, v text)",
            "INSERT INTO t_new VALUES (10, 'written as t_new')",
            "ALTER TABLE t RENAME TO t_old",
            "ALTER TABLE t_new RENAME TO t",
        ],
    )
    stop = db.lsn()
    run_script(db, ["INSERT INTO t VALUES (11, 'written as t')", "DROP TABLE t"])
    with source_untouched(db):
        result = cli(
            "recover",
            *("-d", db.dsn, "--slot", SLOT, "--table", "public.t"),
            *("--stop-before-lsn", stop),
        )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert rows(db) == [(1, "old")]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_without_the_wal_a_re_creation_inside_a_writing_transaction_is_not_silent(
    db: Database, plugin: str
) -> None:
    """``BEGIN; DROP TABLE t; CREATE TABLE t ...; INSERT ...; COMMIT`` after earlier rows, with
    no pg_walinspect: the transaction wrote the table, so it was never taken for a catalog-only
    transaction, and the rows of both tables were merged with exit 0 and no word (the test failed
    before the fix). wal2json's commit record shows the catalog change: exit 4 naming it;
    test_decoding shows nothing of it: a warning says what could not be judged."""
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'old')",
            "BEGIN; DROP TABLE t; CREATE TABLE t (id integer PRIMARY KEY, v text);"
            " INSERT INTO t VALUES (2, 'new'); COMMIT",
        ],
    )
    db.execute("DROP TABLE t")
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    if plugin == "wal2json":
        assert result.exit_code == EXIT_UNPROVEN, result.stderr
        assert re.search(
            r"not proven exact: public\.t may have been dropped and re-created under the same "
            r"name: transaction \d+ \(commit LSN \S+\) changed the catalog while writing it",
            result.stderr,
        ), result.stderr
        assert "pg_walinspect is not installed in database" in result.stderr
        with source_untouched(db):
            earlier = cli(
                "recover",
                *("-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--into", "t_earlier"),
                *stop_hint(result.stderr),
            )
        assert earlier.exit_code == 0, earlier.stderr
        assert rows(db, "t_earlier") == [(1, "old")]
    else:
        assert result.exit_code == 0, result.stderr
        assert re.search(
            r"warning: not checked: whether transaction \d+, which wrote public\.t after earlier "
            r"transactions had, also dropped and re-created it",
            result.stderr,
        ), result.stderr
        assert "pg_walinspect is not installed in database" in result.stderr


#: How the table is created again: alone, or in a transaction that also rewrites another
#: table (its new file is another relation's; the check once left out every file such a
#: transaction made: exit 0 with the dropped table's rows).
RE_CREATIONS = {
    "alone": ["CREATE TABLE t (id integer PRIMARY KEY, v text)"],
    "beside-a-truncate": [
        "CREATE TABLE other (i integer)",
        "BEGIN; TRUNCATE other; CREATE TABLE t (id integer PRIMARY KEY, v text); COMMIT",
    ],
}


@pytest.mark.parametrize("creation", RE_CREATIONS)
@pytest.mark.parametrize(
    ("plugin", "source"),
    [("wal2json", "slot"), ("test_decoding", "slot"), ("wal2json", "capture")],
)
def test_a_table_older_than_the_slot_re_created_before_the_stop_is_not_merged(
    db: Database, tmp_path: Path, plugin: str, source: str, creation: str
) -> None:
    """A table created before the slot, dropped and created again with no change of the new
    one before the stop point: the judge knows the file of the last change but not its oid
    (the table is gone and was not created in the WAL read), so the check after replay did
    not run: exit 0 with the dropped table's rows where the name held an empty table (the
    oracle, seed 8642097). Now exit 4 naming the DROP, whose LSN rebuilds the earlier table.
    A wal2json capture carries each change's LSN, so the same holds for it (the oracle's C15c,
    open until then); a test_decoding capture carries none (README)."""
    walinspect(db)
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'old'), (2, 'old')",
            "DROP TABLE t",
            *RE_CREATIONS[creation],
        ],
    )
    stop = str(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
    run_script(db, ["INSERT INTO t VALUES (3, 'new')", "DROP TABLE t"])
    args = recover_args(db, source, plugin, tmp_path)
    with source_untouched(db):
        result = cli(*args, "--stop-before-lsn", stop)
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "public.t may have been dropped and re-created under the same name" in result.stderr
    with source_untouched(db):
        earlier = cli(*args, *stop_hint(result.stderr), "--into", "public.t_earlier")
    assert earlier.exit_code == 0, earlier.stderr
    assert rows(db, "t_earlier") == [(1, "old"), (2, "old")]


@pytest.mark.parametrize(
    ("plugin", "source"),
    [("wal2json", "slot"), ("test_decoding", "slot"), ("wal2json", "capture")],
)
def test_rewrites_after_the_drop_are_not_a_re_creation(
    db: Database, tmp_path: Path, plugin: str, source: str
) -> None:
    """The control of ``beside-a-truncate``: rewrites between the DROP and a later stop point
    make files for relations that live on (a mapped catalog's, a table's rewritten again, a
    table's dropped since): no re-creation, exit 0 with the table as the DROP left it."""
    walinspect(db)
    for name in ("t (id integer PRIMARY KEY, v text)", "other (i integer)", "gone (i integer)"):
        db.execute(f"CREATE TABLE {name}")
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'old'), (2, 'old')",
            "DROP TABLE t",
            "VACUUM FULL pg_class",
            "TRUNCATE other",
            "TRUNCATE other",
            "TRUNCATE gone",
            "DROP TABLE gone",
        ],
    )
    stop = str(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
    with source_untouched(db):
        result = cli(*recover_args(db, source, plugin, tmp_path), "--stop-before-lsn", stop)
    assert result.exit_code == 0, result.stderr
    assert "re-created" not in result.stderr
    assert rows(db) == [(1, "old"), (2, "old")]


UNSEEN_WAYS = [
    ("wal2json", "slot", False),
    ("test_decoding", "slot", False),
    ("wal2json", "capture", False),
    ("test_decoding", "capture", False),
    ("test_decoding", "capture", True),
]


@pytest.mark.parametrize(
    ("plugin", "source", "with_wal"),
    UNSEEN_WAYS,
    ids=[f"{p}-{s}{'-walinspect' if w else ''}" for p, s, w in UNSEEN_WAYS],
)
def test_a_re_creation_nothing_can_check_is_not_silent(
    db: Database, tmp_path: Path, plugin: str, source: str, with_wal: bool
) -> None:
    """Dropped, created again with no change, dropped again (the disaster): without the table's
    oid from the WAL (no pg_walinspect, or a capture without an LSN per change: the oracle's
    C15c) nothing can tell, and the recovery said nothing (exit 0, the earlier table's rows
    where the name held an empty table). It still gives those rows, with exit 0, but warns
    that this was not checked and which stop point rebuilds the earlier table exactly; that
    stop point gives them with no warning."""
    if with_wal:
        walinspect(db)
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'old'), (2, 'old')",
            "DROP TABLE t",
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "DROP TABLE t",
        ],
    )
    args = recover_args(db, source, plugin, tmp_path)
    with source_untouched(db):
        result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert (
        "warning: not checked: whether public.t was dropped and created again after its last "
        "change" in result.stderr
    )
    with source_untouched(db):
        earlier = cli(*args, *stop_hint(result.stderr), "--into", "public.t_earlier")
    assert earlier.exit_code == 0, earlier.stderr
    assert "not checked" not in earlier.stderr
    assert rows(db, "t_earlier") == [(1, "old"), (2, "old")]


@pytest.mark.parametrize(("plugin", "source", "with_wal"), UNSEEN_WAYS[:4])
def test_a_plain_drop_is_not_taken_for_a_re_creation(
    db: Database, tmp_path: Path, plugin: str, source: str, with_wal: bool
) -> None:
    """The control: with no stop point, the DROP alone after the last change is the incident
    itself, not a re-creation to warn of."""
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "DROP TABLE t",
        ],
    )
    with source_untouched(db):
        result = cli(*recover_args(db, source, plugin, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "not checked" not in result.stderr
    assert rows(db) == [(1, "a"), (2, "b")]


@pytest.mark.parametrize("plugin", ("wal2json", "pgoutput", "test_decoding"))
def test_reruns_with_force_in_the_source_database_are_not_a_re_creation(
    db: Database, tmp_path: Path, plugin: str
) -> None:
    """Each rerun with --force drops the rebuilt table an earlier run made in the source
    database: a table created and dropped after the DROP, which the check for a re-created
    table must not count (the third run ended with exit 4 "may have been dropped and
    re-created", naming walrecover's own earlier table; pgoutput's check did so before the
    check reached wal2json and test_decoding). The progress row keeps the dropped files."""
    walinspect(db)
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    slot = create_source(db, plugin)
    run_script(
        db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')", "DELETE FROM t WHERE id = 2"]
    )
    assert drop_with_truth(db) == 2
    for attempt in range(3):
        with source_untouched(db, slot):
            result = recover_way(db, plugin, "slot", tmp_path, force=attempt > 0)
        assert result.unproven == (), (attempt, result.unproven)
        assert differences(db, "truth", "t_recovered") == (0, 0)


#: Writes of the re-created table's file before its first change in the stream that are not
#: rows under another name, and the rows the later table then holds.
EARLIER_WRITES = {
    # Rolled back (and rolled back to a savepoint): those rows never existed.
    "rolled-back": (
        [
            "BEGIN; INSERT INTO t VALUES (7, 'rolled back'); ROLLBACK",
            "BEGIN; INSERT INTO t VALUES (8, 'savepoint'); SAVEPOINT s;"
            " INSERT INTO t VALUES (9, 'rolled back to'); ROLLBACK TO SAVEPOINT s; ROLLBACK",
            SCENARIO[4],
        ],
        [(2, "new")],
    ),
    # A prepared transaction written first and committed after another one: the stream, in
    # commit order, shows it later.
    "committed-later": (
        [
            "BEGIN; INSERT INTO t VALUES (7, 'prepared first'); PREPARE TRANSACTION 'first'",
            SCENARIO[4],
            "COMMIT PREPARED 'first'",
        ],
        [(2, "new"), (7, "prepared first")],
    ),
}


@pytest.mark.parametrize("writes", EARLIER_WRITES)
@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_earlier_write_that_is_no_row_under_another_name_is_not_refused(
    db: Database, plugin: str, writes: str
) -> None:
    """The re-created table's file was written before its first change in the stream, but by
    a transaction that rolled back, or that commits after the one holding that change: no row
    reached the table under another name, yet walrecover refused (exit 1, "written at LSN ...,
    before it took the name"; the oracle, seeds 8642097 and 2718281). Only writes committed
    before it (or in it) count; the later table is rebuilt exactly."""
    steps, expected = EARLIER_WRITES[writes]
    walinspect(db)
    db.create_slot(SLOT, plugin)
    run_script(db, [*SCENARIO[:4], *steps])
    snapshot(db, "t", "truth")
    db.execute("DROP TABLE t")
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == 0, result.stderr
    assert rows(db) == expected
    assert differences(db, "truth", "t_recovered") == (0, 0)
