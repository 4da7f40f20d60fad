"""The recovery drill on a throwaway database, end to end.

:func:`rehearse` starts a throwaway cluster, creates a small bank (``accounts``, ``transactions``),
creates a logical slot, runs a ledger workload (:mod:`.workload`: payments in commits of
``per_commit``, corrections by UPDATE, voids by DELETE, long TOASTed notes, a rolled-back savepoint
and an aborted transaction now and then), records the ground truth, runs ``DROP TABLE
transactions``, keeps writing to ``accounts``, then recovers through
:func:`~walrecover.rebuild.recover.recover`, reconciles against ``accounts.balance``, writes the
audit, and checks the rebuilt table row by row against the ground truth. Each phase is timed
(:mod:`.clock`), wall and CPU seconds.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..db import Connection, connect, one
from ..errors import AuditError, ClusterError
from ..rebuild.recover import LedgerCheck, RecoveryResult, recover
from ..stream.decoders import PLUGINS
from ..stream.lsn import Lsn
from ..stream.model import StopPoint, TableName
from ..stream.sources import ProgressCallback
from .clock import PhaseClock
from .cluster import Cluster
from .workload import PER_COMMIT, SESSIONS, TABLES_SQL, create_bank, run_workload

__all__ = [
    "LEDGER",
    "TABLES_SQL",
    "RehearsalResult",
    "create_bank",
    "rehearse",
    "run_workload",
]

SLOT = "bank_cdc"


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
    """What the drill did, whether the recovery matched the ground truth, and where the time
    went: ``seconds`` per phase (cluster start, setup, workload, drop, recover, verify,
    teardown, total; ``rto`` with a baseline) and ``cpu`` seconds per phase, the client's and
    the throwaway server's (None where they cannot be read)."""

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
    #: Ledger transactions per commit in the workload.
    per_commit: int = PER_COMMIT
    cpu: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "accounts": self.accounts,
            "per_commit": self.per_commit,
            "changes": self.changes,
            "rows": self.rows,
            "identical": self.identical,
            "reconciled": self.reconciled,
            "audit_rows": self.audit_rows,
            "plugin": self.plugin,
            "stop_lsn": self.stop_lsn,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "recovery_seconds": {k: round(v, 3) for k, v in self.recovery.seconds.items()},
            "cpu": {
                phase: {k: None if v is None else round(v, 3) for k, v in spent.items()}
                for phase, spent in self.cpu.items()
            },
            "kept_dsn": self.kept_dsn,
            "audit_path": self.audit_path,
            "baseline": self.baseline,
        }


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
def throwaway_cluster(
    keep: bool, plugin: str, clock: PhaseClock | None = None
) -> Iterator[tuple[str, Path]]:
    """Start the drill's cluster; yield its DSN and the directory for the drill's files.

    The directory is the kept cluster's own (``keep``), else a temporary one. On the way out
    the cluster is stopped and removed, or with ``keep`` left running for the user. ``clock``
    times the start (``cluster_start``) and the way out (``teardown``).
    """
    clock = clock or PhaseClock()
    cluster = Cluster(keep=keep, require_plugins=(plugin,))
    with clock.phase("cluster_start"):
        cluster.start()
    clock.data = cluster.data
    workdir = tempfile.TemporaryDirectory(prefix="walrecover-rehearsal-")
    try:
        keep_dir = cluster.directory if keep and cluster.directory else Path(workdir.name)
        yield cluster.dsn(), keep_dir
    finally:
        with clock.phase("teardown"):
            clock.data = None
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
    """Whether the rebuilt table equals the ground truth, row by row (duplicates count).

    The truth ``EXCEPT ALL`` the rebuilt table is empty (every row of the truth is there, as
    often) and both have as many rows: then the rebuilt table holds nothing else either, and
    the server hashes one table instead of both twice. Given the memory to hash it (a throwaway
    cluster's), it compares without sorting.
    """
    with connect(dsn, role="rehearsal") as conn:
        conn.execute("SET LOCAL work_mem = '1GB'")
        return bool(
            one(
                conn,
                "SELECT (SELECT count(*) FROM rehearsal_truth)"
                " = (SELECT count(*) FROM transactions_recovered)"
                " AND NOT EXISTS (SELECT * FROM rehearsal_truth EXCEPT ALL"
                " SELECT * FROM transactions_recovered)",
            )[0]
        )


@dataclass(frozen=True)
class Drilled:
    """What a drill measured around its recovery, for :func:`rehearsal_result`."""

    transactions: int
    accounts: int
    per_commit: int
    identical: bool
    stop_lsn: Lsn | None
    kept_dsn: str | None
    audit_path: str | None
    baseline: dict[str, Any] | None = None


def rehearsal_result(
    result: RecoveryResult, drilled: Drilled, clock: PhaseClock
) -> RehearsalResult:
    """The drill's result from the recovery's, what the drill saw, and its clock."""
    return RehearsalResult(
        transactions=drilled.transactions,
        accounts=drilled.accounts,
        per_commit=drilled.per_commit,
        changes=result.changes,
        rows=result.rows,
        identical=drilled.identical,
        reconciled=result.reconciliation is not None and result.reconciliation.matched,
        audit_rows=result.audit.rows if result.audit else 0,
        plugin=result.plugin,
        stop_lsn=str(drilled.stop_lsn),
        seconds=clock.total(),
        cpu=dict(clock.cpu),
        recovery=result,
        kept_dsn=drilled.kept_dsn,
        audit_path=drilled.audit_path,
        baseline=drilled.baseline,
    )


def check_counts(transactions: int, accounts: int, per_commit: int, least: int = 1) -> None:
    """Refuse a workload too small to rehearse."""
    if transactions < least or accounts < 1 or per_commit < 1:
        raise ClusterError(
            f"a rehearsal needs at least {least} transaction{'s' if least > 1 else ''}, one "
            "account and one transaction per commit"
        )


def rehearse(
    transactions: int = 5_000,
    accounts: int = 100,
    *,
    keep: bool = False,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    plugin: str = "pgoutput",
    per_commit: int = PER_COMMIT,
) -> RehearsalResult:
    """Run the whole drill on a throwaway cluster and report what happened and where the
    time went (:class:`RehearsalResult`).

    ``plugin`` is the slot's output plugin: pgoutput by default, because it is built into
    PostgreSQL (and is what managed services offer), so the drill needs nothing installed
    beyond the server. With pgoutput the bank has a publication for all tables; with
    test_decoding, which never says which columns form the key, the recovery is given the
    table's definition (as an engineer would give ``--ddl``). ``per_commit`` ledger
    transactions go into each commit of the workload.
    """
    check_counts(transactions, accounts, per_commit)
    check_arguments(plugin, audit_path)
    clock = PhaseClock()
    with throwaway_cluster(keep, plugin, clock) as (dsn, keep_dir):
        with connect(dsn, autocommit=True, role="rehearsal") as conn:
            with clock.phase("setup"):
                open_bank(conn, accounts, plugin)
                conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (SLOT, plugin))
            with clock.phase("workload"):
                run_workload(
                    conn,
                    transactions,
                    accounts,
                    progress=progress,
                    per_commit=per_commit,
                    sessions=SESSIONS,
                )
            with clock.phase("drop"):
                stop_lsn, _ = drop_with_truth(conn)
        path = Path(audit_path) if audit_path else keep_dir / "transactions.parquet"
        with clock.phase("recover"):
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
        with clock.phase("verify"):
            identical = matches_truth(dsn)
    drilled = Drilled(
        transactions,
        accounts,
        per_commit,
        identical,
        stop_lsn,
        kept_dsn=dsn if keep else None,
        audit_path=str(path) if audit_path or keep else None,
    )
    return rehearsal_result(result, drilled, clock)
