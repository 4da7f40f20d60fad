"""ALTER TABLE inside the stream: the rebuilt table follows it, or replay stops naming the LSN.

Never silently misaligned columns: every scenario compares the rebuilt table with the table as it
was just before the DROP, through every plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from every_way import WAY_IDS, WAYS, create_source, recover_way, slot_name
from helpers import (
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    recover_table,
    run_script,
    stderr_lines,
)

from walrecover.errors import ReplayError
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import StopPoint

PLUGINS = ["wal2json", "pgoutput", "test_decoding"]


def _slot(db: Database, plugin: str) -> dict[str, Any]:
    """Create the slot (and what the plugin needs); return recover() options for it."""
    if plugin == "pgoutput":
        db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    db.create_slot(SLOT, plugin)
    return {"options": {"publication_names": "pub"}} if plugin == "pgoutput" else {}


@pytest.mark.parametrize("plugin", PLUGINS)
def test_added_and_dropped_columns_are_followed(db: Database, plugin: str) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), memo text)")
    db.execute("ALTER TABLE t REPLICA IDENTITY FULL")  # test_decoding then shows the key
    options = _slot(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 1.10, 'one'), (2, 2.20, 'two')",
            "DELETE FROM t WHERE id = 2",
            "ALTER TABLE t ADD COLUMN currency char(3)",
            "INSERT INTO t VALUES (3, 3.30, 'three', 'EUR')",
            "UPDATE t SET currency = 'USD' WHERE id = 1",
            "ALTER TABLE t DROP COLUMN memo",
            "INSERT INTO t VALUES (4, 4.40, 'CHF')",
            "UPDATE t SET amount = 9.99 WHERE id = 3",
        ],
    )
    drop_with_truth(db)

    result = recover_table(db, **options)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    columns = db.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 't_recovered'::regclass"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    )
    assert [c[0] for c in columns] == ["id", "amount", "currency"]
    assert any("added currency" in w for w in result.warnings)
    assert any("dropped memo" in w for w in result.warnings)


@pytest.mark.parametrize("plugin", ["wal2json", "pgoutput"])
def test_a_type_change_stops_with_the_lsn(db: Database, plugin: str) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, code integer)")
    options = _slot(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 10)",
            "ALTER TABLE t ALTER COLUMN code TYPE text",
            "INSERT INTO t VALUES (2, 'twenty')",
        ],
    )
    alter_lsn = Lsn.parse(db.lsn())
    run_script(db, ["DROP TABLE t"])

    with pytest.raises(ReplayError, match=r"type of public\.t\.code changes at LSN") as caught:
        recover_table(db, **options)
    assert caught.value.facts["lsn"] is not None
    assert (
        not db.scalar("SELECT to_regclass('t_recovered') IS NOT NULL")
        or db.scalar(
            "SELECT count(*) FROM walrecover.progress WHERE target = 'public.t_recovered'"
            " AND complete"
        )
        == 0
    )
    del alter_lsn


def test_a_widened_numeric_is_followed(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(6,2))")
    options = _slot(db, "wal2json")
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 9999.99)",
            "ALTER TABLE t ALTER COLUMN amount TYPE numeric(14,2)",
            "INSERT INTO t VALUES (2, 123456789012.34)",
        ],
    )
    drop_with_truth(db)

    recover_table(db, **options)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert db.scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE"
        " attrelid = 't_recovered'::regclass AND attname = 'amount'"
    ) == ("numeric(14,2)")


def test_a_table_dropped_and_recreated_under_its_name_stops_pgoutput(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    options = _slot(db, "pgoutput")
    run_script(db, ["INSERT INTO t VALUES (1, 'old table')"])
    between = Lsn.parse(db.lsn())
    run_script(
        db,
        [
            "DROP TABLE t",
            "CREATE TABLE t (id integer PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (2, 'new table')",
        ],
    )

    with pytest.raises(ReplayError, match="dropped and re-created at LSN"):
        recover_table(db, force=True, **options)

    # Stopping before the DROP recovers the old table alone.
    result = recover_table(db, force=True, stop=StopPoint(lsn=between), **options)
    assert result.rows == 1
    assert db.execute("SELECT id, v FROM t_recovered") == [(1, "old table")]


# -- ADD COLUMN ... DEFAULT: the value of the rows that existed is not in the WAL ------------------

#: The table as it was at the DROP, as a user gives it with --ddl.
FINAL_DDL = (
    "CREATE TABLE public.t_recovered (id integer PRIMARY KEY, v text, c text DEFAULT 'dflt')"
)


def _column_added_with_a_default(db: Database, plugin: str) -> None:
    """Two rows, then ADD COLUMN c DEFAULT 'dflt' (they hold 'dflt' from the catalog), then
    rows that carry c in the stream. pg_walinspect proves the ALTER TABLE did not re-create the
    table (test_decoding's stream alone cannot: see test_recreated.py)."""
    db.execute("CREATE EXTENSION pg_walinspect; CREATE TABLE t (id integer PRIMARY KEY, v text)")
    create_source(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'before'), (2, 'before too')",
            "ALTER TABLE t ADD COLUMN c text DEFAULT 'dflt'",
            "INSERT INTO t VALUES (3, 'after')",
            "INSERT INTO t VALUES (4, 'after, own c', 'own')",
        ],
    )
    assert drop_with_truth(db) == 4
    assert db.scalar("SELECT count(*) FROM truth WHERE c = 'dflt'") == 3


@pytest.mark.parametrize(("plugin", "kind"), WAYS, ids=WAY_IDS)
def test_rows_before_an_added_default_are_not_proven(
    db: Database, tmp_path: Path, plugin: str, kind: str
) -> None:
    """Issue 8 C17: the rows that existed at ``ADD COLUMN c text DEFAULT 'dflt'`` come back
    with NULL (the default is in the catalog, not the WAL): not proven exact, naming the
    column, where it appeared, how many rows existed, and --ddl."""
    _column_added_with_a_default(db, plugin)

    result = recover_way(db, plugin, kind, tmp_path)

    assert db.execute("SELECT id FROM t_recovered WHERE c IS NULL ORDER BY id") == [(1,), (2,)]
    assert differences(db, "truth", "t_recovered") == (2, 2)
    (reason,) = _without_recreation_doubt(result.unproven, plugin, kind)
    assert reason.startswith("column c of public.t first appears "), reason
    assert "when 2 rows existed" in reason and "--ddl" in reason and "DEFAULT" in reason
    assert "at LSN " in reason or "in transaction " in reason, reason


@pytest.mark.parametrize(("plugin", "kind"), WAYS, ids=WAY_IDS)
def test_a_ddl_with_the_added_default_rebuilds_those_rows_exactly(
    db: Database, tmp_path: Path, plugin: str, kind: str
) -> None:
    """With --ddl defining c and its DEFAULT, the rows copied before the ALTER TABLE take it;
    the ADD COLUMN in the stream is not run again (it failed with "column already exists ...
    rerun")."""
    _column_added_with_a_default(db, plugin)

    result = recover_way(db, plugin, kind, tmp_path, ddl=FINAL_DDL)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert _without_recreation_doubt(result.unproven, plugin, kind) == ()


def _without_recreation_doubt(unproven: tuple[str, ...], plugin: str, kind: str) -> tuple[str, ...]:
    """A test_decoding capture has no LSNs, so even pg_walinspect cannot tell its ALTER TABLE
    from a DROP and CREATE: that doubt (and only there) is right; the rest is the test's."""
    if (plugin, kind) != ("test_decoding", "capture"):
        return unproven
    doubts = [r for r in unproven if "may have been dropped and re-created" in r]
    assert len(doubts) == 1, unproven
    return tuple(r for r in unproven if r not in doubts)


def test_a_default_that_is_not_a_constant_is_not_proven(db: Database, tmp_path: Path) -> None:
    """A --ddl DEFAULT such as now() is evaluated when walrecover writes the rows, not when the
    ALTER TABLE ran: not proven exact."""
    _column_added_with_a_default(db, "wal2json")
    for default in ("now()::text", "CURRENT_USER", "md5(random()::text)"):
        ddl = FINAL_DDL.replace("'dflt'", default)

        result = recover_way(db, "wal2json", "slot", tmp_path, ddl=ddl, force=True)

        (reason,) = result.unproven
        assert "not a constant" in reason and "when 2 rows existed" in reason, reason
    # Casts of constants are constants.
    ddl = FINAL_DDL.replace("text DEFAULT 'dflt'", "varchar(9) DEFAULT 'dflt'::varchar(4)")
    assert recover_way(db, "wal2json", "slot", tmp_path, ddl=ddl, force=True).unproven == ()


def test_the_cli_exits_4_naming_the_added_column(db: Database) -> None:
    _column_added_with_a_default(db, "wal2json")

    done = cli("recover", "-d", db.dsn, "--slot", slot_name(db, "wal2json"), "--table", "t")

    assert done.exit_code == 4, done.stderr
    warnings = [line for line in stderr_lines(done) if "WARNING" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith(
        "walrecover: WARNING: not proven exact: column c of public.t first appears at LSN "
    ), warnings[0]


def test_no_row_before_an_added_column_is_exact(db: Database) -> None:
    """A column added while the table was still empty: nothing to doubt."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    options = _slot(db, "wal2json")
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'gone')",
            "DELETE FROM t",
            "ALTER TABLE t ADD COLUMN c text DEFAULT 'dflt'",
            "INSERT INTO t VALUES (2, 'after')",
        ],
    )
    drop_with_truth(db)

    result = recover_table(db, **options)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert result.unproven == ()


# -- a column dropped while only updates follow: wal2json leaves it out as if unchanged TOAST --


@pytest.mark.parametrize(
    ("column", "value"),
    [("memo text", "'one'"), ("qty integer", "5"), ("memo text", "NULL")],
    ids=["short-text", "fixed-length", "null"],
)
def test_a_column_dropped_before_updates_only_is_not_kept_silently(
    db: Database, column: str, value: str
) -> None:
    """wal2json shows a DROP COLUMN only when an insert next lists the columns: an update
    after it leaves the column out, as it leaves out an unchanged TOASTed value. When the
    value left out cannot have been TOASTed, the rebuilt table (which still has the column)
    is not proven the dropped one, and the CLI exits 4 naming the column."""
    name = column.split(maxsplit=1)[0]
    db.execute(f"CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), {column})")
    _slot(db, "wal2json")
    run_script(
        db,
        [
            f"INSERT INTO t VALUES (1, 1.10, {value}), (2, 2.20, {value})",
            f"ALTER TABLE t DROP COLUMN {name}",
            "UPDATE t SET amount = 9.99 WHERE id = 1",
        ],
    )
    drop_with_truth(db)

    done = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "t")

    assert done.exit_code == 4, done.stderr
    assert f"left out column {name} as an unchanged TOASTed value" in done.stderr
    assert f"drop {name} from public.t_recovered" in done.stderr


@pytest.mark.parametrize("plugin", ["wal2json", "pgoutput"])
def test_unchanged_toasted_values_left_out_of_updates_are_not_suspected(
    db: Database, plugin: str
) -> None:
    """Updates that leave long out-of-line values alone (and a short one in another row): the
    rebuilt table equals the dropped one and nothing is reported."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)")
    db.execute("ALTER TABLE t ALTER COLUMN note SET STORAGE EXTERNAL")
    options = _slot(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, g, CASE WHEN g % 2 = 0 THEN repeat('n', 3000) ELSE 'x' END"
            " FROM generate_series(1, 10) g",
            "UPDATE t SET amount = amount + 1",
        ],
    )
    drop_with_truth(db)

    result = recover_table(db, **options)

    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert not any("left out column" in reason for reason in result.unproven)
