"""The rehearsal's bank and its ledger workload, generated inside the server.

A ledger transaction is a payment (an insert into ``transactions``) and the balance update of
its account. The workload groups ``per_commit`` of them into one commit (ten by
default): a single ``INSERT ... SELECT`` of the payments with one balance update per account
they touch in the same statement, then the corrections (an UPDATE that leaves a long TOASTed note
alone) and voids (a DELETE that reverses the balance) that fall in the group, then ``COMMIT``.
Now and then a fee is kept while a savepoint inside it is rolled back, and a transaction is
aborted: its rows must not come back. Statements over whole groups instead of one statement
per row (and a procedure, not a client loop) make the workload cheap to generate, so that a
rehearsal's time is mostly the recovery it rehearses; every change is still logged, so it is
decoded like any other.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import psycopg

from ..db import Connection

if TYPE_CHECKING:  # the CLI imports this module for its default; keep it light
    from ..stream.sources import ProgressCallback

#: Ledger transactions per ``CALL`` of the procedure (a progress report after each).
CHUNK = 5_000
#: Ledger transactions per commit, by default: ten, the shape of issue 12's benchmark workload
#: (``bench/pipeline.py``). ``1`` gives one commit per payment, a heavier stream to recover.
PER_COMMIT = 10

#: The bank's two tables (the benchmark builds the same ones).
TABLES_SQL = """
CREATE TABLE accounts (
    id integer PRIMARY KEY,
    owner text NOT NULL,
    balance numeric(14,2) NOT NULL DEFAULT 0,
    last_seen timestamptz
);
CREATE TABLE transactions (
    id bigserial PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (id),
    amount numeric(12,2) NOT NULL,
    kind text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    note text,
    meta jsonb
);
"""

#: The workload: payments in groups, corrections, voids, a rolled-back savepoint, an aborted
#: transaction. ``bank_nth(x, r, m)`` counts the ledger transactions x' in 0..x with x' % m = r
#: (a group lo..hi holds one when bank_nth(hi) > bank_nth(lo - 1)).
WORKLOAD_SQL = """
CREATE FUNCTION bank_nth(x bigint, r integer, m integer) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT (x + m - r) / m $$;

CREATE PROCEDURE bank_workload(first bigint, n integer, accounts integer, seed float8,
                               per_commit integer DEFAULT 10)
LANGUAGE plpgsql AS $$
DECLARE
    lo bigint := first;
    hi bigint;
    i bigint;
    acc integer;
    base bigint;
BEGIN
    PERFORM setseed(seed);
    WHILE lo < first + n LOOP
        hi := least(lo + per_commit - 1, first + n - 1);
        -- The payments (ids in the order of i), and one balance update per account they touch.
        WITH paid AS (
            INSERT INTO transactions (account_id, amount, kind, note, meta)
            SELECT g.acc, g.amt, CASE WHEN g.amt < 0 THEN 'debit' ELSE 'credit' END,
                   CASE WHEN g.i % 500 = 0
                        -- Random hex does not compress: stored out of line (TOAST).
                        THEN (SELECT string_agg(md5(random()::text), '')
                              FROM generate_series(1, 160 + 0 * g.i))
                        ELSE 'payment ' || g.i END,
                   jsonb_build_object('channel', (ARRAY['card', 'wire', 'cash'])[1 + g.i % 3],
                                      'fee', 0.25, 'seq', g.i)
            FROM (SELECT s AS i, 1 + floor(random() * accounts)::integer AS acc,
                         round((random() * 2000 - 1000)::numeric, 2) AS amt
                  FROM generate_series(lo, hi) AS s) AS g
            RETURNING id, account_id, amount
        ), booked AS (
            UPDATE accounts a SET balance = a.balance + s.total
            FROM (SELECT account_id, sum(amount) AS total FROM paid GROUP BY account_id) AS s
            WHERE a.id = s.account_id
        )
        SELECT min(id) - lo INTO base FROM paid;
        -- Corrections: an UPDATE that leaves the long note alone (unchanged TOAST).
        IF bank_nth(hi, 0, 20) > bank_nth(lo - 1, 0, 20)
           OR bank_nth(hi, 7, 500) > bank_nth(lo - 1, 7, 500) THEN
            WITH fixed AS (
                UPDATE transactions SET amount = amount + 1.11, kind = 'corrected'
                WHERE id = ANY (ARRAY(
                    SELECT base + s - CASE WHEN s % 500 = 7 THEN 7 ELSE 3 END
                    FROM generate_series(lo, hi) AS s WHERE s % 20 = 0 OR s % 500 = 7))
                RETURNING account_id
            )
            UPDATE accounts a SET balance = a.balance + 1.11 * s.n
            FROM (SELECT account_id, count(*) AS n FROM fixed GROUP BY account_id) AS s
            WHERE a.id = s.account_id;
        END IF;
        -- Voids: a DELETE that reverses the balance.
        IF bank_nth(hi, 25, 50) > bank_nth(lo - 1, 25, 50) THEN
            WITH voided AS (
                DELETE FROM transactions
                WHERE id = ANY (ARRAY(
                    SELECT base + s - 11 FROM generate_series(lo, hi) AS s WHERE s % 50 = 25))
                RETURNING account_id, amount
            )
            UPDATE accounts a SET balance = a.balance - s.total
            FROM (SELECT account_id, sum(amount) AS total FROM voided GROUP BY account_id) AS s
            WHERE a.id = s.account_id;
        END IF;
        -- A fee kept, and a rolled-back savepoint inside the same commit.
        FOR i IN 1 .. bank_nth(hi, 333, 1000) - bank_nth(lo - 1, 333, 1000) LOOP
            acc := 1 + floor(random() * accounts)::integer;
            INSERT INTO transactions (account_id, amount, kind, note)
            VALUES (acc, 0.01, 'fee', 'kept');
            UPDATE accounts SET balance = balance + 0.01 WHERE id = acc;
            BEGIN
                INSERT INTO transactions (account_id, amount, kind, note)
                VALUES (acc, 999.99, 'bogus', 'rolled back');
                RAISE EXCEPTION 'rollback to savepoint';
            EXCEPTION WHEN raise_exception THEN
                NULL;
            END;
        END LOOP;
        COMMIT;
        -- An aborted transaction: its rows must not come back.
        FOR i IN 1 .. bank_nth(hi, 666, 1000) - bank_nth(lo - 1, 666, 1000) LOOP
            INSERT INTO transactions (account_id, amount, kind, note)
            VALUES (1 + floor(random() * accounts)::integer, 123.45, 'aborted',
                    'never committed');
            ROLLBACK;
        END LOOP;
        lo := hi + 1;
    END LOOP;
END $$;
"""


def create_bank(conn: Connection, accounts: int) -> None:
    """Create the bank's schema and its accounts with zero balances."""
    conn.autocommit = True
    conn.execute(TABLES_SQL)
    conn.execute(WORKLOAD_SQL)
    conn.execute(
        "INSERT INTO accounts (id, owner) SELECT g, 'owner ' || g FROM generate_series(1, %s) g",
        (accounts,),
    )


def run_workload(
    conn: Connection,
    transactions: int,
    accounts: int,
    *,
    seed: float = 0.42,
    progress: ProgressCallback | None = None,
    first: int = 0,
    per_commit: int = PER_COMMIT,
) -> None:
    """Run the banking workload (schema must exist) in chunks, committing as it goes;
    ``first`` ledger transactions were run before (the workload goes on from there), and
    ``per_commit`` of them go into each commit."""
    conn.autocommit = True
    # The procedure's statements are planned once, while the table is still small: plans that
    # find rows by key stay right as it grows (a custom plan per group would cost more than
    # the group's rows).
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("SET enable_seqscan = off")
    try:
        done = 0
        while done < transactions:
            n = min(CHUNK, transactions - done)
            chunk_seed = ((seed * 1000 + (first + done) // CHUNK) % 1000) / 1000.0
            conn.execute(
                "CALL bank_workload(%s, %s, %s, %s, %s)",
                (first + done + 1, n, accounts, chunk_seed, per_commit),
            )
            done += n
            if progress is not None:
                progress("workload", done, transactions)
    finally:
        with contextlib.suppress(psycopg.Error):  # a broken session's error is the one to see
            conn.execute("RESET plan_cache_mode")
            conn.execute("RESET enable_seqscan")
