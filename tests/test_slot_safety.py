"""Reading a slot safely: what the server says while decoding, a slot that moved or is in use,
streamed transactions, and columns or changes a plugin cannot carry (issue 8: A4, A5, A6, B13,
C18, and publications that leave changes out).

Every test runs on the real server and, where rows are involved, compares the rebuilt table with
the truth snapshotted before the DROP; exit codes and messages are asserted through the CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import (
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    run_script,
    snapshot,
    source_untouched,
    stream_commits,
    table_exists,
)

from walrecover.errors import EXIT_ERROR, EXIT_UNPROVEN, Interrupted
from walrecover.rebuild.recover import recover
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import TableName

# -- A4: wal2json leaves out changes it cannot identify -------------------------------------------

#: Tables whose UPDATE/DELETE wal2json cannot identify, so it leaves them out (and warns).
UNIDENTIFIABLE = {
    "no_primary_key": "CREATE TABLE t (id integer, v text)",
    "replica_identity_nothing": (
        "CREATE TABLE t (id integer PRIMARY KEY, v text); ALTER TABLE t REPLICA IDENTITY NOTHING"
    ),
    "deferrable_primary_key": "CREATE TABLE t (id integer PRIMARY KEY DEFERRABLE, v text)",
}

#: The issue's history: truth (1,a2) (20,b); wal2json alone rebuilds (1,a) (2,b) (3,c).
HISTORY = [
    "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    "UPDATE t SET v = 'a2' WHERE id = 1",
    "DELETE FROM t WHERE id = 3",
    "UPDATE t SET id = 20 WHERE id = 2",
]


def recover_cli(db: Database, *extra: str, slot: str = SLOT) -> tuple[int, str, str]:
    """``walrecover recover`` of public.t on ``db``; (exit code, stdout, stderr), proving the
    slot did not move and no copy was left."""
    with source_untouched(db, slot):
        result = cli("recover", "-d", db.dsn, "--slot", slot, "--table", "public.t", *extra)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("kind", list(UNIDENTIFIABLE))
def test_wal2json_changes_it_cannot_identify_are_lost_data(
    db: Database, kind: str, read_mode: str
) -> None:
    db.execute(UNIDENTIFIABLE[kind])
    db.create_slot()
    run_script(db, HISTORY)
    assert drop_with_truth(db) == 2
    assert db.execute("SELECT id, v FROM truth ORDER BY id") == [(1, "a2"), (20, "b")]
    code, _, stderr = recover_cli(db)
    assert code == EXIT_ERROR, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("walrecover: error: wal2json left 2 UPDATEs, 1 DELETE of public.t out")
    assert "between LSN " in line
    assert 'no tuple identifier for UPDATE in table "public"."t"' in line
    assert "--via-plugin test_decoding" in line
    assert "rerun" not in line
    # Nothing was built that could be mistaken for the table.
    assert not table_exists(db, "t_recovered")


@pytest.mark.parametrize("kind", list(UNIDENTIFIABLE))
def test_a_failure_caused_by_a_lost_change_names_the_lost_change(
    db: Database, kind: str, read_mode: str
) -> None:
    """Oracle seed 3856345: a key moved by an UPDATE wal2json leaves out, then an INSERT of
    that key in the same (prepared) transaction. Replay fails on the INSERT (the old row is
    still there) before the loss watch judges the page: the error must name the lost UPDATE,
    not a DROP that never happened."""
    db.execute(UNIDENTIFIABLE[kind])
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "BEGIN; UPDATE t SET id = 9 WHERE id = 2; INSERT INTO t VALUES (4, 'd'), (2, 'c');"
            " PREPARE TRANSACTION 'moved'",
            "COMMIT PREPARED 'moved'",
        ],
    )
    assert drop_with_truth(db) == 4
    code, _, stderr = recover_cli(db, "--batch-size", "1")
    assert code == EXIT_ERROR, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("walrecover: error: wal2json left 1 UPDATE of public.t out"), line
    assert "dropped and re-created" not in line and "came back twice" not in line
    if kind == "replica_identity_nothing":  # the others' targets take the INSERT (no key, or a
        # deferred one): the page's end refuses, as before
        assert "that depended on it then failed to apply" in line
    assert "--via-plugin test_decoding" in line


def test_a_failure_before_a_time_stop_point_names_the_lost_change(
    db: Database, read_mode: str
) -> None:
    """The same failure with a time stop point after it: replay applied the failing INSERT only
    when the stop point's transaction ended the batch, after the loss watch had seen that
    transaction begin, and the watch then explained nothing: "a row came back twice ... dropped
    and re-created" (the oracle, seed 7171717). It names the lost UPDATE."""
    db.execute(UNIDENTIFIABLE["replica_identity_nothing"])
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "BEGIN; UPDATE t SET id = 9 WHERE id = 2; INSERT INTO t VALUES (2, 'c'); COMMIT",
        ],
    )
    time.sleep(0.05)
    moment = str(db.scalar("SELECT clock_timestamp()::text"))
    time.sleep(0.05)
    run_script(db, ["INSERT INTO t VALUES (5, 'e')"])
    drop_with_truth(db)
    code, _, stderr = recover_cli(db, "--stop-before-time", moment)
    assert code == EXIT_ERROR, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("walrecover: error: wal2json left 1 UPDATE of public.t out"), line
    assert "dropped and re-created" not in line and "came back twice" not in line
    assert "that depended on it then failed to apply" in line


@pytest.mark.parametrize("kind", list(UNIDENTIFIABLE))
@pytest.mark.parametrize("via", [False, True], ids=["test_decoding", "via-test_decoding"])
def test_a_change_test_decoding_cannot_place_after_the_stop_point_does_not_refuse(
    db: Database, kind: str, via: bool
) -> None:
    """A transaction past an LSN stop point, big enough to be sent in its middle (test_decoding
    only tells at its commit that it is past the stop), with an UPDATE test_decoding cannot
    place: its error was raised at once, exit 1 "give --ddl" for a recovery that stops before
    it (the oracle, seed 7171717). It is held until the commit, which leaves it out."""
    db.execute(UNIDENTIFIABLE[kind])
    if via:
        db.execute("CREATE PUBLICATION pub FOR TABLE t WITH (publish = 'insert, truncate')")
    db.create_slot(SLOT, "pgoutput" if via else "test_decoding")
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')"])
    snapshot(db, "t", "truth")
    stop = db.lsn()
    run_script(
        db,
        [
            "BEGIN; UPDATE t SET v = 'x' WHERE id = 1;"
            " INSERT INTO t SELECT 100 + i, 'z' FROM generate_series(1, 20) i; COMMIT",
            "DROP TABLE t",
        ],
    )
    extra = ("--via-plugin", "test_decoding") if via else ()
    code, _, stderr = recover_cli(db, "--batch-size", "1", "--stop-before-lsn", stop, *extra)
    assert code == 0, stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)


def test_test_decoding_says_which_delete_no_plugin_can_place(db: Database, tmp_path: Path) -> None:
    """test_decoding prints such an UPDATE's new row but a DELETE as (no-tuple-data): with the
    key from --ddl the update applies, the delete stops the run naming its LSN, and the error no
    longer asks for the --ddl that was given."""
    db.execute(UNIDENTIFIABLE["deferrable_primary_key"])
    db.create_slot()
    run_script(db, HISTORY)
    drop_with_truth(db)
    ddl = tmp_path / "t.sql"
    ddl.write_text("CREATE TABLE public.t_recovered (id integer PRIMARY KEY, v text)")
    code, _, stderr = recover_cli(db, "--via-plugin", "test_decoding", "--ddl", str(ddl))
    assert code == EXIT_ERROR
    (line,) = stderr.splitlines()
    assert "does not say which row the delete at LSN " in line
    assert "(no-tuple-data)" in line
    assert "stop before it with --stop-before-xid " in line
    assert "give --ddl" not in line


def _lost_after_the_stop(db: Database) -> tuple[Lsn, str]:
    db.execute(UNIDENTIFIABLE["no_primary_key"])
    db.create_slot()
    run_script(db, HISTORY[:1])
    snapshot(db, "t", "expected")
    lsn = Lsn.parse(db.lsn())
    time.sleep(0.05)
    moment = str(db.scalar("SELECT clock_timestamp()::text"))
    time.sleep(0.05)
    run_script(db, [*HISTORY[1:], "DROP TABLE t"])
    return lsn, moment


def test_a_lost_change_after_an_lsn_stop_point_is_only_a_warning(
    db: Database, read_mode: str
) -> None:
    """The read pages never cross an LSN stop point, so a change left out after it is known not
    to matter: exit 0, the table exact, and a warning."""
    lsn, _ = _lost_after_the_stop(db)
    code, _, stderr = recover_cli(db, "--stop-before-lsn", str(lsn))
    assert code == 0, stderr
    assert differences(db, "expected", TableName("public", "t_recovered")) == (0, 0)
    assert "after the stop point" in stderr
    assert "wal2json left 2 UPDATEs, 1 DELETE of public.t" in stderr


def test_a_lost_change_beside_a_time_stop_point_is_not_proven(db: Database, read_mode: str) -> None:
    """The same stop given as a time falls in the one page that holds the lost changes: the
    table may be right, but walrecover cannot prove it, so exit 4 saying how to decide."""
    _, moment = _lost_after_the_stop(db)
    code, _, stderr = recover_cli(db, "--stop-before-time", moment)
    assert code == EXIT_UNPROVEN, stderr
    assert differences(db, "expected", TableName("public", "t_recovered")) == (0, 0)
    reasons = [line for line in stderr.splitlines() if "not proven exact" in line]
    assert len(reasons) == 1
    assert "wal2json left 2 UPDATEs, 1 DELETE of public.t" in reasons[0]
    assert "--stop-before-lsn" in reasons[0]


def test_notices_about_other_tables_are_warnings(db: Database, read_mode: str) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE TABLE u (n integer)")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'a'), (2, 'b'); INSERT INTO u VALUES (1)",
            "UPDATE t SET v = 'b2' WHERE id = 2; UPDATE u SET n = 2",
            "DELETE FROM u",
        ],
    )
    drop_with_truth(db)
    # The user's add-tables (wider than walrecover's) lets wal2json see u too.
    code, _, stderr = recover_cli(db, "-o", "add-tables=public.t,public.u")
    assert code == 0, stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    warned = [line for line in stderr.splitlines() if "the source server sent a WARNING" in line]
    assert len(warned) == 2, stderr
    assert 'no tuple identifier for UPDATE in table "public"."u"' in warned[0]
    assert "left that change out" in warned[0]


def test_decode_surfaces_the_server_warnings(db: Database, read_mode: str) -> None:
    db.execute(UNIDENTIFIABLE["replica_identity_nothing"])
    db.create_slot()
    run_script(db, HISTORY)
    with source_untouched(db):
        result = cli("decode", "-d", db.dsn, "--slot", SLOT)
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 3  # the three inserts: all wal2json printed
    warned = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warned) == 2
    assert "no tuple identifier for UPDATE" in warned[0] and "(2 times)" in warned[0]
    assert "no tuple identifier for DELETE" in warned[1]


# -- publications that leave changes out (pgoutput) -----------------------------------------------


def test_a_publication_that_publishes_only_inserts_is_not_proven(db: Database) -> None:
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text);"
        " CREATE PUBLICATION ins FOR ALL TABLES WITH (publish = 'insert')"
    )
    db.create_slot(plugin="pgoutput")
    run_script(db, HISTORY)
    drop_with_truth(db)
    code, _, stderr = recover_cli(db)
    assert code == EXIT_UNPROVEN, stderr
    # The reason is real: pgoutput left the updates and the delete out.
    assert differences(db, "truth", TableName("public", "t_recovered")) == (2, 3)
    (reason,) = [line for line in stderr.splitlines() if "not proven exact" in line]
    assert "publication ins does not publish UPDATE, DELETE, TRUNCATE" in reason
    assert "--via-plugin test_decoding" in reason
    # ... and the remedy works.
    code, _, stderr = recover_cli(db, "--via-plugin", "test_decoding", "--force")
    assert code == 0, stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)


@pytest.mark.parametrize(
    ("publication", "reason"),
    [
        ("FOR TABLE t WHERE (id > 1)", "publishes only the rows of public.t WHERE (id > 1)"),
        ("FOR TABLE t (id)", "publishes only some columns of public.t"),
    ],
)
def test_a_row_filter_or_column_list_still_visible_is_not_proven(
    db: Database, publication: str, reason: str
) -> None:
    """Rebuilding a table that still exists (a bad DELETE, say): its publication's row filter
    or column list is in the catalog, and pgoutput obeyed it."""
    db.execute(
        f"CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE PUBLICATION p {publication}"
    )
    db.create_slot(plugin="pgoutput")
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')", "UPDATE t SET v = 'c'"])
    code, _, stderr = recover_cli(db)
    assert code == EXIT_UNPROVEN, stderr
    assert reason in stderr


def test_a_dropped_table_of_a_listing_publication_is_a_warning(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t")
    db.create_slot(plugin="pgoutput")
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')", "UPDATE t SET v = 'c'"])
    drop_with_truth(db)
    code, _, stderr = recover_cli(db)
    assert code == 0, stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert "publication p lists its tables one by one and public.t no longer exists" in stderr


# -- A5: a resume after the user's slot moved ----------------------------------------------------


def _interrupted_run(db: Database, transactions: int, rows: int) -> int:
    """``transactions`` inserts of ``rows`` rows each, DROP, then a recovery interrupted (like
    Ctrl-C) after a part was committed; return the transactions the target holds."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot()
    with db.connect() as conn:
        for n in range(transactions):
            conn.execute(
                "INSERT INTO t SELECT g, 'row ' || g"
                " FROM generate_series(%s::integer, %s::integer) g",
                (n * rows + 1, (n + 1) * rows),
            )
    assert drop_with_truth(db) == transactions * rows

    def interrupt(stage: str, done: int, total: int | None) -> None:
        if stage == "read" and total and done > total * 0.8:
            raise KeyboardInterrupt

    with source_untouched(db), pytest.raises(Interrupted):
        recover(db.dsn, SLOT, TableName("public", "t"), progress=interrupt, batch_size=rows * 10)
    applied = int(
        db.scalar(
            "SELECT transactions FROM walrecover.progress WHERE target = 'public.t_recovered'"
        )
    )
    assert 0 < applied < transactions
    return applied


def test_a_resume_from_a_slot_moved_past_the_resume_point_is_refused(db: Database) -> None:
    applied = _interrupted_run(db, 200, 1000)
    # The slot's own consumer confirms a later transaction than the recovery had applied.
    later = stream_commits(db)[applied + 10]
    db.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (SLOT, str(later.end_lsn)))
    (resume,) = db.execute(
        "SELECT resume_lsn::text FROM walrecover.progress WHERE target = 'public.t_recovered'"
    )[0]
    code, _, stderr = recover_cli(db)
    assert code == EXIT_ERROR, stderr
    (line,) = stderr.splitlines()
    assert "the slot has moved past the resume point" in line
    assert f"starts at LSN {later.end_lsn}" in line
    assert f"only up to LSN {resume}" in line
    assert "--force can only work from another slot or a capture" in line
    assert "rerun" not in line
    # Nothing changed: the unfinished recovery is as it was.
    assert int(db.scalar("SELECT count(*) FROM t_recovered")) == applied * 1000


def test_a_resume_from_a_slot_moved_exactly_to_the_resume_point_is_exact(db: Database) -> None:
    """Decoding skips a transaction whose commit record starts before the copy's start: a slot
    confirmed up to the end of the last transaction the recovery read misses nothing."""
    _interrupted_run(db, 60, 500)
    (resume,) = db.execute(
        "SELECT resume_lsn::text FROM walrecover.progress WHERE target = 'public.t_recovered'"
    )[0]
    db.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (SLOT, resume))
    code, stdout, stderr = recover_cli(db)
    assert code == 0, stderr
    assert "resumed after commit LSN" in stdout
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)


def test_a_progress_table_of_an_older_walrecover_gains_the_new_columns(db: Database) -> None:
    db.execute(
        "CREATE SCHEMA walrecover; CREATE TABLE walrecover.progress (target text PRIMARY KEY,"
        " source text NOT NULL, last_commit_lsn pg_lsn, last_xid bigint,"
        " transactions bigint NOT NULL, changes bigint NOT NULL,"
        " no_row bigint NOT NULL DEFAULT 0, first_lsn pg_lsn, audit text, position bigint,"
        " complete boolean NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());"
        " CREATE TABLE t (id integer PRIMARY KEY)"
    )
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1), (2)"])
    drop_with_truth(db)
    code, _, stderr = recover_cli(db)
    assert code == 0, stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert db.execute(
        "SELECT stream_start_lsn IS NOT NULL, resume_lsn IS NOT NULL FROM walrecover.progress"
    ) == [(True, True)]


# -- A6: streaming on a paged read ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("plugin", "options"),
    [
        ("pgoutput", ["-o", "proto_version=2", "-o", "streaming=on"]),
        ("test_decoding", ["--via-plugin", "test_decoding", "-o", "stream-changes=1"]),
    ],
)
def test_a_streamed_transaction_bigger_than_a_page_recovers_exactly(
    db: Database, plugin: str, options: list[str]
) -> None:
    # Decoding sessions on this database stream any transaction over 64 kB.
    db.execute(f"ALTER DATABASE \"{db.name}\" SET logical_decoding_work_mem = '64kB'")
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE PUBLICATION p FOR ALL TABLES"
    )
    db.create_slot(plugin="pgoutput")
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 30000) g",
            "DELETE FROM t WHERE id % 1000 = 0",
        ],
    )
    drop_with_truth(db)
    if plugin == "pgoutput":  # the server really streams it in this setting
        (streamed,) = db.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '2', 'publication_names', 'p', 'streaming', 'on')"
            " WHERE get_byte(data, 0) = ascii('S')",
            (SLOT,),
        )[0]
        assert streamed > 0
    code, _, stderr = recover_cli(db, *options)
    assert code == 0, stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    option = options[-1]
    assert f"warning: -o {option} is not used" in stderr


# -- B13: an active slot ---------------------------------------------------------------------------


@contextmanager
def consumer(db: Database, slot: str = SLOT) -> Iterator[int]:
    """pg_recvlogical consuming ``slot`` (as its real consumer would); yields its backend pid."""
    bundled = db.cluster.installation.bindir / "pg_recvlogical"
    binary = str(bundled) if bundled.is_file() else shutil.which("pg_recvlogical")
    assert binary is not None, "pg_recvlogical is not installed"
    proc = subprocess.Popen(
        [binary, "-d", db.dsn, "--slot", slot, "--start", "-f", os.devnull, "-s", "3600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            pid = db.scalar(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
            if pid is not None:
                break
            assert proc.poll() is None, "pg_recvlogical ended"
            assert time.monotonic() < deadline, "pg_recvlogical never took the slot"
            time.sleep(0.05)
        yield int(pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_active_slot_is_read_with_a_warning_naming_its_consumer(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')", "UPDATE t SET v = 'c'"])
    drop_with_truth(db)
    # The consumer has confirmed nothing yet (a status every hour): the history is still there.
    with consumer(db) as pid:
        before = db.slot_position()
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
        assert db.slot_position() == before
    assert db.leftover_copies() == []
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    (warning,) = [line for line in result.stderr.splitlines() if "is active" in line]
    assert f"slot 'cdc' is active: it is being consumed by backend pid {pid}" in warning
    assert "pg_copy_logical_replication_slot('cdc', 'cdc_incident')" in warning


def test_an_idle_slot_gives_no_such_warning(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY)")
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1)"])
    drop_with_truth(db)
    code, _, stderr = recover_cli(db)
    assert code == 0
    assert stderr == ""


# -- C18: generated columns -----------------------------------------------------------------------

GENERATED = (
    "CREATE TABLE t (id integer PRIMARY KEY, a numeric(12,2),"
    " b numeric(12,2) GENERATED ALWAYS AS (a * 2) STORED)"
)


@pytest.fixture
def generated(db: Database) -> Database:
    db.execute(GENERATED + "; CREATE PUBLICATION p FOR ALL TABLES")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t (id, a) VALUES (1, 1.50), (2, 2.25)",
            "UPDATE t SET a = 10 WHERE id = 1",
        ],
    )
    drop_with_truth(db)
    return db


def test_pgoutput_before_18_says_it_cannot_carry_generated_columns(generated: Database) -> None:
    db = generated
    if int(db.scalar("SHOW server_version_num")) >= 180000:
        pytest.skip("pgoutput publishes generated columns from PostgreSQL 18")
    code, _, stderr = recover_cli(db, "--via-plugin", "pgoutput")
    assert code == 0, stderr
    assert "does not send GENERATED ALWAYS ... STORED columns" in stderr
    assert "--ddl" in stderr
    columns = db.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 't_recovered'::regclass"
        " AND attnum > 0 ORDER BY attnum"
    )
    assert columns == [("id",), ("a",)]  # what the warning is about


@pytest.mark.parametrize("plugin", ["pgoutput", "wal2json", "test_decoding"])
def test_a_ddl_with_the_generated_column_rebuilds_it_exactly(
    generated: Database, tmp_path: Path, plugin: str
) -> None:
    """The remedy: --ddl with the generated column; the server computes it (and walrecover does
    not write the value wal2json and test_decoding carry, which COPY would refuse)."""
    db = generated
    ddl = tmp_path / "t.sql"
    ddl.write_text(GENERATED.replace("TABLE t ", "TABLE public.t_recovered "))
    code, _, stderr = recover_cli(db, "--via-plugin", plugin, "--ddl", str(ddl))
    assert code == 0, stderr
    assert "GENERATED" not in stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert db.execute("SELECT id, b::text FROM t_recovered ORDER BY id") == [
        (1, "20.00"),
        (2, "4.50"),
    ]
