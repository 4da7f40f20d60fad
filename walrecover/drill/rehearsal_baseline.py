"""The real case, rehearsed: a table older than its slot, rebuilt from a baseline plus the slot.

:func:`rehearse_baseline` runs the path an on-call engineer would, end to end, on a throwaway
server. The bank's ``transactions`` is filled *before* any slot exists (half the workload); then
``walrecover protect`` makes a recovery point (a slot created with an exported snapshot and, in
that snapshot, a Parquet baseline of the table carrying the slot's consistent point). The rest of
the workload runs and the table is dropped. Then, as in the README's runbook: ``inspect`` finds
the DROP in the WAL (pg_walinspect or pg_waldump: no plugin shows it), the protect directory
gives the newest recovery point before it (``recover --from-protect``), and ``recover`` rebuilds
the table from that baseline plus the slot's changes after its point, stopping exactly before the
DROP, reconciles it, and the result is checked row by row against the real table. The RTO runs
from "the table is gone" (the DROP) to "the table is back and reconciled": finding the DROP,
choosing the point, recovering and reconciling.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from ..db import connect, one
from ..errors import AuditError, ClusterError
from ..incident.inspect import resolve_stop_before
from ..ready.protect import protect
from ..rebuild.from_protect import choose_point
from ..rebuild.recover import LedgerCheck, recover
from ..stream.decoders import PLUGINS
from ..stream.model import TableName
from ..stream.sources import ProgressCallback
from .cluster import Cluster
from .rehearsal import RECOVERED_DDL, RehearsalResult, create_bank, run_workload

TABLE = TableName("public", "transactions")


def rehearse_baseline(
    transactions: int = 5_000,
    accounts: int = 100,
    *,
    keep: bool = False,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    plugin: str = "pgoutput",
) -> RehearsalResult:
    """The drill with half the workload before the slot: baseline + changes (see module)."""
    if transactions < 2 or accounts < 1:
        raise ClusterError("a baseline rehearsal needs two transactions and one account")
    if plugin not in PLUGINS:
        raise ClusterError(f"--plugin {plugin!r} is not one of {', '.join(PLUGINS)}")
    if audit_path is not None and (Path(audit_path).exists() or Path(audit_path).is_symlink()):
        raise AuditError(
            f"--audit {audit_path} already exists: give a new path (the rehearsal never "
            "replaces a file)",
            path=str(audit_path),
        )
    started = time.monotonic()
    cluster = Cluster(keep=keep, require_plugins=(plugin,))
    cluster.start()
    workdir = tempfile.TemporaryDirectory(prefix="walrecover-rehearsal-")
    try:
        dsn = cluster.dsn()
        keep_dir = cluster.directory if keep and cluster.directory else Path(workdir.name)
        points_dir = keep_dir / "recovery-points"
        before = transactions // 2
        with connect(dsn, autocommit=True, role="rehearsal") as conn:
            create_bank(conn, accounts)
            if plugin == "pgoutput":
                conn.execute("CREATE PUBLICATION bank_pub FOR ALL TABLES")
            t0 = time.monotonic()
            run_workload(conn, before, accounts, progress=progress)
            workload = time.monotonic() - t0
            t0 = time.monotonic()
            made = protect(
                dsn,
                [TABLE],
                points_dir,
                retain=timedelta(hours=48),
                every=timedelta(0),
                plugin=plugin,
            ).created
            assert made is not None, "a first protect run always makes a recovery point"
            exported = time.monotonic() - t0
            t0 = time.monotonic()
            run_workload(conn, transactions - before, accounts, progress=progress, first=before)
            workload += time.monotonic() - t0
            conn.execute("CREATE UNLOGGED TABLE rehearsal_truth AS SELECT * FROM transactions")
            conn.execute("DROP TABLE transactions")
            gone = time.monotonic()
            for shard in range(5):  # the application keeps running
                conn.execute("UPDATE accounts SET last_seen = now() WHERE id %% 5 = %s", (shard,))
        path = Path(audit_path) if audit_path else keep_dir / "transactions.parquet"
        t0 = time.monotonic()
        # The runbook: find the DROP (inspect), the newest point before it, recover from both.
        options = {"publication_names": "bank_pub"} if plugin == "pgoutput" else None
        stop, event = resolve_stop_before(dsn, made.slot, TABLE, "drop", options=options)
        chosen = choose_point(points_dir, dsn, TABLE, stop, plugin_options=options)
        result = recover(
            dsn,
            chosen.slot,
            TABLE,
            stop=stop,
            ledger=LedgerCheck("account_id", "amount", "SELECT id, balance FROM accounts"),
            audit_path=path,
            progress=progress,
            options=chosen.plugin_options or None,
            ddl=RECOVERED_DDL if plugin == "test_decoding" else None,
            baseline=chosen.baseline,
        )
        back = time.monotonic()
        with connect(dsn, role="rehearsal") as conn:
            identical = bool(
                one(
                    conn,
                    "SELECT (SELECT count(*) FROM (SELECT * FROM rehearsal_truth EXCEPT ALL"
                    " SELECT * FROM transactions_recovered) a) = 0"
                    " AND (SELECT count(*) FROM (SELECT * FROM transactions_recovered EXCEPT ALL"
                    " SELECT * FROM rehearsal_truth) b) = 0",
                )[0]
            )
        verify = time.monotonic() - back
        reconciled = result.reconciliation is not None and result.reconciliation.matched
        return RehearsalResult(
            transactions=transactions,
            accounts=accounts,
            changes=result.changes,
            rows=result.rows,
            identical=identical and result.exact,
            reconciled=reconciled,
            audit_rows=result.audit.rows if result.audit else 0,
            plugin=result.plugin,
            stop_lsn=str(event.lsn),
            seconds={
                "workload": workload,
                "baseline_export": exported,
                "recover": back - t0,
                "rto": back - gone,
                "verify": verify,
                "total": time.monotonic() - started,
            },
            recovery=result,
            kept_dsn=dsn if keep else None,
            audit_path=str(path) if audit_path or keep else None,
            baseline={
                **(result.baseline or {}),
                "slot_point": str(made.consistent_lsn),
                "exported_rows": chosen.table.rows,
                "found": event.describe(),
            },
        )
    finally:
        if not keep:
            cluster.stop()
        else:
            cluster.detach()
        with contextlib.suppress(OSError):
            workdir.cleanup()
