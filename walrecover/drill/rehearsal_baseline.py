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

import time
from datetime import timedelta
from pathlib import Path

from ..db import connect
from ..errors import ClusterError
from ..incident.events import DestructiveEvent
from ..incident.inspect import resolve_stop_before
from ..ready.points import RecoveryPoint
from ..ready.protect import protect
from ..rebuild.from_protect import ProtectedStart, choose_point
from ..rebuild.recover import RecoveryResult, recover
from ..stream.model import TableName
from ..stream.sources import ProgressCallback
from .rehearsal import (
    LEDGER,
    RECOVERED_DDL,
    RehearsalResult,
    check_arguments,
    drop_with_truth,
    matches_truth,
    open_bank,
    plugin_options,
    rehearsal_result,
    run_workload,
    throwaway_cluster,
)

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
    check_arguments(plugin, audit_path)
    started = time.monotonic()
    with throwaway_cluster(keep, plugin) as (dsn, keep_dir):
        points_dir = keep_dir / "recovery-points"
        before = transactions // 2
        seconds: dict[str, float] = {}
        with connect(dsn, autocommit=True, role="rehearsal") as conn:
            open_bank(conn, accounts, plugin)
            t0 = time.monotonic()
            run_workload(conn, before, accounts, progress=progress)
            seconds["workload"] = time.monotonic() - t0
            t0 = time.monotonic()
            made = _protect(dsn, points_dir, plugin)
            seconds["baseline_export"] = time.monotonic() - t0
            t0 = time.monotonic()
            run_workload(conn, transactions - before, accounts, progress=progress, first=before)
            seconds["workload"] += time.monotonic() - t0
            _, gone = drop_with_truth(conn)
        path = Path(audit_path) if audit_path else keep_dir / "transactions.parquet"
        t0 = time.monotonic()
        result, chosen, event = _recover_by_runbook(
            dsn, made.slot, points_dir, plugin, path, progress
        )
        back = time.monotonic()
        identical = matches_truth(dsn)
        seconds |= {
            "recover": back - t0,
            "rto": back - gone,
            "verify": time.monotonic() - back,
            "total": time.monotonic() - started,
        }
        return rehearsal_result(
            result,
            transactions=transactions,
            accounts=accounts,
            identical=identical and result.exact,
            stop_lsn=event.lsn,
            seconds=seconds,
            kept_dsn=dsn if keep else None,
            audit_path=str(path) if audit_path or keep else None,
            baseline={
                **(result.baseline or {}),
                "slot_point": str(made.consistent_lsn),
                "exported_rows": chosen.table.rows,
                "found": event.describe(),
            },
        )


def _protect(dsn: str, points_dir: Path, plugin: str) -> RecoveryPoint:
    """Make the recovery point, as ``walrecover protect`` would on its first run."""
    made = protect(
        dsn,
        [TABLE],
        points_dir,
        retain=timedelta(hours=48),
        every=timedelta(0),
        plugin=plugin,
    ).created
    assert made is not None, "a first protect run always makes a recovery point"
    return made


def _recover_by_runbook(
    dsn: str,
    slot: str,
    points_dir: Path,
    plugin: str,
    path: Path,
    progress: ProgressCallback | None,
) -> tuple[RecoveryResult, ProtectedStart, DestructiveEvent]:
    """The runbook: find the DROP (inspect), the newest point before it, recover from both."""
    options = plugin_options(plugin)
    stop, event = resolve_stop_before(dsn, slot, TABLE, "drop", options=options)
    chosen = choose_point(points_dir, dsn, TABLE, stop, plugin_options=options)
    result = recover(
        dsn,
        chosen.slot,
        TABLE,
        stop=stop,
        ledger=LEDGER,
        audit_path=path,
        progress=progress,
        options=chosen.plugin_options or None,
        ddl=RECOVERED_DDL if plugin == "test_decoding" else None,
        baseline=chosen.baseline,
    )
    return result, chosen, event
