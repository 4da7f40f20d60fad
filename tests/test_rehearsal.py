"""The rehearsal's own parts: its workload in any grouping, its comparison with the truth, its
phases, and the baseline runbook finding the DROP without reading the slot again."""

from __future__ import annotations

import json
import math

import pytest
from helpers import Database, cli, run_script

from walrecover.drill import rehearsal_baseline
from walrecover.drill.rehearsal import matches_truth
from walrecover.drill.workload import create_bank, run_workload
from walrecover.incident import inspect
from walrecover.incident.inspect import drop_of_relation, inspect_table
from walrecover.incident.waldump import WalDump
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import TableName
from walrecover.stream.sources import wait_for_flush
from walrecover.stream.walrecords import wanted

T = TableName("public", "t")
PHASES = {"cluster_start", "setup", "workload", "drop", "recover", "verify", "teardown"}


@pytest.mark.parametrize(("per_commit", "sessions"), [(1, 1), (7, 1), (100, 1), (7, 2), (100, 3)])
def test_the_workload_keeps_its_ledger_and_its_cases_in_any_grouping(
    db: Database, per_commit: int, sessions: int
) -> None:
    n = 2_100
    with db.connect() as conn:
        create_bank(conn, 10)
        run_workload(conn, n, 10, per_commit=per_commit, sessions=sessions)
        # The session's planner settings are back to what they were.
        assert conn.execute("SHOW enable_seqscan").fetchone() == ("on",)
    kinds = dict(db.execute("SELECT kind, count(*) FROM transactions GROUP BY kind"))
    # Fees kept at 333 and 1333; the savepoint's and the aborted transaction's rows gone.
    assert kinds["fee"] == 2 and "bogus" not in kinds and "aborted" not in kinds
    assert kinds["corrected"] > 100
    payments = kinds["credit"] + kinds["debit"] + kinds["corrected"]
    assert n - 50 < payments < n  # voids: one in fifty
    assert db.scalar("SELECT count(*) FROM transactions WHERE length(note) > 2000") >= 3
    # Every balance is its account's sum, exactly.
    assert (
        db.scalar(
            "SELECT count(*) FROM accounts a FULL JOIN (SELECT account_id, sum(amount) AS s"
            " FROM transactions GROUP BY account_id) t ON t.account_id = a.id"
            " WHERE a.balance IS DISTINCT FROM coalesce(t.s, 0)"
        )
        == 0
    )
    # Untouched payments of one commit share its xid: at most one commit per group.
    commits = db.scalar(
        "SELECT count(DISTINCT xmin::text) FROM transactions WHERE kind IN ('credit', 'debit')"
    )
    assert commits <= math.ceil(n / per_commit)
    if per_commit == 1:
        assert commits == kinds["credit"] + kinds["debit"]
    # Each commit's payments are one session's, on that session's own accounts.
    spread = db.scalar(
        "SELECT max(n) FROM (SELECT count(DISTINCT (account_id - 1) * %s / 10) AS n"
        " FROM transactions WHERE kind IN ('credit', 'debit') GROUP BY xmin::text) c",
        (sessions,),
    )
    assert spread == 1


def test_matches_truth_sees_a_changed_row_a_missing_duplicate_and_a_row_too_many(
    db: Database,
) -> None:
    run_script(
        db,
        [
            "CREATE TABLE rehearsal_truth (id bigint, amount numeric(12,2), meta jsonb)",
            "INSERT INTO rehearsal_truth SELECT g, g / 100.0, jsonb_build_object('g', g)"
            " FROM generate_series(1, 1000) g",
            "CREATE TABLE transactions_recovered AS SELECT * FROM rehearsal_truth",
        ],
    )
    assert matches_truth(db.dsn)
    db.execute("UPDATE transactions_recovered SET amount = amount + 0.01 WHERE id = 500")
    assert not matches_truth(db.dsn)
    db.execute("UPDATE transactions_recovered SET amount = amount - 0.01 WHERE id = 500")
    assert matches_truth(db.dsn)
    db.execute("INSERT INTO rehearsal_truth SELECT * FROM rehearsal_truth WHERE id = 7")
    assert not matches_truth(db.dsn)
    db.execute(
        "INSERT INTO transactions_recovered SELECT * FROM rehearsal_truth WHERE id = 7 LIMIT 1"
    )
    assert matches_truth(db.dsn)
    # A row too many in the rebuilt table, then a duplicate standing in for a missing row.
    db.execute("INSERT INTO transactions_recovered VALUES (1001, 1, '{}')")
    assert not matches_truth(db.dsn)
    db.execute("DELETE FROM transactions_recovered WHERE id IN (1001, 8)")
    db.execute("INSERT INTO transactions_recovered SELECT * FROM rehearsal_truth WHERE id = 9")
    assert not matches_truth(db.dsn)


def test_drop_of_relation_is_the_drop_inspect_finds_through_the_slot(db: Database) -> None:
    if db.scalar("SHOW server_version_num") < "150000":
        pytest.skip("commit records list the dropped relations' oids from PostgreSQL 15 on")
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION rehearsal_pub FOR ALL TABLES")
    db.create_slot("cdc", "pgoutput")
    first = int(db.scalar("SELECT 't'::regclass::oid::bigint"))
    after = Lsn.parse(db.lsn())
    run_script(db, ["INSERT INTO t VALUES (1, 'a')", "DROP TABLE t"])
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    second = int(db.scalar("SELECT 't'::regclass::oid::bigint"))
    run_script(db, ["INSERT INTO t VALUES (2, 'b')", "DROP TABLE t"])
    found = inspect_table(db.dsn, T, slot="cdc", options={"publication_names": "rehearsal_pub"})
    drops = [e for e in found.events if e.kind == "drop"]
    assert [e.relation_id for e in drops] == [first, second]

    assert drop_of_relation(db.dsn, T, first, after) == drops[0]
    assert drop_of_relation(db.dsn, T, second, after) == drops[1]
    # After the first DROP, only the second is there; a relation never dropped has none.
    assert drop_of_relation(db.dsn, T, first, Lsn(int(drops[0].end_lsn or 0))) is None
    assert drop_of_relation(db.dsn, T, 1, after) is None


def test_the_baseline_runbook_finds_the_drop_without_reading_the_slot_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recovery point recorded the table's relation id: the DROP is found in the WAL alone
    (the slot is read once, by the recovery)."""

    def no_slot_view(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect read the slot to tie the table's name to its relation")

    monkeypatch.setattr(inspect, "read_slot_view", no_slot_view)
    result = rehearsal_baseline.rehearse_baseline(400, 10)
    assert result.identical and result.reconciled
    assert result.baseline is not None and result.baseline["found"].startswith("DROP (relation")
    assert "not in the WAL" not in result.baseline["found"]
    assert {"inspect", "baseline_export", "rto"} <= set(result.seconds)
    assert result.seconds["rto"] >= result.seconds["inspect"] + result.seconds["recover"]


def test_rehearse_reports_where_the_time_went() -> None:
    result = cli(
        "rehearse", "--transactions", "200", "--accounts", "5", "--per-commit", "1", "--json"
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["identical"] and out["reconciled"] and out["per_commit"] == 1
    assert PHASES | {"total"} == set(out["seconds"])
    assert out["seconds"]["total"] >= sum(out["seconds"][p] for p in PHASES) - 0.01
    assert set(out["cpu"]) == PHASES
    assert out["cpu"]["workload"]["server"] is not None
    assert set(out["recovery_seconds"]) == {"replay", "reconcile", "total"}

    text = cli("rehearse", "--transactions", "50", "--accounts", "5")
    assert text.exit_code == 0, text.stderr
    (line,) = [x for x in text.stdout.splitlines() if x.startswith("  time: ")]
    assert line.startswith("  time: cluster start ") and ", teardown " in line
    assert "recover " in line and "(replay " in line and "; total " in line


def test_rehearse_refuses_a_group_of_no_transactions() -> None:
    result = cli("rehearse", "--transactions", "10", "--per-commit", "0")
    assert result.exit_code == 2
    assert "--per-commit" in result.stderr


def test_waldump_without_files_or_lsns_keeps_what_the_full_scan_keeps(db: Database) -> None:
    """The scan inspect makes to find a DROP skips the row records before parsing them: it
    yields exactly the records the full scan's filter keeps."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    file = int(db.scalar("SELECT pg_relation_filenode('t')::bigint"))
    start = Lsn.parse(db.lsn())
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 500) g",
            "UPDATE t SET v = 'y' WHERE id < 10",
            "TRUNCATE t",
            "COPY t (id) FROM PROGRAM 'seq 1 50'",
            "DROP TABLE t",
        ],
    )
    with db.connect() as conn:
        end = wait_for_flush(conn)
    dump = WalDump(db.cluster.data / "pg_wal")
    full = list(dump.scan(start, end, files=frozenset({file})))
    assert {r.record_type for r in full} >= {"INSERT", "UPDATE", "TRUNCATE", "COMMIT"}
    nothing: frozenset[int] = frozenset()
    kept = [
        r for r in dump.scan(start, end, files=frozenset({file})) if wanted(r, nothing, nothing)
    ]
    found = list(dump.scan(start, end))
    assert found == kept
    assert [r.record_type for r in found if r.resource_manager == "Heap"] == ["TRUNCATE"]
    assert any(r.resource_manager == "Transaction" for r in found)
