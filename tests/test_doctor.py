"""``walrecover doctor``: one verdict per table, exit codes by severity, read-only."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from helpers import Database, cli

from walrecover.errors import EXIT_CRITICAL, EXIT_OK, EXIT_WARNING
from walrecover.ready.doctor import doctor
from walrecover.ready.protect import protect
from walrecover.stream.model import TableName


def _setup(db: Database, folder: Path) -> None:
    """covered: published, then protected; uncovered: in no publication and no slot that
    reads every table; no_identity: no key, with updates, protected."""
    db.execute("CREATE TABLE covered (id int PRIMARY KEY, amount numeric(12,2), note text)")
    db.execute("CREATE TABLE uncovered (id int PRIMARY KEY)")
    db.execute("CREATE TABLE no_identity (id int, amount numeric)")
    db.execute("INSERT INTO covered VALUES (1, 1.50, 'a'), (2, 2.25, NULL)")
    db.execute("INSERT INTO no_identity VALUES (1, 1)")
    db.execute("UPDATE no_identity SET amount = 2")
    db.execute("CREATE PUBLICATION pub FOR TABLE covered, no_identity")
    tables = [TableName("public", "covered"), TableName("public", "no_identity")]
    protect(db.dsn, tables, folder, retain=timedelta(hours=48), every=timedelta(hours=6))


def test_verdicts_for_a_covered_an_uncovered_and_a_no_replica_identity_table(
    db: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "points"
    _setup(db, folder)
    db.create_slot("cdc", "pgoutput")
    before = db.slot_position("cdc")

    result = cli("doctor", "-d", db.dsn, "--protect-dir", str(folder), "--json")
    assert result.exit_code == EXIT_CRITICAL, result.output
    report = json.loads(result.stdout)
    tables = {t["table"]: t for t in report["tables"]}
    assert set(tables) == {"public.covered", "public.uncovered", "public.no_identity"}

    covered = tables["public.covered"]
    assert covered["severity"] == "ok"
    assert covered["verdict"].startswith("recoverable back to ")
    assert covered["recoverable_since"] == covered["newest_baseline"]["snapshot_time"]
    assert covered["toast_columns"] == ["note"]
    assert covered["publications"] == ["pub"]

    uncovered = tables["public.uncovered"]
    assert uncovered["severity"] == "critical"
    assert uncovered["verdict"].startswith(
        "not recoverable because no usable logical slot of database"
    )
    assert "walrecover protect -d" in uncovered["verdict"]
    assert uncovered["recoverable_since"] is None

    ident = tables["public.no_identity"]
    assert ident["severity"] == "critical"
    assert ident["replica_identity"] == "default" and not ident["has_key"]
    assert "REPLICA IDENTITY FULL" in ident["verdict"]
    assert "no replica identity" in ident["verdict"]

    assert report["wal_level"] == "logical"
    assert report["plugins"]["pgoutput"] is True
    cdc = next(s for s in report["slots"] if s["slot"] == "cdc")
    assert cdc["plugin"] == "pgoutput" and cdc["retained_wal_bytes"] is not None
    assert db.slot_position("cdc") == before  # read-only

    text = cli("doctor", "-d", db.dsn, "--protect-dir", str(folder))
    lines = text.stdout.splitlines()
    assert any(line.startswith("OK       public.covered: recoverable back to ") for line in lines)
    assert any(
        line.startswith("CRITICAL public.uncovered: not recoverable because") for line in lines
    )

    only = cli("doctor", "-d", db.dsn, "--protect-dir", str(folder), "--table", "covered")
    assert only.exit_code == EXIT_OK, only.output


def test_a_slot_without_baseline_and_a_younger_publication_are_warnings(db: Database) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.create_slot("cdc", "test_decoding")
    diagnosis = doctor(db.dsn, [TableName("public", "t")])
    assert diagnosis.exit_code == EXIT_WARNING
    (table,) = diagnosis.tables
    assert table.verdict.startswith("recoverable only for rows written after slot cdc began")

    db.execute("SELECT pg_drop_replication_slot('cdc')")
    db.create_slot("cdc", "pgoutput")
    db.execute("INSERT INTO t VALUES (1)")
    db.execute("CREATE PUBLICATION late FOR TABLE t")
    (table,) = doctor(db.dsn, [TableName("public", "t")]).tables
    assert table.severity == "warning"
    assert any("publication late is younger than slot cdc" in p for p in table.problems)


def test_a_missing_table_and_no_slot_at_all(db: Database) -> None:
    result = cli("doctor", "-d", db.dsn, "--table", "public.gone")
    assert result.exit_code == EXIT_CRITICAL
    assert f"not recoverable because it does not exist in database {db.name!r}" in result.stdout
    assert "no logical slot in this database" in result.stdout
