"""ALTER TABLE inside the stream: the rebuilt table follows it, or replay stops naming the LSN.

Never silently misaligned columns: every scenario compares the rebuilt table with the table as it
was just before the DROP, through every plugin.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Database
from helpers import SLOT, differences, drop_with_truth, recover_table, run_script

from walrecover.errors import ReplayError
from walrecover.lsn import Lsn
from walrecover.model import StopPoint

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
