"""The whole recovery as one call: read the slot, replay, audit, reconcile.

:func:`recover` is what ``walrecover recover`` runs. It checks everything it can before writing
anything (names, files, the slot, the stop point's range, the target), reads the user's slot only
through a copy, and returns a :class:`RecoveryResult`. A failure raises a
:class:`~walrecover.errors.WalrecoverError`; what was committed to the target is then an
unfinished recovery that rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from . import __version__
from .audit import AuditWriter
from .db import connect, redact, safe_dsn
from .decoders import decode_all, make_decoder, warnings_for
from .errors import (
    ConnectionFailed,
    DecodeError,
    PrivilegeError,
    StopPointError,
    TableNotInStream,
    WalrecoverError,
    first_line,
)
from .lsn import Lsn
from .model import NO_STOP, Change, StopPoint, TableName
from .reconcile import Reconciliation, reconcile_table
from .replay import replay
from .sources import CaptureSource, ProgressCallback, SlotSource
from .target import lock_target


@dataclass(frozen=True)
class LedgerCheck:
    """How to reconcile: sum ``amount`` per ``key`` and compare with ``query`` on the source."""

    key: str
    amount: str
    query: str


@dataclass(frozen=True)
class AuditSummary:
    """Where the audit went and how many rows it holds."""

    path: str
    rows: int
    #: The manifest beside it, the last row's chained hash (record it with the incident:
    #: ``walrecover audit verify --chain-head`` proves the audit is that one) and the rows per
    #: outcome.
    manifest: str | None = None
    chain_head: str | None = None
    outcomes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RecoveryResult:
    """What a recovery did, as ``walrecover recover --json`` prints it."""

    table: str
    into: str
    plugin: str
    slot: str
    transactions: int
    changes: int
    rows: int
    no_row: int
    first_lsn: Lsn | None
    last_lsn: Lsn | None
    stop: str
    stopped_before: tuple[int | None, Lsn | None] | None
    resumed_from: Lsn | None
    seconds: dict[str, float]
    reconciliation: Reconciliation | None
    audit: AuditSummary | None
    swept_slots: tuple[str, ...] = field(default=())
    #: What the user should know about how the stream was read (plugin limits).
    warnings: tuple[str, ...] = field(default=())
    #: Why the rebuilt table may differ from the table at the stop point. Empty means exact;
    #: anything here makes ``walrecover recover`` exit with code 4 (``EXIT_UNPROVEN``).
    unproven: tuple[str, ...] = field(default=())
    #: The capture file read (``--from-file``), or None for a slot.
    capture: str | None = None
    #: What ``first_lsn``, ``last_lsn`` and ``stopped_before`` hold: ``"commit"`` (where each
    #: commit record starts) or ``"end"`` (where it ends: test_decoding gives no commit LSN).
    lsn_kind: str = "commit"

    @property
    def exact(self) -> bool:
        """True when walrecover could prove the rebuilt table is the table at the stop point."""
        return not self.unproven

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (LSNs as text, Decimals as strings)."""
        return {
            "table": self.table,
            "into": self.into,
            "plugin": self.plugin,
            "slot": self.slot,
            "transactions": self.transactions,
            "changes": self.changes,
            "rows": self.rows,
            "no_row": self.no_row,
            "first_lsn": _lsn(self.first_lsn),
            "last_lsn": _lsn(self.last_lsn),
            "stop": self.stop,
            "stopped_before": (
                {"xid": self.stopped_before[0], "lsn": _lsn(self.stopped_before[1])}
                if self.stopped_before
                else None
            ),
            "resumed_from": _lsn(self.resumed_from),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "reconciliation": self.reconciliation.to_dict() if self.reconciliation else None,
            "audit": (
                {
                    "path": self.audit.path,
                    "rows": self.audit.rows,
                    "manifest": self.audit.manifest,
                    "chain_head": self.audit.chain_head,
                    "outcomes": dict(self.audit.outcomes),
                }
                if self.audit
                else None
            ),
            "swept_slots": list(self.swept_slots),
            "warnings": list(self.warnings),
            "unproven": list(self.unproven),
            "exact": self.exact,
            "capture": self.capture,
            "lsn_kind": self.lsn_kind,
        }


def _lsn(value: Lsn | None) -> str | None:
    return None if value is None else str(value)


def default_into(table: TableName) -> TableName:
    """``<table>_recovered`` in the table's schema (the default ``--into``)."""
    return TableName(table.schema, f"{table.name}_recovered")


def recover(
    dsn: str | None,
    slot: str,
    table: TableName,
    *,
    into: TableName | None = None,
    target: str | None = None,
    stop: StopPoint = NO_STOP,
    ddl: str | None = None,
    force: bool = False,
    ledger: LedgerCheck | None = None,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 20_000,
    options: Mapping[str, str] | None = None,
    audit_dir: str | Path | None = None,
    via_plugin: str | None = None,
) -> RecoveryResult:
    """Rebuild ``table`` from ``slot`` on ``dsn`` into ``into`` on ``target`` (default ``dsn``).

    ``options`` are plugin options (``-o NAME=VALUE``) on top of walrecover's; ``via_plugin``
    reads the slot through another output plugin (the copy is made with it).
    """
    source = SlotSource(
        dsn,
        slot,
        tables=[table],
        options=options,
        via_plugin=via_plugin,
        progress=progress,
    )
    return _recover(
        source,
        dsn,
        slot,
        table,
        into=into,
        target=target if target is not None else dsn,
        target_role="target" if target is not None else "source",
        stop=stop,
        ddl=ddl,
        force=force,
        ledger=ledger,
        audit_path=audit_path,
        audit_dir=audit_dir,
        batch_size=batch_size,
    )


def recover_capture(
    path: str | Path,
    plugin: str,
    table: TableName,
    *,
    target: str | None,
    into: TableName | None = None,
    options: Mapping[str, str] | None = None,
    stop: StopPoint = NO_STOP,
    ddl: str | None = None,
    force: bool = False,
    ledger: LedgerCheck | None = None,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 20_000,
    audit_dir: str | Path | None = None,
) -> RecoveryResult:
    """Rebuild ``table`` from a ``pg_recvlogical -f`` capture into ``into`` on ``target``.

    ``plugin`` and ``options`` say what produced the file (pg_recvlogical's ``-P`` and ``-o``).
    The ledger query, if any, runs on ``target``.
    """
    source = CaptureSource(path, plugin, options=options, progress=progress)
    return _recover(
        source,
        target,
        None,
        table,
        into=into,
        target=target,
        target_role="target",
        stop=stop,
        ddl=ddl,
        force=force,
        ledger=ledger,
        audit_path=audit_path,
        audit_dir=audit_dir,
        batch_size=batch_size,
    )


def _recover(
    src: SlotSource | CaptureSource,
    dsn: str | None,
    slot: str | None,
    table: TableName,
    *,
    into: TableName | None,
    target: str | None,
    target_role: str,
    stop: StopPoint,
    ddl: str | None,
    force: bool,
    ledger: LedgerCheck | None,
    audit_path: str | Path | None,
    batch_size: int,
    audit_dir: str | Path | None = None,
) -> RecoveryResult:
    """The recovery proper, from any source."""
    started = time.monotonic()
    started_at = datetime.now(UTC)
    into = into or default_into(table)
    target_dsn = target
    if into == table and target_dsn == dsn:
        raise WalrecoverError(
            f"--into {into} is the table being recovered: build into a new table and swap it in"
        )
    audit: AuditWriter | None = None
    if audit_path is not None and audit_dir is not None:
        raise WalrecoverError("give --audit FILE or --audit-dir DIR, not both")
    audit_at = audit_dir if audit_dir is not None else audit_path
    target_conn = connect(target_dsn, role=target_role)
    try:
        lock_target(target_conn, into)  # before any work: a second writer is refused at once
        with src:
            _check_stop_range(stop, src)
            if stop.xid is not None and isinstance(src, SlotSource):
                status = src.xid_status(stop.xid)
                if status in ("aborted", "in progress"):
                    raise StopPointError(
                        f"transaction {stop.xid} is {status} on the source, so it never commits "
                        "in the stream: check --stop-before-xid",
                        xid=stop.xid,
                    )
            if audit_at is not None:
                audit = AuditWriter(
                    audit_at,
                    {
                        "tool": f"walrecover {__version__}",
                        "source": src.describe() if slot is None else safe_dsn(dsn),
                        "target": safe_dsn(target_dsn),
                        "slot": slot,
                        "plugin": src.plugin,
                        "table": str(table),
                        "into": str(into),
                        "stop": stop.describe(),
                        "stream_start_lsn": _lsn(src.start_lsn),
                        "stream_end_lsn": _lsn(src.end_lsn),
                        "started_at": started_at.isoformat(),
                    },
                    partitioned=audit_dir is not None,
                    force=force,
                    protect=(src.path,) if isinstance(src, CaptureSource) else (),
                )
            decoder = make_decoder(src.plugin, dict(src.options))
            warnings = list(warnings_for(src.plugin, dict(src.options)))
            try:
                result = replay(
                    target_conn,
                    decode_all(decoder, src.messages()),
                    table,
                    into,
                    stop=stop,
                    ddl=ddl,
                    force=force,
                    source=src.describe(),
                    batch_size=batch_size,
                    sink=audit,
                    audit_id=str(Path(audit_at).resolve()) if audit_at is not None else None,
                )
            except TableNotInStream as exc:
                if isinstance(src, SlotSource) and not exc.facts.get("tables"):
                    raise _with_tables(exc, dsn, src) from None
                raise
            except DecodeError as exc:
                if isinstance(src, CaptureSource):
                    src.locate(exc)
                raise
            plugin, swept = src.plugin, tuple(src.swept)
        replayed = time.monotonic()
        audit_summary = None
        if audit is not None:
            rows = audit.close(
                {
                    "finished_at": datetime.now(UTC).isoformat(),
                    "transactions": result.transactions,
                    "changes": result.changes,
                    "first_lsn": _lsn(result.first_lsn),
                    "last_lsn": _lsn(result.last_lsn),
                    "stopped_before_lsn": _lsn(result.stopped_before[1])
                    if result.stopped_before
                    else None,
                }
            )
            audit_summary = AuditSummary(
                str(audit.path),
                rows,
                manifest=str(audit.manifest),
                chain_head=audit.chain_head,
                outcomes=dict(audit.outcome_counts),
            )
            audit = None
        reconciliation = None
        if ledger is not None:
            with connect(dsn, role="ledger") as ledger_conn:
                reconciliation = reconcile_table(
                    target_conn,
                    into,
                    key=ledger.key,
                    amount=ledger.amount,
                    ledger=ledger_conn,
                    ledger_query=ledger.query,
                    audit=audit_summary.path if audit_summary is not None else None,
                )
        finished = time.monotonic()
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(
            f"lost a database connection during the recovery into {into} "
            f"({redact(first_line(exc), target_dsn)}): what was committed is kept; rerun the "
            "same command to resume",
            table=str(into),
        ) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PrivilegeError(
            f"the recovery into {into} was refused: {redact(first_line(exc), target_dsn)}; "
            "grant the role that privilege (or use another role)",
            table=str(into),
        ) from None
    except psycopg.Error as exc:
        raise WalrecoverError(
            f"the recovery into {into} failed: {redact(first_line(exc), target_dsn)}",
            table=str(into),
        ) from None
    finally:
        if audit is not None:
            kept = audit.abort()
            # sys.exception() is the error on its way out of this function (finally runs
            # while it propagates): say where the audit's work went.
            failure = sys.exception()
            if kept is not None and isinstance(failure, WalrecoverError):
                failure.extend(
                    f"; the audit written so far is kept in {kept} (a resumed run continues it,"
                    " --force discards it)"
                )
        with contextlib.suppress(Exception):
            target_conn.close()
    return RecoveryResult(
        table=str(table),
        into=result.into,
        plugin=plugin,
        slot=slot or "",
        transactions=result.transactions,
        changes=result.changes,
        rows=result.rows,
        no_row=result.no_row,
        first_lsn=result.first_lsn,
        last_lsn=result.last_lsn,
        stop=stop.describe(),
        stopped_before=result.stopped_before,
        resumed_from=result.resumed_from,
        seconds={
            "replay": replayed - started,
            "reconcile": finished - replayed,
            "total": finished - started,
        },
        reconciliation=reconciliation,
        audit=audit_summary,
        swept_slots=swept,
        warnings=(
            *warnings,
            *(f"followed an ALTER TABLE {change}" for change in result.schema_changes),
        ),
        unproven=result.unproven,
        capture=str(src.path) if isinstance(src, CaptureSource) else None,
        lsn_kind="end" if plugin == "test_decoding" else "commit",
    )


def _with_tables(exc: TableNotInStream, dsn: str | None, src: SlotSource) -> TableNotInStream:
    """The same error, listing the tables the slot does carry (one more pass, no filter)."""
    seen: set[str] = set()
    with (
        contextlib.suppress(WalrecoverError, psycopg.Error),
        SlotSource(dsn, src.slot, options=src.user_options, via_plugin=src.via_plugin) as again,
    ):
        decoder = make_decoder(again.plugin, dict(again.options))
        for event in decode_all(decoder, again.messages()):
            if isinstance(event, Change):
                seen.add(event.relation.qualified_name)
                if len(seen) >= 20:
                    break
    if not seen:
        return exc
    listed = ", ".join(sorted(seen))
    return TableNotInStream(
        f"{exc.message} (tables in the stream: {listed})",
        tables=sorted(seen),
        **{k: v for k, v in exc.facts.items() if k != "tables"},
    )


def _check_stop_range(stop: StopPoint, source: SlotSource | CaptureSource) -> None:
    """Refuse an LSN stop point outside what the slot can still decode."""
    if stop.lsn is None:
        return
    start, end = source.start_lsn, source.end_lsn
    if start is not None and stop.lsn <= start:
        raise StopPointError(
            f"--stop-before-lsn {stop.lsn} is at or before the slot's start ({start}): nothing "
            "could be recovered; the slot only holds changes after it",
            lsn=stop.lsn,
        )
    if end is not None and stop.lsn > end:
        raise StopPointError(
            f"--stop-before-lsn {stop.lsn} is after the end of the WAL ({end}): check the LSN",
            lsn=stop.lsn,
        )
