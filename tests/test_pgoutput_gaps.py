"""pgoutput streams that hide part of the history (issue 8: D2, D3, C15b, found by the oracle).

- D2: a pgoutput capture read while cut short, then whole, across an ``ALTER TABLE ... ADD
  COLUMN`` after the point the first run committed: the resumed run must follow the table's
  definition as of that point (the Relation message it skipped), not refuse the new column.
- D3: a table without a replica identity through a publication that does not publish UPDATE
  and DELETE (the source would refuse them otherwise): pgoutput leaves them out, so a capture
  of such a table is not proven exact (exit 4), and with ``-d`` the publication is checked.
- C15b: a table dropped and re-created under its name with no change of the new table in the
  stream: no new relation id shows, so the source's catalog or WAL must say it.

Every test compares the rebuilt table with the truth (EXCEPT ALL both ways) through the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fault_helpers import peek_capture
from helpers import Database, cli, differences, drop_with_truth, run_script, source_untouched

from walrecover.audit.writer import AuditWriter
from walrecover.errors import EXIT_UNPROVEN

PUBLICATION = "gaps_pub"
CAPTURE = ("-o", "proto_version=1", "-o", f"publication_names={PUBLICATION}")


def _capture(db: Database, path: Path) -> list[bytes]:
    return peek_capture(
        db.dsn,
        "cdc",
        "pgoutput",
        path,
        options={"proto_version": "1", "publication_names": PUBLICATION},
    )


def test_a_cut_pgoutput_capture_resumes_across_add_column(db: Database, tmp_path: Path) -> None:
    """D2: the rerun on the whole file failed with "public.t_recovered has no column 'extra'
    that the stream carries" on every run, so the recovery could never be resumed (the test
    failed before the fix). Now it resumes, follows the ALTER TABLE, and rebuilds the truth;
    the row that existed at the ALTER TABLE may hold a DEFAULT the WAL never shows: exit 4."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer)")
    db.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE t")
    db.create_slot("cdc", "pgoutput")
    run_script(
        db,
        [
            "INSERT INTO t VALUES (0, 0)",
            "ALTER TABLE t ADD COLUMN extra integer",
            *(f"INSERT INTO t VALUES ({n}, {n}, {n * 10})" for n in range(1, 6)),
        ],
    )
    drop_with_truth(db)
    whole = tmp_path / "pgoutput.capture"
    messages = _capture(db, whole)
    first_commit = next(i for i, m in enumerate(messages) if m[:1] == b"C")
    cut = b"".join(m + b"\n" for m in messages[: first_commit + 1])
    path = tmp_path / "growing.capture"
    rest = b"".join(m + b"\n" for m in messages[first_commit + 1 :])
    path.write_bytes(cut + b"\x7f damaged\n" + rest)  # a bad copy: damaged in the middle
    args = [
        "recover",
        *("--from-file", str(path), "--plugin", "pgoutput", *CAPTURE),
        *("--table", "public.t", "--target", db.dsn, "--batch-size", "1"),
    ]
    with source_untouched(db):
        first = cli(*args)
    assert first.exit_code == 1, first.stderr
    path.write_bytes(whole.read_bytes())
    with source_untouched(db):
        result = cli(*args)
    assert "that the stream carries" not in result.stderr
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "column extra of public.t first appears" in result.stderr
    assert "when 1 rows existed" in result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_a_capture_of_a_table_without_identity_is_not_proven(db: Database, tmp_path: Path) -> None:
    """D3: the publication publishes only INSERT and TRUNCATE (the source refuses an UPDATE of
    a table without a replica identity otherwise): the capture lacks the UPDATE, and the
    rebuilt table kept the old row with exit 0 (the test failed before the fix). Now exit 4,
    from the capture alone and, with -d, from the publication's flags."""
    db.execute("CREATE TABLE t (n integer)")
    db.execute(
        f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES WITH (publish = 'insert, truncate')"
    )
    db.create_slot("cdc", "pgoutput")
    run_script(db, ["INSERT INTO t VALUES (0), (1)", "UPDATE t SET n = 2 WHERE n = 0"])
    drop_with_truth(db)
    path = tmp_path / "pgoutput.capture"
    _capture(db, path)
    args = [
        "recover",
        *("--from-file", str(path), "--plugin", "pgoutput", *CAPTURE),
        *("--table", "public.t", "--target", db.dsn),
    ]
    alone = cli(*args)
    assert alone.exit_code == EXIT_UNPROVEN, alone.stderr
    assert "not proven exact: public.t has no replica identity in the capture" in alone.stderr
    assert "cannot be checked without -d" in alone.stderr
    assert differences(db, "truth", "t_recovered") == (1, 1)  # the UPDATE is not in the stream
    checked = cli(*args, "-d", db.dsn, "--into", "public.t_checked")
    assert checked.exit_code == EXIT_UNPROVEN, checked.stderr
    assert f"publication {PUBLICATION} does not publish UPDATE, DELETE" in checked.stderr


def _recreated(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    db.create_slot("cdc", "pgoutput")
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'old')",
            "CREATE UNLOGGED TABLE earlier AS SELECT * FROM t",
            "BEGIN; DROP TABLE t; CREATE TABLE t (id integer PRIMARY KEY, v text); COMMIT",
        ],
    )


SLOT_ARGS = ("recover", "--slot", "cdc", "--table", "public.t", "-o", "proto_version=1")


def test_a_re_created_table_without_a_change_is_found_in_the_wal(db: Database) -> None:
    """C15b: the new table has no change in the stream, so no new relation id shows; the
    earlier table's row came back with exit 0 while the name held an empty table (the test
    failed before the fix). pg_walinspect shows the DROP: exit 4 naming it, and the stop point
    it gives rebuilds the earlier table exactly."""
    db.execute("CREATE EXTENSION pg_walinspect")
    _recreated(db)
    drop_with_truth(db)  # the disaster drops the re-created (empty) table
    with source_untouched(db):
        result = cli(*SLOT_ARGS, "-d", db.dsn)
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "public.t may have been dropped and re-created under the same name" in result.stderr
    match = re.search(r"recover with --stop-before-lsn (\S+) to rebuild", result.stderr)
    assert match, result.stderr
    with source_untouched(db):
        earlier = cli(
            *SLOT_ARGS,
            "-d",
            db.dsn,
            "--stop-before-lsn",
            match.group(1),
            "--into",
            "public.t_earlier",
        )
    assert earlier.exit_code == 0, earlier.stderr
    assert differences(db, "earlier", "t_earlier") == (0, 0)


def test_a_re_created_table_still_there_is_seen_in_the_catalog(db: Database) -> None:
    """C15b without pg_walinspect: the name now belongs to another table than the stream's
    relation id (the test failed before the fix: exit 0 with the earlier table's row)."""
    _recreated(db)
    with source_untouched(db):
        result = cli(*SLOT_ARGS, "-d", db.dsn)
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "it now names another table (oid" in result.stderr
    assert "CREATE EXTENSION pg_walinspect" in result.stderr
    assert differences(db, "t", "t_recovered") == (0, 1)  # the name holds an empty table


def test_tables_created_after_the_drop_are_not_a_re_creation(db: Database) -> None:
    """The disaster's DROP is followed by tables that are not the dropped one: an index and a
    table of the application, and the rebuilt table itself when it is built on the source.
    Each was taken for a re-creation (exit 4 on a plain recovery, depending on when the WAL
    was flushed: seen in CI); the test failed before the fix."""
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    db.create_slot("cdc", "pgoutput")
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')", "UPDATE t SET v = 'c'"])
    drop_with_truth(db)
    run_script(db, ["CREATE TABLE app (id integer PRIMARY KEY)", "CREATE INDEX ON truth (v)"])
    for into in ("public.t_recovered", "public.t_again"):
        with source_untouched(db):
            result = cli(*SLOT_ARGS, "-d", db.dsn, "--into", into)
        assert result.exit_code == 0, result.stderr
        assert differences(db, "truth", into.split(".")[1]) == (0, 0)


def test_a_resumed_capture_read_still_finds_the_re_creation(db: Database, tmp_path: Path) -> None:
    """C15b through a capture whose first read failed after the table's last transaction had
    been applied: the rerun applies nothing more, and still must ask the WAL whether the
    table was replaced after that change (it rebuilt the earlier table's row with exit 0: the
    oracle, seed 1357913)."""
    db.execute("CREATE EXTENSION pg_walinspect")
    _recreated(db)
    drop_with_truth(db)
    whole = tmp_path / "pgoutput.capture"
    messages = _capture(db, whole)
    first_commit = next(i for i, m in enumerate(messages) if m[:1] == b"C")
    path = tmp_path / "growing.capture"
    cut = b"".join(m + b"\n" for m in messages[: first_commit + 1])
    rest = b"".join(m + b"\n" for m in messages[first_commit + 1 :])
    path.write_bytes(cut + b"\x7f damaged\n" + rest)
    args = [
        "recover",
        *("--from-file", str(path), "--plugin", "pgoutput", *CAPTURE),
        *("-d", db.dsn, "--table", "public.t", "--batch-size", "1"),
    ]
    with source_untouched(db):
        uninterrupted = cli(*args[:2], str(whole), *args[3:], "--into", "public.whole")
        first = cli(*args)
    assert uninterrupted.exit_code == EXIT_UNPROVEN, uninterrupted.stderr
    assert first.exit_code == 1, first.stderr
    path.write_bytes(whole.read_bytes())
    with source_untouched(db):
        result = cli(*args)
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "public.t may have been dropped and re-created under the same name" in result.stderr


def test_a_complete_recovery_without_its_recorded_result_is_not_proven(db: Database) -> None:
    """A run stopped after the target was marked complete and before it recorded its result
    (the checks after replay had not run): the rerun answered "already complete" with exit 0
    and no word of the re-creation those checks find (the oracle, seed 1357913). Now exit 4
    saying so and what to do; --force then rebuilds and finds it."""
    db.execute("CREATE EXTENSION pg_walinspect")
    _recreated(db)
    drop_with_truth(db)
    args = (*SLOT_ARGS, "-d", db.dsn)
    with source_untouched(db):
        first = cli(*args)
    assert first.exit_code == EXIT_UNPROVEN, first.stderr
    # What a kill between the last commit and the recorded result leaves.
    db.execute("UPDATE walrecover.progress SET result = NULL")
    with source_untouched(db):
        rerun = cli(*args)
    assert rerun.exit_code == EXIT_UNPROVEN, rerun.stderr
    assert "stopped after public.t_recovered was complete and before it recorded" in (rerun.stderr)
    with source_untouched(db):
        forced = cli(*args, "--force")
    assert forced.exit_code == EXIT_UNPROVEN, forced.stderr
    assert "public.t may have been dropped and re-created under the same name" in forced.stderr


def test_a_recovery_killed_while_publishing_its_audit_keeps_its_verdict(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after its last commit, while publishing the audit: the rerun only publishes the
    sealed parts, reading nothing, so the checks after replay did not run again and it ended
    with exit 0 where the first run had found the re-creation (exit 4). The rerun now answers
    with what the earlier run's checks recorded."""
    db.execute("CREATE EXTENSION pg_walinspect")
    _recreated(db)
    drop_with_truth(db)
    audit = tmp_path / "audit.parquet"
    args = (*SLOT_ARGS, "-d", db.dsn, "--audit", str(audit))

    def killed(self: AuditWriter, *_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(AuditWriter, "close", killed)
    with source_untouched(db):
        first = cli(*args)
    assert first.exit_code != 0 and not audit.exists(), first.stderr
    monkeypatch.undo()
    with source_untouched(db):
        again = cli(*args)
    assert again.exit_code == EXIT_UNPROVEN, again.stderr
    assert "public.t may have been dropped and re-created under the same name" in again.stderr
    assert audit.exists()


def test_a_capture_re_created_before_an_lsn_stop_is_not_the_earlier_table(
    db: Database, tmp_path: Path
) -> None:
    """The re-created table was emptied by a TRUNCATE after the stop point (a rewrite: a new
    file), then dropped: the check for a table re-created after the last change left out the
    new table's first file as "rewritten away" and its new file as a rewrite's, so it found no
    re-creation: exit 0 with the dropped table's rows where the name held an empty table (the
    oracle, seed 8642097, pgoutput captures with an LSN stop). The relation a file was made
    for is now looked up by its oid."""
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    db.create_slot("cdc", "pgoutput")
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'old'), (2, 'old')",
            "DROP TABLE t",
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
        ],
    )
    stop = str(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
    run_script(db, ["TRUNCATE t", "DROP TABLE t"])
    path = tmp_path / "pgoutput.capture"
    _capture(db, path)
    args = [
        "recover",
        *("--from-file", str(path), "--plugin", "pgoutput", *CAPTURE),
        *("-d", db.dsn, "--table", "public.t", "--stop-before-lsn", stop),
    ]
    with source_untouched(db):
        result = cli(*args)
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    assert "public.t may have been dropped and re-created under the same name" in result.stderr
