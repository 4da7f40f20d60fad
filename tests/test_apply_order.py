"""Updates and deletes of different rows sent a statement kind at a time, and when not.

A ledger's corrections (UPDATE) and voids (DELETE) interleave, so runs of one statement in
stream order are mostly one change long and each costs a round trip to the target. When the
buffered changes touch pairwise different rows by the table's real key, and nothing on the
target checks one row against another (a unique index on other columns, a foreign key, a
trigger), the applier sends each statement's changes together. Each test compares the rebuilt
table with the truth snapshotted before the DROP.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import SLOT, Database, differences, drop_with_truth, recover_table, run_script

from walrecover.errors import ReplayError
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import TableName
from walrecover.stream.sources import wait_for_flush

PLUGINS = ["wal2json", "pgoutput"]


def _options(plugin: str) -> dict[str, str] | None:
    return {"publication_names": "order_pub"} if plugin == "pgoutput" else None


def _source(db: Database, plugin: str, ddl: str) -> None:
    db.execute(ddl)
    if plugin == "pgoutput":
        db.execute("CREATE PUBLICATION order_pub FOR TABLE t")
    db.create_slot(plugin=plugin)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_interleaved_updates_and_deletes_of_different_rows_rebuild_the_truth(
    db: Database, plugin: str
) -> None:
    """Many transactions, each inserting rows and correcting (UPDATE) or voiding (DELETE)
    earlier ones, one key moved: the grouped path gives the truth."""
    _source(db, plugin, "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)")
    steps = []
    for n in range(1, 301):
        step = [f"INSERT INTO t VALUES ({n}, {n}.10, 'payment {n}')"]
        if n % 3 == 0:
            step.append(f"UPDATE t SET amount = amount + 1.11, note = 'fixed' WHERE id = {n - 2}")
        if n % 5 == 0:
            step.append(f"DELETE FROM t WHERE id = {n - 4}")
        if n % 7 == 0:
            step.append(f"UPDATE t SET note = 'seen' WHERE id = {n - 1}")
        steps.append("BEGIN; " + "; ".join(step) + "; COMMIT")
    steps.append("UPDATE t SET id = 1000 WHERE id = 299")
    steps.append("UPDATE t SET amount = 0.01 WHERE id = 1000")
    run_script(db, steps)
    drop_with_truth(db)

    result = recover_table(db, options=_options(plugin))

    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert result.unproven == ()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_unique_column_of_the_given_definition_keeps_the_stream_order(
    db: Database, plugin: str
) -> None:
    """The definition given with ``ddl`` makes ``email`` unique: a DELETE frees an address
    that a later UPDATE of another row takes, between updates of the same statement. Sent a
    statement kind at a time, the UPDATE would run before the DELETE and break the unique
    index; the order of the stream is kept instead."""
    ddl = "CREATE TABLE t (id integer PRIMARY KEY, email text NOT NULL UNIQUE, amount integer)"
    _source(db, plugin, ddl)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 'a@x', 1), (2, 'b@x', 2), (3, 'c@x', 3), (4, 'd@x', 4)",
            "BEGIN; UPDATE t SET amount = 10 WHERE id = 1; DELETE FROM t WHERE id = 2;"
            " UPDATE t SET email = 'b@x' WHERE id = 3; UPDATE t SET amount = 40 WHERE id = 4;"
            " COMMIT",
        ],
    )
    drop_with_truth(db)
    rebuilt = ddl.replace("TABLE t ", "TABLE public.t_recovered ")

    result = recover_table(db, ddl=rebuilt, options=_options(plugin))

    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert result.unproven == ()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_statements_reused_across_kinds_of_change_and_redefinitions_rebuild_the_truth(
    db: Database, plugin: str
) -> None:
    """Updates and deletes of every kind (other columns assigned, unchanged TOAST, before and
    after a column is added and one dropped) in one batch: each reuses the statement composed
    for its kind and never another's."""
    _source(
        db,
        plugin,
        "CREATE TABLE t (id integer PRIMARY KEY, code integer NOT NULL, "
        "amount numeric(12,2), note text, memo text)",
    )
    db.execute("ALTER TABLE t ALTER COLUMN note SET STORAGE EXTERNAL")
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 1000 + g, g, CASE WHEN g % 4 = 0 THEN repeat('n', 5000) "
            "ELSE 'short' END, 'm' FROM generate_series(1, 60) g",
            "UPDATE t SET amount = amount + 1 WHERE id % 3 = 0",
            "UPDATE t SET note = 'changed' WHERE id % 5 = 0",
            f"UPDATE t SET note = '{'x' * 5000}' WHERE id = 7",
            "DELETE FROM t WHERE id % 11 = 0",
            "ALTER TABLE t ADD COLUMN currency char(3)",
            "UPDATE t SET amount = amount + 2 WHERE id % 3 = 1",
            "UPDATE t SET currency = 'EUR' WHERE id % 2 = 0",
            "ALTER TABLE t DROP COLUMN memo",
            "INSERT INTO t VALUES (61, 1061, 61, 'short', 'CHF')",
            "UPDATE t SET amount = amount + 3, code = code + 1 WHERE id % 3 = 2",
            "UPDATE t SET id = id + 100 WHERE id % 6 = 1",
            "DELETE FROM t WHERE id % 13 = 0",
        ],
    )
    drop_with_truth(db)

    result = recover_table(db, options=_options(plugin), batch_size=10_000)

    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert not any("found no row" in reason for reason in result.unproven)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_runs_of_keyed_updates_and_deletes_go_set_based_and_rebuild_the_truth(
    db: Database, plugin: str, tmp_path: Path
) -> None:
    """Long runs of one kind of update or delete of different rows (sent as one set-based
    statement each): values set to NULL, a whole column NULL, unchanged TOAST read back for
    the audit, keys moved, rows the slot never saw inserted (no row found, counted)."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text, tag text)")
    db.execute("ALTER TABLE t ALTER COLUMN note SET STORAGE EXTERNAL")
    db.execute("INSERT INTO t SELECT g, g, 'before', 'b' FROM generate_series(1001, 1040) g")
    _source(db, plugin, "SELECT 1")
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, g, CASE WHEN g % 2 = 0 THEN repeat(md5(g::text), 100)"
            " ELSE 'short' END, 'x' FROM generate_series(1, 200) g",
            "BEGIN; UPDATE t SET amount = amount * 2 WHERE id BETWEEN 1 AND 60;"
            " UPDATE t SET tag = NULL, amount = NULL WHERE id BETWEEN 61 AND 90;"
            " DELETE FROM t WHERE id BETWEEN 91 AND 130;"
            " UPDATE t SET id = id + 500 WHERE id BETWEEN 131 AND 160;"
            " UPDATE t SET amount = 0.01 WHERE id BETWEEN 1001 AND 1020;"
            " DELETE FROM t WHERE id BETWEEN 1021 AND 1040; COMMIT",
            "UPDATE t SET tag = 'y' WHERE id BETWEEN 161 AND 200",
            "DELETE FROM t WHERE id > 1000",
        ],
    )
    drop_with_truth(db)
    audit = tmp_path / "audit.parquet"

    result = recover_table(db, options=_options(plugin), audit_path=audit)

    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert result.counts.no_row == 60
    assert any("60 update(s) or delete(s)" in reason for reason in result.unproven)
    rows = pq.read_table(audit).to_pylist()
    toasted = [r for r in rows if r["op"] == "update" and r["new_id"] == 2]
    assert toasted[0]["new_note"] == "".join(hashlib.md5(b"2").hexdigest() for _ in range(100))
    assert {r["outcome"] for r in rows if r["op"] == "update" and r["new_id"] == 1001} == {"no_row"}


def test_a_change_refused_inside_a_set_based_run_is_named(db: Database) -> None:
    """The target refuses one update of a long run (a CHECK of the given --ddl): the run is
    taken back and sent one by one, so the error names that update's LSN, not the run's."""
    _source(db, "wal2json", "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2))")
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, g FROM generate_series(1, 40) g",
            "UPDATE t SET amount = CASE WHEN id = 30 THEN 5000 ELSE amount + 1 END",
        ],
    )
    with db.connect() as conn:
        wait_for_flush(conn)  # decoding reads flushed WAL only (asynchronous commits here)
    peeked = db.execute(
        "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL,"
        " 'format-version', '2', 'include-lsn', '1')",
        (SLOT,),
    )
    refused = next(
        change["lsn"]
        for (data,) in peeked
        if (change := json.loads(data))["action"] == "U" and change["columns"][0]["value"] == 30
    )
    drop_with_truth(db)
    rebuilt = (
        "CREATE TABLE public.t_recovered (id integer PRIMARY KEY,"
        " amount numeric(12,2) CHECK (amount < 1000))"
    )

    with pytest.raises(ReplayError, match=r"cannot be applied to public\.t_recovered") as caught:
        recover_table(db, ddl=rebuilt)

    assert "violates check constraint" in str(caught.value)
    assert caught.value.facts["lsn"] == Lsn.parse(refused)


def test_a_value_too_long_for_the_rebuilt_column_is_refused_not_cut_in_a_set_based_run(
    db: Database,
) -> None:
    """A set-based run casts each value to the column's type without its modifier, and the
    assignment checks the modifier as a single update's parameter does: a value too long for
    the rebuilt table's varchar(5) is refused, never silently cut to five characters."""
    _source(db, "wal2json", "CREATE TABLE t (id integer PRIMARY KEY, code varchar(10))")
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'ab' FROM generate_series(1, 40) g",
            "UPDATE t SET code = 'abcdefgh'",
        ],
    )
    with db.connect() as conn:
        wait_for_flush(conn)
    drop_with_truth(db)
    rebuilt = "CREATE TABLE public.t_recovered (id integer PRIMARY KEY, code varchar(5))"

    with pytest.raises(ReplayError, match=r"cannot be applied to public\.t_recovered") as caught:
        recover_table(db, ddl=rebuilt)

    assert "value too long for type character varying(5)" in str(caught.value)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_set_based_runs_keep_values_of_types_with_modifiers(db: Database, plugin: str) -> None:
    """Types whose modifier a cast applies differently from an assignment (char(n) pads,
    bit(n) and varchar(n) refuse, numeric(p,s) and timestamp(0) round), as key and as value:
    a set-based run gives the table single updates give."""
    _source(
        db,
        plugin,
        "CREATE TABLE t (code char(4), flags bit(4), label varchar(6), amount numeric(6,2),"
        " at timestamp(0), PRIMARY KEY (code, flags))",
    )
    run_script(
        db,
        [
            "INSERT INTO t SELECT lpad(g::text, 3, '0'), (g % 16)::bit(4), 'l' || g, g,"
            " '2024-05-01 10:00:00' FROM generate_series(1, 40) g",
            "UPDATE t SET label = 'ab ', amount = amount + 0.125,"
            " at = '2024-05-01 10:00:00.6', flags = ~flags",
            "DELETE FROM t WHERE amount > 30",
        ],
    )
    drop_with_truth(db)

    recover_table(db, options=_options(plugin))

    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert db.scalar("SELECT count(*) FROM t_recovered") == 29
