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
decoded like any other. A rehearsal runs it in :data:`SESSIONS` sessions at once, each on its
own accounts, so their commits interleave in the stream.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import make_conninfo

from ..db import Connection, connect

if TYPE_CHECKING:  # the CLI imports this module for its default; keep it light
    from ..stream.sources import ProgressCallback

#: Ledger transactions per ``CALL`` of the procedure (a progress report after each).
CHUNK = 5_000
#: Sessions a rehearsal runs its workload in: one per core of the 2-core machine its
#: benchmarks ran on (the server, not the client, does the work).
SESSIONS = 2
#: Ledger transactions per commit, by default: ten, the shape of issue 12's benchmark workload
#: (``bench/pipeline.py``). ``1`` gives one commit per payment, a heavier stream to recover.
PER_COMMIT = 10
#: One ``CALL bank_workload(first, n, accounts, seed, per_commit, first_account)``'s arguments.
_Call = tuple[int, int, int, float, int, int]

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
                               per_commit integer DEFAULT 10, first_account integer DEFAULT 1)
LANGUAGE plpgsql AS $$
DECLARE
    lo bigint := first;
    hi bigint;
    i bigint;
    acc integer;
    ids bigint[];
    -- The ids of this call's latest payments by ledger number modulo ring (corrections and
    -- voids go back at most 11): ids come from a sequence other sessions share.
    ring integer := per_commit + 16;
    recent bigint[] := array_fill(NULL::bigint, ARRAY[per_commit + 16], ARRAY[0]);
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
            FROM (SELECT s AS i, first_account + floor(random() * accounts)::integer AS acc,
                         round((random() * 2000 - 1000)::numeric, 2) AS amt
                  FROM generate_series(lo, hi) AS s) AS g
            RETURNING id, account_id, amount, (meta ->> 'seq')::bigint AS seq
        ), booked AS (
            UPDATE accounts a SET balance = a.balance + s.total
            FROM (SELECT account_id, sum(amount) AS total FROM paid GROUP BY account_id) AS s
            WHERE a.id = s.account_id
        )
        SELECT array_agg(id ORDER BY seq) INTO ids FROM paid;
        FOR i IN lo .. hi LOOP
            recent[i % ring] := ids[i - lo + 1];
        END LOOP;
        -- Corrections: an UPDATE that leaves the long note alone (unchanged TOAST).
        IF bank_nth(hi, 0, 20) > bank_nth(lo - 1, 0, 20)
           OR bank_nth(hi, 7, 500) > bank_nth(lo - 1, 7, 500) THEN
            WITH fixed AS (
                UPDATE transactions SET amount = amount + 1.11, kind = 'corrected'
                WHERE id = ANY (ARRAY(
                    SELECT recent[(s - d) % ring]
                    FROM generate_series(lo, hi) AS s,
                         LATERAL (SELECT CASE WHEN s % 500 = 7 THEN 7 ELSE 3 END AS d) AS back
                    WHERE (s % 20 = 0 OR s % 500 = 7) AND s - d >= first))
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
                    SELECT recent[(s - 11) % ring] FROM generate_series(lo, hi) AS s
                    WHERE s % 50 = 25 AND s - 11 >= first))
                RETURNING account_id, amount
            )
            UPDATE accounts a SET balance = a.balance - s.total
            FROM (SELECT account_id, sum(amount) AS total FROM voided GROUP BY account_id) AS s
            WHERE a.id = s.account_id;
        END IF;
        -- A fee kept, and a rolled-back savepoint inside the same commit.
        FOR i IN 1 .. bank_nth(hi, 333, 1000) - bank_nth(lo - 1, 333, 1000) LOOP
            acc := first_account + floor(random() * accounts)::integer;
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
            VALUES (first_account + floor(random() * accounts)::integer, 123.45, 'aborted',
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
    sessions: int = 1,
) -> None:
    """Run the banking workload (schema must exist) in chunks, committing as it goes;
    ``first`` ledger transactions were run before (the workload goes on from there), and
    ``per_commit`` of them go into each commit.

    With ``sessions`` > 1 the chunks are shared out round-robin between that many sessions
    running at once (``conn`` and others like it), each on its own range of accounts, so that
    no two sessions wait on one row: a commit's changes are those of one session, the commits
    of different sessions interleave in the stream as a busy bank's do, and the server
    generates the workload on every core.
    """
    sessions = max(1, min(sessions, accounts, -(-transactions // per_commit)))
    # Chunks of whole commits, so that sharing them out adds no commit.
    size = max(1, min(CHUNK, -(-transactions // sessions)) // per_commit) * per_commit
    shares = [accounts // sessions + (j < accounts % sessions) for j in range(sessions)]
    firsts = [1 + sum(shares[:j]) for j in range(sessions)]
    calls: list[list[_Call]] = [[] for _ in range(sessions)]
    for number, done in enumerate(range(0, transactions, size)):
        n = min(size, transactions - done)
        chunk_seed = ((seed * 1000 + (first + done) // CHUNK) % 1000) / 1000.0
        j = number % sessions
        calls[j].append((first + done + 1, n, shares[j], chunk_seed, per_commit, firsts[j]))
    others = [
        connect(
            make_conninfo(conn.info.dsn, password=conn.info.password),
            autocommit=True,
            role="rehearsal",
        )
        for _ in range(sessions - 1)
    ]
    try:
        _run_sessions([conn, *others], calls, transactions, progress)
    finally:
        for other in others:
            other.close()


def _run_sessions(
    conns: list[Connection],
    calls: list[list[_Call]],
    transactions: int,
    progress: ProgressCallback | None,
) -> None:
    """Each session's calls of the procedure, the sessions at once (one thread each, waiting
    on its server); progress from this thread. The first error cancels the other sessions'
    statements and is raised (an interrupt alike)."""
    conns[0].autocommit = True
    reports: queue.Queue[int | BaseException] = queue.Queue()
    stop = threading.Event()

    def session(conn: Connection, mine: list[_Call]) -> None:
        try:
            with _planned(conn):
                for call in mine:
                    if stop.is_set():
                        return
                    conn.execute("CALL bank_workload(%s, %s, %s, %s, %s, %s)", call)
                    reports.put(call[1])
        except BaseException as exc:  # handed to the main thread, which raises it
            reports.put(exc)

    threads = [
        threading.Thread(target=session, args=pair, name="walrecover-workload", daemon=True)
        for pair in zip(conns, calls, strict=True)
    ]
    for thread in threads:
        thread.start()
    done = 0
    try:
        while done < transactions:
            report = reports.get()
            if isinstance(report, BaseException):
                raise report
            done += report
            if progress is not None:
                progress("workload", done, transactions)
    except BaseException:
        stop.set()
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe()
        raise
    finally:
        for thread in threads:
            thread.join()


@contextlib.contextmanager
def _planned(conn: Connection) -> Iterator[None]:
    """The session's planner settings for the procedure, reset afterwards.

    The procedure's statements are planned once, while the table is still small: plans that
    find rows by key stay right as it grows (a custom plan per group would cost more than the
    group's rows).
    """
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("SET enable_seqscan = off")
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):  # a broken session's error is the one to see
            conn.execute("RESET plan_cache_mode")
            conn.execute("RESET enable_seqscan")
