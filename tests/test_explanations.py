"""Reconcile explanations (issue 9, item 7), through the CLI against the real server: each audit
row of a differing key is described by its operation and outcome (an applied DELETE removed its
row), and a row is followed from its insert to its delete, so a later row reusing its primary key
(in a table dropped and re-created under the same name) is not part of its history.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from helpers import SLOT, Database, cli, run_script


def _slot_args(db: Database, table: str, *extra: str) -> list[str]:
    return ["recover", "-d", db.dsn, "--slot", SLOT, "--table", table, *extra]


def _explain(audit: Path, ledger: Path) -> tuple[Result, Result]:
    args = ["reconcile", "--audit", str(audit), "--key", "account_id", "--amount", "amount"]
    args += ["--ledger-file", str(ledger)]
    return cli(*args), cli(*args, "--json")


@pytest.mark.parametrize("plugin", ["wal2json", "pgoutput"])
def test_explanations_describe_each_change_by_its_op_and_outcome(
    db: Database, tmp_path: Path, plugin: str
) -> None:
    """A void (an applied DELETE whose before-image holds only the primary key) is described
    as a delete that removed its row, not as a version of the row in the rebuilt table."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, account_id integer, amount numeric(12,2));"
        " CREATE PUBLICATION pub FOR TABLE t"
    )
    db.create_slot(SLOT, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 7, 10.00), (2, 7, 5.00)",
            "UPDATE t SET amount = 11.00 WHERE id = 1",
            "DELETE FROM t WHERE id = 2",
        ],
    )
    audit = tmp_path / "audit.parquet"
    extra = ["--via-plugin", plugin, "-o", "publication_names=pub"] if plugin == "pgoutput" else []
    done = cli(*_slot_args(db, "public.t", "--audit", str(audit), *extra))
    assert done.exit_code == 0, done.stderr
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("account_id,total\n7,16.00\n")  # the ledger missed the void

    text, as_json = _explain(audit, ledger)

    assert text.exit_code == as_json.exit_code == 3, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    (delete,) = [line for line in lines if " delete xid " in line]
    assert delete.endswith(
        ": -, applied: deleted; the row is not in the rebuilt table (not counted)"
    )
    (update,) = [line for line in lines if " update xid " in line]
    assert update.endswith(
        ": 11.00, applied: updated; this version of the row is in the rebuilt table (counted)"
    )
    inserts = [line for line in lines if " insert xid " in line]
    assert any(
        line.endswith(
            ": 10.00, superseded: inserted, then replaced by a later change to the"
            " same row (not counted)"
        )
        for line in inserts
    ), inserts
    assert any(
        line.endswith(
            ": 5.00, removed: inserted, then removed by a later delete or truncate (not counted)"
        )
        for line in inserts
    ), inserts
    (why,) = json.loads(as_json.stdout)["explanations"]
    meaning = {(r["op"], r["outcome"]): r["meaning"] for r in why["rows"]}
    assert meaning[("delete", "applied")] == "deleted; the row is not in the rebuilt table"


def test_a_recreated_table_reusing_a_key_is_not_another_rows_history(
    db: Database, tmp_path: Path
) -> None:
    """After the stop point the table was dropped and created again, and its new row id=1
    belongs to account 20: account 10's explanation shows only account 10's row id=1."""
    ddl = "CREATE TABLE t (id integer PRIMARY KEY, account_id integer, amount numeric(12,2))"
    db.execute(ddl)
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 10, 100.00), (2, 10, 1.00)"])
    stop = db.scalar("SELECT pg_current_wal_insert_lsn()::text")
    run_script(
        db,
        [
            "DELETE FROM t WHERE id = 2",
            "DROP TABLE t",
            ddl,
            "INSERT INTO t VALUES (1, 20, 7.00)",
            "UPDATE t SET amount = 8.00 WHERE id = 1",
            "DELETE FROM t WHERE id = 1",
        ],
    )
    audit = tmp_path / "audit.parquet"
    done = cli(*_slot_args(db, "public.t", "--audit", str(audit), "--stop-before-lsn", stop))
    assert done.exit_code == 0, done.stderr
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("account_id,total\n10,100.00\n")

    text, as_json = _explain(audit, ledger)

    assert text.exit_code == as_json.exit_code == 3, text.stdout + text.stderr
    (why,) = json.loads(as_json.stdout)["explanations"]
    assert why["key"] == ["10"]
    rows = [(r["op"], r["outcome"], r["amount"]) for r in why["rows"]]
    assert rows == [
        ("insert", "applied", "100.00"),
        ("insert", "applied", "1.00"),
        ("delete", "after_stop", None),
    ]
    assert "why 10: " in text.stdout
    assert "7.00" not in text.stdout and "8.00" not in text.stdout
