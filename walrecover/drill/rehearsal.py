"""The recovery drill on a throwaway database, end to end.

:func:`rehearse` starts a throwaway cluster, creates a small bank (``accounts``, ``transactions``),
creates a logical slot, runs a ledger workload in many small commits (corrections by UPDATE, voids
by DELETE, long TOASTed notes, a rolled-back savepoint and an aborted transaction now and then),
records the ground truth, runs ``DROP TABLE transactions``, keeps writing to ``accounts``, then
recovers through :func:`~walrecover.rebuild.recover.recover`, reconciles against
``accounts.balance``, writes the audit, and checks the rebuilt table row by row against the ground
truth.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..db import Connection, connect, one
from ..errors import AuditError, ClusterError
from ..rebuild.recover import LedgerCheck, RecoveryResult, recover
from ..stream.decoders import PLUGINS
from ..stream.lsn import Lsn
from ..stream.model import StopPoint, TableName
from ..stream.sources import ProgressCallback
from .cluster import Cluster

SLOT = "bank_cdc"
CHUNK = 5_000

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

#: The workload: payments, corrections, voids, a rolled-back savepoint, an aborted transaction.
WORKLOAD_SQL = """
CREATE PROCEDURE bank_workload(first bigint, n integer, accounts integer, seed float8)
LANGUAGE plpgsql AS $$
DECLARE
    i bigint;
    acc integer;
    amt numeric(12,2);
    tid bigint;
    victim record;
    note text;
BEGIN
    PERFORM setseed(seed);
    FOR i IN first .. first + n - 1 LOOP
        acc := 1 + floor(random() * accounts)::integer;
        amt := round((random() * 2000 - 1000)::numeric, 2);
        IF i % 500 = 0 THEN
            -- Random hex does not compress: stored out of line (TOAST).
            SELECT string_agg(md5(random()::text), '') INTO note FROM generate_series(1, 160);
        ELSE
            note := 'payment ' || i;
        END IF;
        INSERT INTO transactions (account_id, amount, kind, note, meta)
        VALUES (acc, amt, CASE WHEN amt < 0 THEN 'debit' ELSE 'credit' END, note,
                jsonb_build_object('channel', (ARRAY['card', 'wire', 'cash'])[1 + i % 3],
                                   'fee', 0.25, 'seq', i))
        RETURNING id INTO tid;
        UPDATE accounts SET balance = balance + amt WHERE id = acc;
        COMMIT;
        -- Corrections: an UPDATE that leaves the long note alone (unchanged TOAST).
        IF i % 20 = 0 OR i % 500 = 7 THEN
            UPDATE transactions SET amount = amount + 1.11, kind = 'corrected'
            WHERE id = tid - (CASE WHEN i % 500 = 7 THEN 7 ELSE 3 END)
            RETURNING account_id INTO victim;
            IF FOUND THEN
                UPDATE accounts SET balance = balance + 1.11 WHERE id = victim.account_id;
            END IF;
            COMMIT;
        END IF;
        -- Voids: a DELETE that reverses the balance.
        IF i % 50 = 25 THEN
            DELETE FROM transactions WHERE id = tid - 11 RETURNING account_id, amount INTO victim;
            IF FOUND THEN
                UPDATE accounts SET balance = balance - victim.amount WHERE id = victim.account_id;
            END IF;
            COMMIT;
        END IF;
        -- A rolled-back savepoint inside a committed transaction.
        IF i % 1000 = 333 THEN
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
            COMMIT;
        END IF;
        -- An aborted transaction: its rows must not come back.
        IF i % 1000 = 666 THEN
            INSERT INTO transactions (account_id, amount, kind, note)
            VALUES (acc, 123.45, 'aborted', 'never committed');
            ROLLBACK;
        END IF;
    END LOOP;
END $$;
"""


#: The definition an engineer would pass with --ddl (test_decoding carries no key or typmods).
RECOVERED_DDL = """
CREATE TABLE public.transactions_recovered (
    id bigint PRIMARY KEY,
    account_id integer NOT NULL,
    amount numeric(12,2) NOT NULL,
    kind text NOT NULL,
    created_at timestamptz NOT NULL,
    note text,
    meta jsonb
)
"""


@dataclass(frozen=True)
class RehearsalResult:
    """What the drill did and whether the recovery matched the ground truth."""

    transactions: int
    accounts: int
    changes: int
    rows: int
    #: The rebuilt table equals the dropped one, row by row.
    identical: bool
    #: The rebuilt table's per-account sums equal accounts.balance.
    reconciled: bool
    audit_rows: int
    plugin: str
    stop_lsn: str
    seconds: dict[str, float]
    recovery: RecoveryResult
    #: Connection string of the kept cluster (``keep=True``), else None.
    kept_dsn: str | None = None
    audit_path: str | None = None
    #: The baseline the table was started from (``rehearse --baseline``), as the result has it.
    baseline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "accounts": self.accounts,
            "changes": self.changes,
            "rows": self.rows,
            "identical": self.identical,
            "reconciled": self.reconciled,
            "audit_rows": self.audit_rows,
            "plugin": self.plugin,
            "stop_lsn": self.stop_lsn,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "kept_dsn": self.kept_dsn,
            "audit_path": self.audit_path,
            "baseline": self.baseline,
        }


def run_workload(
    conn: Connection,
    transactions: int,
    accounts: int,
    *,
    seed: float = 0.42,
    progress: ProgressCallback | None = None,
    first: int = 0,
) -> None:
    """Run the banking workload (schema must exist) in chunks, committing as it goes;
    ``first`` ledger transactions were run before (the workload goes on from there)."""
    conn.autocommit = True
    done = 0
    while done < transactions:
        n = min(CHUNK, transactions - done)
        chunk_seed = ((seed * 1000 + (first + done) // CHUNK) % 1000) / 1000.0
        conn.execute(
            "CALL bank_workload(%s, %s, %s, %s)", (first + done + 1, n, accounts, chunk_seed)
        )
        done += n
        if progress is not None:
            progress("workload", done, transactions)


def create_bank(conn: Connection, accounts: int) -> None:
    """Create the bank's schema and its accounts with zero balances."""
    conn.autocommit = True
    conn.execute(TABLES_SQL)
    conn.execute(WORKLOAD_SQL)
    conn.execute(
        "INSERT INTO accounts (id, owner) SELECT g, 'owner ' || g FROM generate_series(1, %s) g",
        (accounts,),
    )


#: The ledger the rebuilt table is reconciled against: each account's balance.
LEDGER = LedgerCheck("account_id", "amount", "SELECT id, balance FROM accounts")


def check_arguments(plugin: str, audit_path: str | Path | None) -> None:
    """Refuse an unknown plugin or an audit path that exists, before any work is done."""
    if plugin not in PLUGINS:
        raise ClusterError(f"--plugin {plugin!r} is not one of {', '.join(PLUGINS)}")
    if audit_path is not None and (Path(audit_path).exists() or Path(audit_path).is_symlink()):
        # Said now, not after the workload: the recovery never replaces a file it did not write.
        raise AuditError(
            f"--audit {audit_path} already exists: give a new path (the rehearsal never "
            "replaces a file)",
            path=str(audit_path),
        )


@contextlib.contextmanager
def throwaway_cluster(keep: bool, plugin: str) -> Iterator[tuple[str, Path]]:
    """Start the drill's cluster; yield its DSN and the directory for the drill's files.

    The directory is the kept cluster's own (``keep``), else a temporary one. On the way out
    the cluster is stopped and removed, or with ``keep`` left running for the user.
    """
    cluster = Cluster(keep=keep, require_plugins=(plugin,))
    cluster.start()
    workdir = tempfile.TemporaryDirectory(prefix="walrecover-rehearsal-")
    try:
        keep_dir = cluster.directory if keep and cluster.directory else Path(workdir.name)
        yield cluster.dsn(), keep_dir
    finally:
        if not keep:
            cluster.stop()
        else:
            cluster.detach()
        with contextlib.suppress(OSError):
            workdir.cleanup()


def plugin_options(plugin: str) -> dict[str, str] | None:
    """The slot's plugin options the drill reads with: pgoutput's publication."""
    return {"publication_names": "bank_pub"} if plugin == "pgoutput" else None


def open_bank(conn: Connection, accounts: int, plugin: str) -> None:
    """Create the bank and, for pgoutput, its publication for all tables."""
    create_bank(conn, accounts)
    if plugin == "pgoutput":
        conn.execute("CREATE PUBLICATION bank_pub FOR ALL TABLES")


def drop_with_truth(conn: Connection) -> tuple[Lsn, float]:
    """Record the ground truth, DROP ``transactions``, and keep the application running.

    Returns the insert position before the DROP (every commit so far is before it, the DROP
    after it) and the monotonic time the table was gone.
    """
    conn.execute("CREATE UNLOGGED TABLE rehearsal_truth AS SELECT * FROM transactions")
    (stop_text,) = one(conn, "SELECT pg_current_wal_insert_lsn()::text")
    conn.execute("DROP TABLE transactions")
    gone = time.monotonic()
    for shard in range(5):  # the application keeps running
        conn.execute("UPDATE accounts SET last_seen = now() WHERE id %% 5 = %s", (shard,))
    return Lsn.parse(stop_text), gone


def matches_truth(dsn: str) -> bool:
    """Whether the rebuilt table equals the ground truth, row by row (duplicates count)."""
    with connect(dsn, role="rehearsal") as conn:
        return bool(
            one(
                conn,
                "SELECT (SELECT count(*) FROM (SELECT * FROM rehearsal_truth EXCEPT ALL"
                " SELECT * FROM transactions_recovered) a) = 0"
                " AND (SELECT count(*) FROM (SELECT * FROM transactions_recovered EXCEPT ALL"
                " SELECT * FROM rehearsal_truth) b) = 0",
            )[0]
        )


def rehearsal_result(
    result: RecoveryResult,
    *,
    transactions: int,
    accounts: int,
    identical: bool,
    stop_lsn: Lsn | None,
    seconds: dict[str, float],
    kept_dsn: str | None,
    audit_path: str | None,
    baseline: dict[str, Any] | None = None,
) -> RehearsalResult:
    """The drill's result from the recovery's and what the drill measured around it."""
    return RehearsalResult(
        transactions=transactions,
        accounts=accounts,
        changes=result.changes,
        rows=result.rows,
        identical=identical,
        reconciled=result.reconciliation is not None and result.reconciliation.matched,
        audit_rows=result.audit.rows if result.audit else 0,
        plugin=result.plugin,
        stop_lsn=str(stop_lsn),
        seconds=seconds,
        recovery=result,
        kept_dsn=kept_dsn,
        audit_path=audit_path,
        baseline=baseline,
    )


def rehearse(
    transactions: int = 5_000,
    accounts: int = 100,
    *,
    keep: bool = False,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    plugin: str = "pgoutput",
) -> RehearsalResult:
    """Run the whole drill on a throwaway cluster and report what happened and how long.

    ``plugin`` is the slot's output plugin: pgoutput by default, because it is built into
    PostgreSQL (and is what managed services offer), so the drill needs nothing installed
    beyond the server. With pgoutput the bank has a publication for all tables; with
    test_decoding, which never says which columns form the key, the recovery is given the
    table's definition (as an engineer would give ``--ddl``).
    """
    if transactions < 1 or accounts < 1:
        raise ClusterError("a rehearsal needs at least one transaction and one account")
    check_arguments(plugin, audit_path)
    started = time.monotonic()
    with throwaway_cluster(keep, plugin) as (dsn, keep_dir):
        with connect(dsn, autocommit=True, role="rehearsal") as conn:
            open_bank(conn, accounts, plugin)
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (SLOT, plugin))
            t0 = time.monotonic()
            run_workload(conn, transactions, accounts, progress=progress)
            workload = time.monotonic() - t0
            stop_lsn, _ = drop_with_truth(conn)
        path = Path(audit_path) if audit_path else keep_dir / "transactions.parquet"
        t0 = time.monotonic()
        result = recover(
            dsn,
            SLOT,
            TableName("public", "transactions"),
            stop=StopPoint(lsn=stop_lsn),
            ledger=LEDGER,
            audit_path=path,
            progress=progress,
            options=plugin_options(plugin),
            ddl=RECOVERED_DDL if plugin == "test_decoding" else None,
        )
        recovery = time.monotonic() - t0
        t0 = time.monotonic()
        identical = matches_truth(dsn)
        verify = time.monotonic() - t0
        return rehearsal_result(
            result,
            transactions=transactions,
            accounts=accounts,
            identical=identical,
            stop_lsn=stop_lsn,
            seconds={
                "workload": workload,
                "recover": recovery,
                "verify": verify,
                "total": time.monotonic() - started,
            },
            kept_dsn=dsn if keep else None,
            audit_path=str(path) if audit_path or keep else None,
        )
