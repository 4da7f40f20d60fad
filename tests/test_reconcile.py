"""Reconciliation against a real server: tables, audits, every ledger source, exactly.

One bank is built, recovered (with an audit) and reconciled per module. Amounts are
numeric(20,8) with values a float cannot hold (20 significant digits, 1e-8 steps); expected
totals are computed here with Decimal, or by PostgreSQL from ``truth`` (the table as it was
before the drop, an unlogged copy the slot never sees). After the stop point one more payment
is made to account 3 and ``accounts.balance`` counts it: the rebuilt table must lack it, and the
explanation must say it was left out after the stop point.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    Database,
    cli,
    differences,
    recover_table,
    run_script,
    snapshot,
    source_untouched,
    stderr_lines,
)

from walrecover.db import connect
from walrecover.drill.cluster import Cluster
from walrecover.errors import LedgerError
from walrecover.ledger.reconcile import (
    MISMATCHED,
    MISSING_IN_LEDGER,
    MISSING_IN_RECOVERED,
    LedgerFile,
    LedgerQuery,
    Reconciliation,
    RecoveredAudit,
    RecoveredTable,
    compare_totals,
    reconcile,
    reconcile_table,
    table_totals,
)
from walrecover.rebuild.recover import LedgerCheck, RecoveryResult, recover
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import StopPoint, TableName

#: (account, amount, kind, booked_at) of each committed ledger row, in insert order (ids 1..n).
ROWS = [
    (1, "12345678.12345678", "credit", "2024-05-01 10:00:00+00"),
    (1, "0.00000001", "credit", "2024-05-01 23:59:59.999999+00"),
    (2, "123456789012.12345678", "credit", "2024-05-02 00:00:00+00"),
    (2, "-0.1", "debit", "2024-05-02 12:00:00+00"),
    (2, "0.2", "credit", "2024-05-03 01:30:00+02"),  # 2024-05-02 23:30 UTC
    (3, "0.00000001", "credit", "2024-05-02 08:00:00+00"),
    (3, "-0.00000003", "debit", "2024-05-03 08:00:00+00"),
    (4, "99999999999.99999999", "credit", "2024-05-03 09:00:00+00"),
    (4, "-99999999999.99999998", "debit", "2024-05-03 09:00:00+00"),
    (1, "7.00000000", "credit", "2024-05-03 10:00:00+00"),  # deleted below
]
#: Corrections applied after the inserts: id -> new amount; and the deleted ids.
CORRECTED = {3: "123456789012.12345677"}
DELETED = {10}
ACCOUNTS = 5  # account 5 has no transactions and a zero balance
#: Committed after the stop point: recovered tables must not have it.
LATE = (3, "42.00000000")

INTO = TableName("public", "t_recovered")
BANK_SLOT = "reconcile_cdc"
#: The ledger as PostgreSQL knows it before the disaster: the truth, every account.
TRUTH_LEDGER = (
    "SELECT a.id, coalesce(sum(t.amount), 0) FROM accounts a"
    " LEFT JOIN truth t ON t.account_id = a.id GROUP BY a.id"
)
#: The live balances, which also count the payment made after the stop point.
BALANCES = "SELECT id, balance FROM accounts"


def expected_rows() -> dict[int, tuple[int, str, str, str]]:
    """id -> (account, amount, kind, booked_at) of the rows the dropped table held."""
    rows = {i: row for i, row in enumerate(ROWS, start=1)}
    for i, amount in CORRECTED.items():
        account, _, kind, at = rows[i]
        rows[i] = (account, amount, kind, at)
    return {i: row for i, row in rows.items() if i not in DELETED}


def expected_totals() -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for account, amount, _, _ in expected_rows().values():
        totals[str(account)] += Decimal(amount)
    totals["5"] += 0
    return dict(totals)


def utc_day(at: str) -> str:
    return pd.Timestamp(at).tz_convert("UTC").strftime("%Y-%m-%d")


def expected_daily() -> dict[tuple[str, str], Decimal]:
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for account, amount, _, at in expected_rows().values():
        totals[(str(account), utc_day(at))] += Decimal(amount)
    return dict(totals)


@dataclass
class Bank:
    db: Database
    result: RecoveryResult
    audit: Path
    stop: Lsn

    def table(self) -> RecoveredTable:
        return RecoveredTable(self.db.dsn, INTO)

    def query(self, sql: str) -> LedgerQuery:
        return LedgerQuery(sql, self.db.dsn)

    def reconcile(self, ledger_query: str) -> Reconciliation:
        with connect(self.db.dsn) as target, connect(self.db.dsn) as ledger:
            return reconcile_table(
                target,
                INTO,
                key="account_id",
                amount="amount",
                ledger=ledger,
                ledger_query=ledger_query,
                audit=self.audit,
            )


@pytest.fixture(scope="module")
def bank(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bank]:
    """A bank whose ``t`` was written after the slot, dropped, and recovered with an audit."""
    name = "reconcile_bank"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    try:
        db.execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric(20,8) NOT NULL);"
            " CREATE TABLE t (id bigserial PRIMARY KEY, account_id integer NOT NULL,"
            " amount numeric(20,8) NOT NULL, kind text NOT NULL, booked_at timestamptz NOT NULL)"
        )
        db.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, %s) g", (ACCOUNTS,))
        db.create_slot(BANK_SLOT)  # slots are cluster-wide: not the tests' "cdc"
        steps = [
            f"INSERT INTO t (account_id, amount, kind, booked_at)"
            f" VALUES ({account}, {amount}, '{kind}', '{at}')"
            for account, amount, kind, at in ROWS
        ]
        steps += [
            f"UPDATE t SET amount = {amount} WHERE id = {i}" for i, amount in CORRECTED.items()
        ]
        steps += [f"DELETE FROM t WHERE id = {i}" for i in DELETED]
        steps.append(
            "UPDATE accounts a SET balance ="
            " coalesce((SELECT sum(amount) FROM t WHERE account_id = a.id), 0)"
        )
        run_script(db, steps)
        snapshot(db, "t", "truth")
        stop = Lsn.parse(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        run_script(
            db,
            [
                "BEGIN; INSERT INTO t (account_id, amount, kind, booked_at)"
                f" VALUES ({LATE[0]}, {LATE[1]}, 'credit', '2024-05-04 09:00+00');"
                f" UPDATE accounts SET balance = balance + {LATE[1]} WHERE id = {LATE[0]};"
                " COMMIT",
                "DROP TABLE t",
            ],
        )
        audit = tmp_path_factory.mktemp("reconcile") / "audit.parquet"
        result = recover_table(
            db,
            slot=BANK_SLOT,
            stop=StopPoint(lsn=stop),
            ledger=LedgerCheck("account_id", "amount", TRUTH_LEDGER),
            audit_path=audit,
        )
        yield Bank(db, result, audit, stop)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def records(frame: pd.DataFrame, *columns: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = frame[list(columns)].to_dict("records")  # type: ignore[assignment]
    return rows


# -- the rebuilt table ------------------------------------------------------------------------


def test_money_survives_replay_exactly(bank: Bank) -> None:
    rows = bank.db.execute("SELECT id, account_id, amount::text FROM t_recovered ORDER BY id")
    expected = [(i, a, f"{Decimal(x):.8f}") for i, (a, x, _, _) in sorted(expected_rows().items())]
    assert rows == expected
    assert differences(bank.db, "truth", "t_recovered") == (0, 0)
    assert bank.db.scalar("SELECT count(*) FROM t_recovered WHERE amount = 42") == 0


def test_rebuilt_totals_are_exact_decimals(bank: Bank) -> None:
    with connect(bank.db.dsn) as conn:
        totals = table_totals(conn, INTO, "account_id", "amount")
    assert {k[0]: v for k, (v, _) in totals.items()} == {
        k: v for k, v in expected_totals().items() if k != "5"
    }
    assert totals[("2",)] == (Decimal("123456789012.22345677"), 3)
    assert all(type(v) is Decimal for v, _ in totals.values())


def test_a_value_a_float_would_round_stays_exact(bank: Bank, tmp_path: Path) -> None:
    exact = expected_totals()["2"]
    assert Decimal(float(exact)) != exact  # a float cannot hold it
    # A ledger file that went through a float on its way is caught, to the last digit.
    rounded = tmp_path / "rounded.csv"
    lines = [f"{k},{v}" for k, v in expected_totals().items() if k != "2"]
    rounded.write_text("account_id,total\n" + "\n".join([*lines, f"2,{float(exact)!r}"]) + "\n")
    rec = reconcile(bank.table(), LedgerFile(rounded), key="account_id", amount="amount")
    (row,) = records(rec.differences, "key", "delta", "status")
    assert row == {"key": "2", "delta": exact - Decimal(repr(float(exact))), "status": MISMATCHED}
    assert row["delta"] != 0
    assert rec.recovered_total == sum(expected_totals().values())


def test_recovery_reconciled_with_the_ledger(bank: Bank) -> None:
    rec = bank.result.reconciliation
    assert rec is not None
    assert rec.matched
    assert (rec.keys, rec.matched_keys, rec.mismatched) == (ACCOUNTS, ACCOUNTS, 0)
    assert (rec.missing_in_recovered, rec.missing_in_ledger) == (0, 0)
    assert rec.total_difference == 0
    assert rec.differences.empty
    assert len(rec.matched_frame) == ACCOUNTS
    assert rec.to_dict()["matched"] is True
    assert rec.explanations == {}


# -- one difference at a time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "key", "recovered", "ledger"),
    [
        (
            TRUTH_LEDGER.replace(
                "coalesce(sum(t.amount), 0)",
                "coalesce(sum(t.amount), 0) + CASE WHEN a.id = 2 THEN 0.00000001 ELSE 0 END",
            ),
            MISMATCHED,
            "2",
            expected_totals()["2"],
            expected_totals()["2"] + Decimal("0.00000001"),
        ),
        (
            f"{TRUTH_LEDGER} UNION ALL SELECT 99, 5.5",
            MISSING_IN_RECOVERED,
            "99",
            Decimal(0),
            Decimal("5.5"),
        ),
        (
            f"SELECT * FROM ({TRUTH_LEDGER}) l WHERE id <> 3",
            MISSING_IN_LEDGER,
            "3",
            expected_totals()["3"],
            Decimal(0),
        ),
    ],
    ids=["wrong-amount-by-1e-8", "missing-in-recovered", "missing-in-ledger"],
)
def test_one_difference_is_found_exactly(
    bank: Bank, query: str, status: str, key: str, recovered: Decimal, ledger: Decimal
) -> None:
    rec = bank.reconcile(query)

    assert not rec.matched
    counts = {
        MISMATCHED: rec.mismatched,
        MISSING_IN_RECOVERED: rec.missing_in_recovered,
        MISSING_IN_LEDGER: rec.missing_in_ledger,
    }
    assert counts == {s: int(s == status) for s in counts}
    assert rec.matched_keys == rec.keys - 1
    assert records(rec.differences, "key", "recovered", "ledger", "delta", "status") == [
        {
            "key": key,
            "recovered": recovered,
            "ledger": ledger,
            "delta": recovered - ledger,
            "status": status,
        }
    ]
    assert len(rec.frame(status)) == 1
    assert rec.total_difference == recovered - ledger
    summary = rec.to_dict()
    assert summary["matched"] is False
    assert Decimal(summary["total_difference"]) == recovered - ledger
    assert Decimal(summary["differences"][0]["delta"]) == recovered - ledger


def test_a_transaction_missing_from_the_recovery_is_explained(bank: Bank) -> None:
    """The ledger counts a payment committed after the stop point: the audit says so."""
    rec = bank.reconcile(BALANCES)

    (row,) = records(rec.differences, "key", "delta", "status")
    assert row == {"key": "3", "delta": -Decimal(LATE[1]), "status": MISMATCHED}
    why = rec.explain(3)
    after = why.rows[why.rows["outcome"] == "after_stop"]
    assert list(after["amount"]) == [Decimal(LATE[1])]
    assert list(after["counted"]) == [False]
    assert list(after["op"]) == ["insert"]
    # The counted rows add up to the recovered total, the left-out one to the delta.
    counted = why.rows[why.rows["counted"]]
    assert sum(counted["amount"], Decimal(0)) == expected_totals()["3"]
    assert "1 after_stop insert (42.00000000)" in why.text()
    assert "after_stop" in rec.report()


def test_an_extra_transaction_in_the_recovery_is_explained(bank: Bank) -> None:
    """The ledger lost transaction 2 (account 1): the audit shows the row that is counted."""
    ledger = TRUTH_LEDGER.replace(
        "LEFT JOIN truth t", "LEFT JOIN (SELECT * FROM truth WHERE id <> 2) t"
    )
    rec = bank.reconcile(ledger)

    (row,) = records(rec.differences, "key", "delta", "status")
    assert row == {"key": "1", "delta": Decimal("0.00000001"), "status": MISMATCHED}
    why = rec.explain("1")
    counted = why.rows[why.rows["counted"]]
    assert Decimal("0.00000001") in list(counted["amount"])
    # The deleted payment of account 1 is there too, removed by its delete.
    assert "removed" in set(why.rows["outcome"])


def test_a_corrected_amount_shows_the_superseded_version(bank: Bank) -> None:
    """The ledger kept transaction 3's amount from before its correction."""
    ledger = TRUTH_LEDGER.replace(
        "coalesce(sum(t.amount), 0)",
        "coalesce(sum(CASE WHEN t.id = 3 THEN 123456789012.12345678 ELSE t.amount END), 0)",
    )
    rec = bank.reconcile(ledger)

    (row,) = records(rec.differences, "key", "delta", "status")
    assert row == {"key": "2", "delta": Decimal("-0.00000001"), "status": MISMATCHED}
    why = rec.explain("2")
    versions = why.rows[why.rows["key"] == '{"id": "3"}']
    assert list(zip(versions["op"], versions["outcome"], versions["amount"], strict=True)) == [
        ("insert", "superseded", Decimal("123456789012.12345678")),
        ("update", "applied", Decimal("123456789012.12345677")),
    ]
    assert list(versions["counted"]) == [False, True]


# -- sources, keys, periods, opening balances, tolerance ------------------------------------------


def ledger_frame(**off: Decimal) -> pd.DataFrame:
    """The ledger as a DataFrame of Decimals; ``off`` moves accounts: ``off={"a2": 1e-8}``."""
    totals = expected_totals()
    values = [v + off.get(f"a{k}", Decimal(0)) for k, v in totals.items()]
    return pd.DataFrame({"account_id": list(totals), "total": values})


def write_ledger(kind: str, path: Path, frame: pd.DataFrame) -> Any:
    """The same ledger as a query's rows, a CSV, a Parquet file or a DataFrame."""
    if kind == "csv":
        frame.astype(str).to_csv(path.with_suffix(".csv"), index=False)
        return LedgerFile(path.with_suffix(".csv"))
    if kind == "parquet":
        table = pa.table({c: pa.array([str(v) for v in frame[c]]) for c in frame.columns[:-1]})
        total = frame.columns[-1]
        table = table.append_column(total, pa.array(list(frame[total]), pa.decimal128(30, 8)))
        pq.write_table(table, path.with_suffix(".parquet"))
        return LedgerFile(path.with_suffix(".parquet"))
    return frame


@pytest.mark.parametrize("kind", ["sql", "csv", "parquet", "dataframe"])
@pytest.mark.parametrize("side", ["table", "audit"])
def test_every_ledger_source_gives_the_same_answer(
    bank: Bank, tmp_path: Path, kind: str, side: str
) -> None:
    frame = ledger_frame()
    wrong = ledger_frame(a4=Decimal("0.00000001"))
    if kind == "sql":
        sources = [bank.query(TRUTH_LEDGER), bank.query(TRUTH_LEDGER + " HAVING a.id <> 0"
                   " UNION ALL SELECT 4, 0.00000001")]  # fmt: skip
    else:
        sources = [
            write_ledger(kind, tmp_path / "ok", frame),
            write_ledger(kind, tmp_path / "no", wrong),
        ]
    recovered = bank.table() if side == "table" else RecoveredAudit(bank.audit)

    good = reconcile(recovered, sources[0], key="account_id", amount="amount")
    bad = reconcile(recovered, sources[1], key="account_id", amount="amount")

    assert good.matched, good.report()
    assert good.keys == ACCOUNTS
    assert records(bad.differences, "key", "delta", "status") == [
        {"key": "4", "delta": Decimal("-0.00000001"), "status": MISMATCHED}
    ]


def test_an_audit_reconciles_like_the_table(bank: Bank) -> None:
    ledger = bank.query(BALANCES)
    from_table = reconcile(bank.table(), ledger, key="account_id", amount="amount")
    from_audit = reconcile(bank.audit, ledger, key="account_id", amount="amount")

    assert from_audit.source == f"audit {bank.audit}"
    columns = ["key", "rows", "recovered", "ledger", "delta", "status"]
    assert records(from_audit.comparison, *columns) == records(from_table.comparison, *columns)
    assert list(from_audit.explanations) == [("3",)]  # the audit explains itself


def test_composite_keys(bank: Bank) -> None:
    ledger = "SELECT account_id, kind, sum(amount) FROM truth GROUP BY 1, 2"
    keys = ["account_id", "kind"]
    good = reconcile(bank.table(), bank.query(ledger), key=keys, amount="amount")
    bad = reconcile(
        RecoveredAudit(bank.audit),
        bank.query(f"{ledger} HAVING NOT (account_id = 2 AND kind = 'debit')"),
        key=keys,
        amount="amount",
    )

    assert good.matched
    expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for account, amount, kind, _ in expected_rows().values():
        expected[(str(account), kind)] += Decimal(amount)
    got = {
        (r["account_id"], r["kind"]): r["recovered"]
        for r in records(good.comparison, "account_id", "kind", "recovered")
    }
    assert got == expected
    assert records(bad.differences, "key", "account_id", "kind", "delta", "status") == [
        {
            "key": "(2, debit)",
            "account_id": "2",
            "kind": "debit",
            "delta": Decimal("-0.1"),
            "status": MISSING_IN_LEDGER,
        }
    ]
    assert set(bad.explain(2, "debit").rows["op"]) == {"insert"}


@pytest.mark.parametrize("side", ["table", "audit"])
def test_per_day_periods_use_utc_days(bank: Bank, tmp_path: Path, side: str) -> None:
    daily = expected_daily()
    assert daily[("2", "2024-05-02")] == Decimal("123456789012.22345677")  # 01:30+02 is the 2nd
    frame = pd.DataFrame(
        {
            "account_id": [k[0] for k in daily],
            "period": [k[1] for k in daily],
            "total": [str(v) for v in daily.values()],
        }
    )
    frame.loc[(frame["account_id"] == "1") & (frame["period"] == "2024-05-01"), "total"] = "0"
    recovered = bank.table() if side == "table" else RecoveredAudit(bank.audit)

    rec = reconcile(
        recovered, frame, key="account_id", amount="amount", period="day", time_column="booked_at"
    )

    assert rec.keys == len(daily)
    assert records(rec.differences, "key", "period", "delta", "status") == [
        {
            "key": "1",
            "period": "2024-05-01",
            "delta": Decimal("12345678.12345679"),
            "status": MISMATCHED,
        }
    ]
    monthly = reconcile(
        recovered,
        bank.query(
            "SELECT account_id, to_char(booked_at, 'YYYY-MM'), sum(amount) FROM truth GROUP BY 1, 2"
        ),
        key="account_id",
        amount="amount",
        period="month",
        time_column="booked_at",
    )
    assert monthly.matched
    assert set(monthly.comparison["period"]) == {"2024-05"}


@pytest.mark.parametrize("kind", ["sql", "csv", "dataframe"])
def test_opening_balances_are_added_to_the_recovered_totals(
    bank: Bank, tmp_path: Path, kind: str
) -> None:
    opening = {str(a): Decimal(a) * Decimal("1000.5") for a in range(1, ACCOUNTS + 1)}
    ledger = bank.query(f"SELECT id, total + id * 1000.5 FROM ({TRUTH_LEDGER}) AS l(id, total)")
    frame = pd.DataFrame({"account_id": list(opening), "total": [str(v) for v in opening.values()]})
    source: Any
    if kind == "sql":
        source = bank.query("SELECT id, id * 1000.5 FROM accounts")
    else:
        source = write_ledger(kind, tmp_path / "opening", frame)

    rec = reconcile(bank.table(), ledger, key="account_id", amount="amount", opening=source)
    without = reconcile(bank.table(), ledger, key="account_id", amount="amount")

    assert rec.matched, rec.report()
    assert rec.opening_total == sum(opening.values())
    assert list(rec.comparison["opening"]) == list(opening.values())
    assert (without.mismatched, without.missing_in_recovered) == (ACCOUNTS - 1, 1)  # account 5
    assert list(without.comparison["delta"]) == [-v for v in opening.values()]


def test_tolerance_is_exact(bank: Bank) -> None:
    frame = ledger_frame(a2=Decimal("0.00000002"))
    loose = reconcile(
        bank.table(), frame, key="account_id", amount="amount", tolerance="0.00000002"
    )
    tight = reconcile(
        bank.table(), frame, key="account_id", amount="amount", tolerance="0.00000001"
    )

    assert loose.matched
    assert loose.total_difference == Decimal("-0.00000002")  # still reported
    assert not tight.matched
    with pytest.raises(LedgerError, match="negative"):
        compare_totals({}, {}, tolerance="-1")


def test_differences_are_written_exactly(bank: Bank, tmp_path: Path) -> None:
    rec = bank.reconcile(BALANCES)

    csv_path = rec.write_differences(tmp_path / "diff.csv")
    parquet_path = rec.write_differences(tmp_path / "diff.parquet")

    text = csv_path.read_text()
    lines = text.splitlines()
    # The key once, under its own name; every line ends with a newline, the last one too.
    assert lines[0] == "account_id,rows,recovered,ledger,delta,status"
    assert lines[1].split(",")[0] == "3"
    assert "-42.00000000" in lines[1]
    assert text.endswith("\n") and not text.endswith("\n\n")
    table = pq.read_table(parquet_path)
    assert pa.types.is_decimal(table.schema.field("delta").type)
    assert table.column("delta").to_pylist() == [-Decimal(LATE[1])]


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT id, balance::float8 FROM accounts", "float"),
        ("SELECT id, balance::real FROM accounts", "float"),
        ("SELECT id, sum(balance)::double precision FROM accounts GROUP BY id", "float"),
        ("SELECT id, balance, 1 FROM accounts", "exactly 2 columns"),
        ("SELECT id FROM accounts", "exactly 2 columns"),
        ("SELECT id, 'owner ' || id FROM accounts", "not a number"),
        ("SELECT id, balance FROM no_such_table", "no_such_table"),
    ],
    ids=["float8", "real", "float-sum", "three-columns", "one-column", "text", "bad-sql"],
)
def test_unusable_ledger_query_is_refused(bank: Bank, query: str, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        bank.reconcile(query)


def test_float_ledger_files_and_frames_are_refused(bank: Bank, tmp_path: Path) -> None:
    frame = pd.DataFrame({"account_id": ["1"], "total": [1.5]})
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "f.parquet")
    for source in (frame, LedgerFile(tmp_path / "f.parquet")):
        with pytest.raises(LedgerError, match="float"):
            reconcile(bank.table(), source, key="account_id", amount="amount")


def test_float_ledger_is_refused_by_recover(bank: Bank) -> None:
    with source_untouched(bank.db, BANK_SLOT), pytest.raises(LedgerError, match="float"):
        recover(
            bank.db.dsn,
            BANK_SLOT,
            TableName("public", "t"),
            into=TableName("public", "float_attempt"),
            ledger=LedgerCheck("account_id", "amount", "SELECT id, balance::float8 FROM accounts"),
        )


@pytest.mark.parametrize(("key", "amount"), [("nope", "amount"), ("account_id", "nope")])
@pytest.mark.parametrize("side", ["table", "audit"])
def test_unknown_key_or_amount_column_is_refused(
    bank: Bank, key: str, amount: str, side: str
) -> None:
    recovered = bank.table() if side == "table" else RecoveredAudit(bank.audit)
    with pytest.raises(LedgerError, match="nope"):
        reconcile(recovered, bank.query(BALANCES), key=key, amount=amount)


def test_periods_and_opening_balances_do_not_mix(bank: Bank) -> None:
    with pytest.raises(LedgerError, match="per period"):
        reconcile(
            bank.table(),
            ledger_frame(),
            key="account_id",
            amount="amount",
            period="day",
            time_column="booked_at",
            opening=ledger_frame(),
        )


# -- the command --------------------------------------------------------------------------------


def reconcile_args(bank: Bank, *extra: str) -> list[str]:
    return ["reconcile", "--key", "account_id", "--amount", "amount", *extra]


TABLE = ["--table", "public.t_recovered"]


@pytest.mark.parametrize(
    ("args", "code", "explained"),
    [
        ([*TABLE, "--ledger-query", TRUTH_LEDGER], 0, False),
        ([*TABLE, "--ledger-query", BALANCES], 3, False),
        ([*TABLE, "--audit", "AUDIT", "--ledger-query", BALANCES], 3, True),
        (["--audit", "AUDIT", "--ledger-query", TRUTH_LEDGER], 0, False),
        (["--audit", "AUDIT", "--ledger-query", BALANCES], 3, True),
        ([*TABLE, "--ledger-query", BALANCES, "--tolerance", "42"], 0, False),
    ],
    ids=[
        "table-ok",
        "table-differs",
        "table-differs-explained",
        "audit-ok",
        "audit-differs",
        "within-tolerance",
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_command_exit_codes(
    bank: Bank, args: list[str], code: int, explained: bool, as_json: bool
) -> None:
    args = [str(bank.audit) if a == "AUDIT" else a for a in args]
    dsn = ["-d", bank.db.dsn] if "--table" in args else ["--ledger-dsn", bank.db.dsn]
    result = cli(*reconcile_args(bank, *dsn, *args, *(["--json"] if as_json else [])))

    assert result.exit_code == code, result.output
    if as_json:
        out = json.loads(result.stdout)
        assert out["matched"] is (code == 0)
        assert out["keys"] == ACCOUNTS
        if code:
            assert out["differences"][0]["key"] == "3"
            assert out["differences"][0]["delta"] == "-42.00000000"
        assert bool(out["explanations"]) is explained
        if explained:
            assert "after_stop" in out["explanations"][0]["summary"]
    else:
        assert ("all 5 keys match" in result.stdout) is (code == 0)
        if code:
            assert stderr_lines(result) == [
                "walrecover: the totals do not reconcile with the ledger"
            ]
        assert ("why 3: " in result.stdout) is explained


def test_command_writes_the_differences(bank: Bank, tmp_path: Path) -> None:
    out = tmp_path / "diff.csv"
    result = cli(
        *reconcile_args(bank, "--audit", str(bank.audit), "--ledger-dsn", bank.db.dsn),
        "--ledger-query",
        BALANCES,
        "--out",
        str(out),
    )
    assert result.exit_code == 3
    assert f"differences written to {out}" in result.stdout
    assert pd.read_csv(out, dtype=str)["delta"].tolist() == ["-42.00000000"]
    text = out.read_text()
    assert text.splitlines()[0] == "account_id,rows,recovered,ledger,delta,status"
    assert text.endswith("\n")


def test_composite_keys_are_written_once(tmp_path: Path) -> None:
    recovered: dict[tuple[str | None, ...], tuple[Decimal, int]] = {
        ("1", "EUR"): (Decimal("1.00"), 2)
    }
    rec = compare_totals(
        recovered,
        {("1", "EUR"): Decimal("1.50")},
        key_columns=["account_id", "currency"],
    )
    text = rec.write_differences(tmp_path / "diff.csv").read_text()
    assert text == (
        "account_id,currency,rows,recovered,ledger,delta,status\n1,EUR,2,1.00,1.50,-0.50,mismatched\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ledger-query", "SELECT 1, 1"], "--table"),
        (["--table", "t", "--ledger-query", "q", "--ledger-file", __file__], "exactly one"),
        (["--table", "t"], "exactly one"),
        (["--table", "t", "--ledger-query", "q", "--period", "day"], "--time-column"),
        (["--table", "t", "--ledger-query", "q", "--tolerance", "abc"], "not a number"),
        (["--table", "t", "--ledger-query", "q", "--tolerance", "-1"], "0 or more"),
        (["--table", "t", "--ledger-query", "q", "--out", "x.txt"], ".csv or .parquet"),
        (["--audit", __file__, "--ledger-query", "q"], "--ledger-dsn"),
    ],
    ids=["nothing", "two-ledgers", "no-ledger", "period", "tolerance", "negative", "out", "dsn"],
)
def test_command_usage_errors_exit_2(bank: Bank, args: list[str], message: str) -> None:
    result = cli(*reconcile_args(bank, *args))
    assert result.exit_code == 2
    assert message in result.stderr


def test_command_errors_exit_1_with_one_line(bank: Bank) -> None:
    result = cli(
        *reconcile_args(bank, "-d", bank.db.dsn, "--table", "public.t_recovered"),
        "--ledger-query",
        "SELECT id, balance::float8 FROM accounts",
    )
    assert result.exit_code == 1
    (line,) = stderr_lines(result)
    assert line.startswith("walrecover: error: the ledger query returns its total as a float")
