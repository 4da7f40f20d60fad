"""``walrecover guard``: destructive statements of a migration, with line numbers, checked
against the recovery points of a real database."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from helpers import Database, cli, stderr_lines

from walrecover.errors import EXIT_DESTRUCTIVE, EXIT_ERROR, EXIT_OK
from walrecover.ready.guard import scan
from walrecover.ready.protect import protect
from walrecover.stream.model import TableName

MIGRATION = """-- 0042: tidy up
BEGIN;
CREATE TABLE scratch (id int);
DROP TABLE scratch;
/* not this: DROP TABLE accounts; */
INSERT INTO audit_log SELECT 'drop table accounts';
UPDATE accounts SET flag = true WHERE id = 1;
DELETE FROM sessions;
ALTER TABLE accounts
    DROP COLUMN legacy,
    ALTER COLUMN balance TYPE numeric(20,2);
DO $$ BEGIN EXECUTE 'TRUNCATE accounts'; END $$;
COMMIT;
"""


def test_scan_finds_each_destructive_statement_on_its_line() -> None:
    count, findings = scan(
        MIGRATION + 'TRUNCATE ONLY public.events, "Odd Name";\nUPDATE accounts SET flag = false;\n'
    )
    assert count == 11
    assert [(f.line, f.kind, f.written) for f in findings] == [
        (4, "DROP TABLE", "scratch"),
        (8, "DELETE without WHERE", "sessions"),
        (9, "DROP COLUMN legacy", "accounts"),
        (9, "ALTER COLUMN balance TYPE", "accounts"),
        (14, "TRUNCATE", "public.events"),
        (14, "TRUNCATE", '"Odd Name"'),
        (15, "UPDATE without WHERE", "accounts"),
    ]


def _database(db: Database, folder: Path) -> None:
    db.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, flag bool, legacy text, balance numeric)"
    )
    db.execute("CREATE TABLE sessions (id int PRIMARY KEY)")
    db.execute("CREATE TABLE audit_log (line text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE accounts, sessions")
    protect(
        db.dsn,
        [TableName("public", "accounts")],
        folder,
        retain=timedelta(hours=48),
        every=timedelta(hours=6),
    )


def test_guard_blocks_a_migration_until_every_table_it_destroys_is_covered(
    db: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "points"
    _database(db, folder)
    migration = tmp_path / "0042.sql"
    migration.write_text(MIGRATION)

    unchecked = cli("guard", str(migration))
    assert unchecked.exit_code == EXIT_DESTRUCTIVE
    assert f"{migration}:8: DELETE without WHERE sessions: DELETE FROM sessions" in unchecked.stdout
    assert "give -d CONNINFO" in unchecked.stdout

    checked = cli("guard", str(migration), "-d", db.dsn, "--protect-dir", str(folder), "--json")
    assert checked.exit_code == EXIT_DESTRUCTIVE, checked.output
    report = json.loads(checked.stdout)
    # scratch does not exist yet: nothing to lose. accounts has a recovery point.
    assert [(f["line"], f["table"]) for f in report["blocked"]] == [(8, "public.sessions")]
    verdicts = {v["table"]: v["severity"] for v in report["verdicts"]}
    # sessions is in the slot's publication, but its older rows are in no baseline.
    assert verdicts == {"public.accounts": "ok", "public.sessions": "warning"}

    protect(
        db.dsn,
        [TableName("public", "accounts"), TableName("public", "sessions")],
        folder,
        retain=timedelta(hours=48),
        every=timedelta(0),
    )
    covered = cli("guard", str(migration), "-d", db.dsn, "--protect-dir", str(folder))
    assert covered.exit_code == EXIT_OK, covered.output
    assert "Every affected table is covered by a recovery point." in covered.stdout


def test_a_harmless_migration_passes_and_a_broken_one_names_its_position(
    tmp_path: Path,
) -> None:
    harmless = tmp_path / "ok.sql"
    harmless.write_text("ALTER TABLE t ADD COLUMN c int;\nUPDATE t SET c = 1 WHERE id = 2;\n")
    result = cli("guard", str(harmless))
    assert result.exit_code == EXIT_OK
    assert "2 statements, nothing destructive" in result.stdout

    broken = tmp_path / "broken.sql"
    broken.write_text("SELECT 1;\n\n  DROP TABEL t;\n")
    result = cli("guard", str(broken), "--json")
    assert result.exit_code == EXIT_ERROR
    assert stderr_lines(result) == [
        f'walrecover: error: {broken}, line 3, column 8: syntax error at or near "TABEL": fix '
        "the migration (guard reads it with PostgreSQL's parser)"
    ]
    assert json.loads(result.stdout)["exit"] == EXIT_ERROR
