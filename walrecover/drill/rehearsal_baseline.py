"""The real case, rehearsed: a table older than its slot, rebuilt from a baseline plus the slot.

:func:`rehearse_baseline` runs the path an on-call engineer would, end to end, on a throwaway
server. The bank's ``transactions`` is filled *before* any slot exists (half the workload); then
``walrecover protect`` makes a recovery point (a slot created with an exported snapshot and, in
that snapshot, a Parquet baseline of the table carrying the slot's consistent point). The rest of
the workload runs and the table is dropped. Then, as in the README's runbook, the DROP is found
in the WAL (pg_walinspect or pg_waldump: no plugin shows it): by the relation id the recovery
point recorded (PostgreSQL 15 on, one pass over the WAL), else as ``walrecover inspect --slot``
finds it, tying the name to the relation through the slot's changes; the protect directory
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
from ..incident.events import DestructiveEvent
from ..ready.points import RecoveryPoint
from ..ready.protect import protect
from ..rebuild.from_protect import ProtectedStart, choose_point, find_event
from ..rebuild.recover import RecoveryResult, recover
from ..stream.model import TableName
from ..stream.sources import ProgressCallback
from .clock import PhaseClock
from .rehearsal import (
    LEDGER,
    RECOVERED_DDL,
    Drilled,
    RehearsalResult,
    check_arguments,
    check_counts,
    drop_with_truth,
    matches_truth,
    open_bank,
    plugin_options,
    rehearsal_result,
    throwaway_cluster,
)
from .workload import PER_COMMIT, SESSIONS, run_workload

TABLE = TableName("public", "transactions")


def rehearse_baseline(
    transactions: int = 5_000,
    accounts: int = 100,
    *,
    keep: bool = False,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    plugin: str = "pgoutput",
    per_commit: int = PER_COMMIT,
) -> RehearsalResult:
    """The drill with half the workload before the slot: baseline + changes (see module)."""
    check_counts(transactions, accounts, per_commit, least=2)
    check_arguments(plugin, audit_path)
    clock = PhaseClock()
    with throwaway_cluster(keep, plugin, clock) as (dsn, keep_dir):
        points_dir = keep_dir / "recovery-points"
        before = transactions // 2
        with connect(dsn, autocommit=True, role="rehearsal") as conn:
            with clock.phase("setup"):
                open_bank(conn, accounts, plugin)
            with clock.phase("workload"):
                run_workload(
                    conn, before, accounts, progress=progress, per_commit=per_commit,
                    sessions=SESSIONS,
                )  # fmt: skip
            with clock.phase("baseline_export"):
                made = _protect(dsn, points_dir, plugin)
            with clock.phase("workload"):
                run_workload(
                    conn, transactions - before, accounts, progress=progress, first=before,
                    per_commit=per_commit, sessions=SESSIONS,
                )  # fmt: skip
            with clock.phase("drop"):
                _, gone = drop_with_truth(conn)
        path = Path(audit_path) if audit_path else keep_dir / "transactions.parquet"
        result, chosen, event = _recover_by_runbook(dsn, points_dir, plugin, path, progress, clock)
        clock.seconds["rto"] = time.monotonic() - gone
        with clock.phase("verify"):
            identical = matches_truth(dsn)
    drilled = Drilled(
        transactions,
        accounts,
        per_commit,
        identical and result.exact,
        event.lsn,
        kept_dsn=dsn if keep else None,
        audit_path=str(path) if audit_path or keep else None,
        baseline={
            **(result.baseline or {}),
            "slot_point": str(made.consistent_lsn),
            "exported_rows": chosen.table.rows,
            "found": event.describe(),
        },
    )
    return rehearsal_result(result, drilled, clock)


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


def _find_drop(dsn: str, points_dir: Path, plugin: str) -> DestructiveEvent:
    """The runbook's first step, as ``recover --from-protect DIR --stop-before drop`` takes it:
    the DROP found from the relation id the recovery point recorded, in one pass over the WAL
    (PostgreSQL 15 on), or else through the point's slot (see :func:`find_event`)."""
    return find_event(points_dir, dsn, TABLE, "drop", plugin_options=plugin_options(plugin))


def _recover_by_runbook(
    dsn: str,
    points_dir: Path,
    plugin: str,
    path: Path,
    progress: ProgressCallback | None,
    clock: PhaseClock,
) -> tuple[RecoveryResult, ProtectedStart, DestructiveEvent]:
    """The runbook: find the DROP, the newest point before it, recover from both."""
    with clock.phase("inspect"):
        event = _find_drop(dsn, points_dir, plugin)
    stop = event.stop_point()
    with clock.phase("recover"):
        chosen = choose_point(points_dir, dsn, TABLE, stop, plugin_options=plugin_options(plugin))
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
