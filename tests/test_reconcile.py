"""Reconciling the rebuilt table with the ledger, exactly, against a real server.

One bank is built, dropped and recovered per module; each test then reconciles the rebuilt table
against a different ledger query. Amounts are numeric(20,8) with values a float cannot hold
(20 significant digits, 1e-8 steps), and the expected totals are computed here with Decimal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest import Database
from helpers import differences, drop_with_truth, recover_table, run_script, source_untouched

from walrecover.cluster import Cluster
from walrecover.db import connect
from walrecover.errors import LedgerError
from walrecover.model import TableName
from walrecover.reconcile import (
    MISMATCHED,
    MISSING_IN_LEDGER,
    MISSING_IN_RECOVERED,
    Reconciliation,
    reconcile_table,
    table_totals,
)
from walrecover.recover import LedgerCheck, RecoveryResult, recover

#: (account, amount) of each committed ledger row, in insert order (ids 1..n).
AMOUNTS = [
    (1, "12345678.12345678"),
    (1, "0.00000001"),
    (2, "123456789012.12345678"),
    (2, "-0.1"),
    (2, "0.2"),
    (3, "0.00000001"),
    (3, "-0.00000003"),
    (4, "99999999999.99999999"),
    (4, "-99999999999.99999998"),
    (1, "7.00000000"),  # deleted below
]
#: Corrections applied after the inserts: id -> new amount; and deleted ids.
CORRECTED = {3: "123456789012.12345677"}
DELETED = {10}
ACCOUNTS = 5  # account 5 has no transactions and a zero balance

LEDGER = "SELECT id, balance FROM accounts"
INTO = TableName("public", "t_recovered")
BANK_SLOT = "reconcile_cdc"


def expected_amounts() -> dict[int, tuple[int, str]]:
    """id -> (account, amount text) of the rows the dropped table held."""
    rows = {i: (account, amount) for i, (account, amount) in enumerate(AMOUNTS, start=1)}
    for i, amount in CORRECTED.items():
        rows[i] = (rows[i][0], amount)
    return {i: row for i, row in rows.items() if i not in DELETED}


def expected_totals() -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for account, amount in expected_amounts().values():
        totals[str(account)] += Decimal(amount)
    return dict(totals)


class Bank:
    def __init__(self, db: Database, result: RecoveryResult) -> None:
        self.db = db
        self.result = result

    def reconcile(self, ledger_query: str) -> Reconciliation:
        with connect(self.db.dsn) as target, connect(self.db.dsn) as ledger:
            return reconcile_table(
                target,
                INTO,
                key="account_id",
                amount="amount",
                ledger=ledger,
                ledger_query=ledger_query,
            )


@pytest.fixture(scope="module")
def bank(cluster: Cluster) -> Iterator[Bank]:
    """A bank whose ``t`` was written after the slot, dropped, and recovered with a ledger."""
    name = "reconcile_bank"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    try:
        db.execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric(20,8) NOT NULL);"
            " CREATE TABLE t (id bigserial PRIMARY KEY, account_id integer NOT NULL,"
            " amount numeric(20,8) NOT NULL, kind text)"
        )
        db.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, %s) g", (ACCOUNTS,))
        db.create_slot(BANK_SLOT)  # slots are cluster-wide: not the tests' "cdc"
        steps = [
            f"INSERT INTO t (account_id, amount, kind) VALUES ({account}, {amount}, 'payment')"
            for account, amount in AMOUNTS
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
        drop_with_truth(db)
        result = recover_table(
            db, slot=BANK_SLOT, ledger=LedgerCheck("account_id", "amount", LEDGER)
        )
        yield Bank(db, result)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_money_survives_replay_exactly(bank: Bank) -> None:
    rows = bank.db.execute("SELECT id, account_id, amount::text FROM t_recovered ORDER BY id")
    # numeric(20,8) prints every value with its 8 decimals
    expected = [(i, a, f"{Decimal(x):.8f}") for i, (a, x) in sorted(expected_amounts().items())]
    assert rows == expected
    assert {"12345678.12345678", "0.00000001", "123456789012.12345677"} <= {r[2] for r in rows}
    assert differences(bank.db, "truth", "t_recovered") == (0, 0)


def test_rebuilt_totals_are_exact_decimals(bank: Bank) -> None:
    with connect(bank.db.dsn) as conn:
        totals = table_totals(conn, INTO, "account_id", "amount")
    assert totals == expected_totals()
    assert totals["2"] == Decimal("123456789012.22345677")
    assert all(type(v) is Decimal for v in totals.values())


def test_recovery_reconciled_with_the_ledger(bank: Bank) -> None:
    rec = bank.result.reconciliation
    assert rec is not None
    assert rec.matched
    assert (rec.keys, rec.mismatched, rec.missing_in_recovered, rec.missing_in_ledger) == (
        ACCOUNTS,
        0,
        0,
        0,
    )
    assert rec.total_difference == 0
    assert rec.differences.empty
    assert rec.to_dict()["matched"] is True


@pytest.mark.parametrize(
    ("query", "status", "key", "recovered", "ledger"),
    [
        (
            "SELECT id, balance + CASE WHEN id = 2 THEN 0.00000001 ELSE 0 END FROM accounts",
            MISMATCHED,
            "2",
            expected_totals()["2"],
            expected_totals()["2"] + Decimal("0.00000001"),
        ),
        (
            "SELECT id, balance FROM accounts UNION ALL SELECT 99, 5.5",
            MISSING_IN_RECOVERED,
            "99",
            Decimal(0),
            Decimal("5.5"),
        ),
        (
            "SELECT id, balance FROM accounts WHERE id <> 3",
            MISSING_IN_LEDGER,
            "3",
            expected_totals()["3"],
            Decimal(0),
        ),
    ],
    ids=["mismatched-by-1e-8", "missing-in-recovered", "missing-in-ledger"],
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
    rows: list[dict[str, Any]] = rec.differences.to_dict("records")  # type: ignore[assignment]
    assert rows == [
        {
            "key": key,
            "recovered": recovered,
            "ledger": ledger,
            "delta": recovered - ledger,
            "status": status,
        }
    ]
    assert rec.total_difference == recovered - ledger
    summary = rec.to_dict()
    assert summary["matched"] is False
    assert Decimal(summary["total_difference"]) == recovered - ledger
    assert Decimal(summary["differences"][0]["delta"]) == recovered - ledger


def test_ledger_keys_of_other_types_and_text_totals_compare_by_value(bank: Bank) -> None:
    rec = bank.reconcile("SELECT id::bigint, balance::text FROM accounts")
    assert rec.matched


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT id, balance::float8 FROM accounts", "float"),
        ("SELECT id, balance::real FROM accounts", "float"),
        ("SELECT id, sum(balance)::double precision FROM accounts GROUP BY id", "float"),
        ("SELECT id, balance, 1 FROM accounts", "two columns"),
        ("SELECT id FROM accounts", "two columns"),
        ("SELECT id, 'owner ' || id FROM accounts", "not a number"),
        ("SELECT id, balance FROM no_such_table", "no_such_table"),
    ],
    ids=["float8", "real", "float-sum", "three-columns", "one-column", "text", "bad-sql"],
)
def test_unusable_ledger_query_is_refused(bank: Bank, query: str, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        bank.reconcile(query)


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
def test_unknown_key_or_amount_column_is_refused(bank: Bank, key: str, amount: str) -> None:
    with (
        connect(bank.db.dsn) as target,
        connect(bank.db.dsn) as ledger,
        pytest.raises(LedgerError, match="nope"),
    ):
        reconcile_table(target, INTO, key=key, amount=amount, ledger=ledger, ledger_query=LEDGER)
