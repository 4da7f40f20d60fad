"""A rerun of a finished recovery: the result it recorded, instead of a second rebuild.

A recovery that finished records its result with its progress row (:func:`record_result`). The
same command run again (the same options, :func:`.preflight.command_differences`) finds it
(:func:`finished_recovery`) and answers with that result, reconciled again if asked
(:func:`already_complete`), unless the capture it read has changed since or the audit's
publishing was cut short (the normal path then finishes it). Another command's recovery in the
same target is refused, naming the option that differs. A reconciliation that fails after the
table is complete says so, with the ``walrecover reconcile`` command that runs it alone.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from ..db import Connection, connect, redact, safe_dsn
from ..errors import ReconcileFailed, TargetExists, WalrecoverError, first_line
from ..stream.lsn import Lsn
from ..stream.model import StopPoint, TableName
from ..stream.sources import sweep_copies
from .ending import recorded_unproven
from .preflight import command_differences
from .progress import Counts, Progress, read_progress
from .replay import ReplayResult
from .result import AuditSummary, LedgerCheck, RecoveryResult
from .target import Target

if TYPE_CHECKING:
    from ..ledger.reconcile import Reconciliation


def finished_recovery(
    conn: Connection,
    into: TableName,
    command: str,
    *,
    exists: bool,
    force: bool,
    capture: Path | None,
    audit_at: str | Path | None,
    partitioned: bool,
) -> Progress | None:
    """The progress row of a finished recovery into ``into`` by this same ``command`` whose
    audit is in place, or None (nothing there, an unfinished one, or ``force``).

    Raise :class:`TargetExists` when another command's recovery is there, or when ``capture``
    (the file this command reads) changed since the recovery finished."""
    previous = None
    if exists and not force:
        try:
            previous = read_progress(conn, into)
        except psycopg.errors.InsufficientPrivilege:
            previous = None  # check_target names the missing grant
        conn.rollback()
    if previous is None or previous.command is None:
        return None
    differs = command_differences(previous.command, command)
    if differs:
        state = "a complete" if previous.complete else "an unfinished"
        raise TargetExists(
            f"{into} holds {state} recovery made by another command (from "
            f"{previous.source}): {'; '.join(differs)}. Rerun that command (the same "
            "options) to "
            f"{'see its result' if previous.complete else 'resume it'}, choose another "
            "--into, or pass --force to rebuild",
            table=str(into),
            differs=differs,
        )
    if previous.complete and capture is not None:
        _check_capture_unchanged(previous, capture, into)
    if previous.complete and _audit_published(audit_at, partitioned, into):
        return previous
    return None


def record_result(
    conn: Connection,
    into: TableName,
    result: ReplayResult,
    *,
    plugin: str,
    slot: str | None,
    audit: AuditSummary | None,
    unproven: tuple[str, ...],
    capture: Path | None,
    baseline: dict[str, Any] | None = None,
) -> None:
    """Keep a finished recovery's result with its progress row, for a rerun's answer."""
    stopped = result.stopped_before
    with contextlib.suppress(psycopg.Error):  # only the "already complete" answer needs it
        Target(conn, into).store_result(
            json.dumps(
                {
                    "plugin": plugin,
                    "slot": slot or "",
                    "rows": result.rows,
                    "stopped_before": [
                        stopped[0],
                        str(stopped[1]) if stopped[1] is not None else None,
                    ]
                    if stopped
                    else None,
                    "audit": audit.to_dict() if audit is not None else None,
                    "unproven": list(unproven),
                    "capture_bytes": _size(capture) if capture is not None else None,
                    "baseline": baseline,
                    "completed_at": datetime.now(UTC).isoformat(),
                },
                default=str,
            )
        )


def _audit_published(audit_at: str | Path | None, partitioned: bool, into: TableName) -> bool:
    """True if no audit is asked for, or the finished recovery's audit is in place (published,
    with its manifest, no work files); False if its publishing was cut short (the normal path
    finishes it). Raise :class:`TargetExists` if it is gone."""
    if audit_at is None:
        return True
    from ..audit.format import manifest_path  # noqa: PLC0415 - pyarrow with an audit
    from ..audit.workspace import clear_published  # noqa: PLC0415

    path = Path(audit_at)
    parts = path.with_name(path.name + ".parts")
    if parts.exists() and not clear_published(parts):
        return False
    manifest = manifest_path(path, partitioned)
    if path.exists() and manifest.exists():
        return True
    raise TargetExists(
        f"{into} is complete, but its audit {path} (or its manifest {manifest}) is gone: the "
        "audit is written while the table is built, so pass --force to rebuild both",
        table=str(into),
    )


def _stored_lsn(value: Any) -> Lsn | None:
    """An LSN as a stored result holds it: text, or a number (walrecover before 0.1.1 wrote
    the Lsn through json as an int)."""
    if value is None:
        return None
    return Lsn(value) if isinstance(value, int) else Lsn.parse(str(value))


def _size(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return None


def _check_capture_unchanged(previous: Progress, capture: Path, into: TableName) -> None:
    """Refuse "already complete" for a capture that changed since the recovery finished (a
    capture cut short, then written on by pg_recvlogical): the recorded result is exact only
    for the file as it was."""
    try:
        stored = json.loads(previous.result or "{}")
    except ValueError:
        return
    then, now = stored.get("capture_bytes"), _size(capture)
    if then is None or then == now:
        return
    raise TargetExists(
        f"{into} holds the finished recovery of {capture} as it was when it held {then} bytes;"
        f" it holds {now} now (pg_recvlogical wrote on, or the file was replaced): {into} is"
        " exact for the file as it was. Pass --force to rebuild it from the file as it is now,"
        " or choose another --into",
        table=str(into),
        differs=["the capture file"],
    )


def _audit_from_manifest(path: str) -> AuditSummary | None:
    """The audit summary from the manifest of a published audit (None if unreadable)."""
    from ..audit.format import manifest_path  # noqa: PLC0415 - pyarrow with an audit

    for partitioned in (False, True):
        manifest = manifest_path(path, partitioned)
        try:
            content = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        return AuditSummary(
            path,
            int(content.get("rows", 0)),
            manifest=str(manifest),
            chain_head=content.get("chain_head"),
            outcomes=dict(content.get("outcomes") or {}),
        )
    return None


def already_complete(
    previous: Progress,
    target_conn: Connection,
    dsn: str | None,
    target_dsn: str | None,
    table: TableName,
    into: TableName,
    *,
    slot: str | None,
    stop: StopPoint,
    ledger: LedgerCheck | None,
    started: float,
) -> RecoveryResult:
    """The result an earlier run of the same command recorded, reconciled again if asked."""
    stored, audit = _stored(previous)
    rows = stored.get("rows")
    if rows is None:
        rows = Target(target_conn, into).count_rows()
    before = stored.get("stopped_before")
    stopped_before = (before[0], _stored_lsn(before[1])) if before else None
    checked = time.monotonic()
    reconciliation = None
    if ledger is not None:
        reconciliation = reconcile_complete(
            target_conn,
            dsn,
            target_dsn,
            into,
            ledger,
            audit,
            previous.counts,
        )
    finished = time.monotonic()
    with contextlib.suppress(Exception):
        target_conn.close()
    return RecoveryResult(
        swept_slots=_sweep(dsn) if slot is not None else (),
        table=str(table),
        into=str(into),
        plugin=str(stored.get("plugin") or ""),
        slot=slot or "",
        counts=previous.counts,
        rows=int(rows),
        stop=stop.describe(),
        stopped_before=stopped_before,
        resumed_from=None,
        seconds={"reconcile": finished - checked, "total": finished - started},
        reconciliation=reconciliation,
        audit=audit,
        unproven=recorded_unproven(previous.result, into),
        already_complete=True,
        baseline=stored.get("baseline"),
    )


def _sweep(dsn: str | None) -> tuple[str, ...]:
    """Copy slots of killed runs, dropped: a rerun answered from the record opens no slot, so
    it sweeps them here (the run killed after its last commit may have left its copy)."""
    if dsn is None:
        return ()
    try:
        with connect(dsn, autocommit=True, role="source") as conn:
            return tuple(sweep_copies(conn))
    except (psycopg.Error, WalrecoverError):
        return ()  # the next run that reads the slot sweeps them


def _stored(previous: Progress) -> tuple[dict[str, Any], AuditSummary | None]:
    """The result a finished recovery recorded (see :func:`record_result`), and its audit."""
    stored: dict[str, Any] = {}
    if previous.result:
        with contextlib.suppress(ValueError):
            stored = json.loads(previous.result)
    if stored.get("audit"):
        info = stored["audit"]
        return stored, AuditSummary(
            info["path"],
            int(info["rows"]),
            manifest=info.get("manifest"),
            chain_head=info.get("chain_head"),
            outcomes=dict(info.get("outcomes") or {}),
        )
    return stored, _audit_from_manifest(previous.audit) if previous.audit else None


def reconcile_complete(
    target_conn: Connection,
    dsn: str | None,
    target_dsn: str | None,
    into: TableName,
    ledger: LedgerCheck,
    audit: AuditSummary | None,
    counts: Counts,
) -> Reconciliation:
    """Reconcile the finished table; when that fails, say the table (with ``counts``) and
    audit are complete and give the exact ``walrecover reconcile`` command to run it alone."""
    from ..ledger.reconcile import reconcile_table  # noqa: PLC0415 - pandas when reconciling

    try:
        with connect(dsn, role="ledger") as ledger_conn:
            return reconcile_table(
                target_conn,
                into,
                key=ledger.key,
                amount=ledger.amount,
                ledger=ledger_conn,
                ledger_query=ledger.query,
                audit=audit.path if audit is not None else None,
            )
    except (WalrecoverError, psycopg.Error) as exc:
        reason = exc.message if isinstance(exc, WalrecoverError) else first_line(exc)
        reason = redact(redact(reason, dsn), target_dsn)
        command = reconcile_command(target_dsn, dsn, into, ledger, audit)
        audit_done = (
            f"; its audit {audit.path} is complete too (chain head {audit.chain_head})"
            if audit is not None
            else ""
        )
        done = (
            f"{counts.transactions} transactions, {counts.changes} row changes, commit LSNs "
            f"{counts.first_lsn or '-'} .. {counts.last_lsn or '-'}"
        )
        raise ReconcileFailed(
            f"{into} is complete ({done}){audit_done}, but the reconciliation failed: "
            f"{reason}. Nothing needs rebuilding: run the reconciliation alone with "
            f"`{command}` (or rerun this command, which finds the recovery complete and only "
            "reconciles)",
            table=str(into),
            command=command,
        ) from None


def reconcile_command(
    target_dsn: str | None,
    ledger_dsn: str | None,
    into: TableName,
    ledger: LedgerCheck,
    audit: AuditSummary | None,
) -> str:
    """The ``walrecover reconcile`` command that reconciles a finished recovery on its own,
    shell-quoted, with no password (libpq takes it from .pgpass or PGPASSWORD)."""
    words = ["walrecover", "reconcile"]
    if target_dsn:
        words += ["-d", safe_dsn(target_dsn)]
    words += ["--table", str(into), "--key", ledger.key, "--amount", ledger.amount]
    words += ["--ledger-query", ledger.query]
    if ledger_dsn != target_dsn and ledger_dsn:
        words += ["--ledger-dsn", safe_dsn(ledger_dsn)]
    if audit is not None:
        words += ["--audit", audit.path]
    return " ".join(shlex.quote(word) for word in words)
