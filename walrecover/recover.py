"""The whole recovery as one call: read the slot, replay, audit, reconcile.

:func:`recover` is what ``walrecover recover`` runs. It checks everything it can before writing
anything (names, files, the slot, the stop point's range, the target), reads the user's slot only
through a copy, and returns a :class:`RecoveryResult`. A failure raises a
:class:`~walrecover.errors.WalrecoverError`; what was committed to the target is then an
unfinished recovery that rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from . import __version__
from .audit import AuditWriter
from .db import connect, connection_lost, redact, safe_dsn
from .decoders import column_limits, decode_all, make_decoder, warnings_for
from .errors import (
    ConnectionFailed,
    DecodeError,
    StopPointError,
    TableNotInStream,
    WalrecoverError,
    WalUnavailable,
    first_line,
)
from .identity import CaptureIdentityWatch
from .lsn import Lsn
from .model import NO_STOP, Change, StopPoint, TableName
from .notices import LossWatch
from .reconcile import Reconciliation, reconcile_table
from .recreation import RecreationJudge
from .replay import replay
from .settings import CaptureSettings, ServerRoundTrip, ValueChecker
from .settings import apply as apply_settings
from .settings import restore as restore_settings
from .sources import CaptureSource, ProgressCallback, SlotSource
from .target import lock_target, refuse_listed
from .walinspect import WalInspect, waldump_command


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
        stop_lsn=stop.lsn,
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
        wal_dsn=dsn,
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
    capture_settings: CaptureSettings | Mapping[str, str] | None = None,
    wal_dsn: str | None = None,
) -> RecoveryResult:
    """Rebuild ``table`` from a ``pg_recvlogical -f`` capture into ``into`` on ``target``.

    ``plugin`` and ``options`` say what produced the file (pg_recvlogical's ``-P`` and ``-o``);
    ``capture_settings`` the output settings its session had (``{"DateStyle": "SQL, DMY"}``;
    PostgreSQL's built-in defaults for those not given), which the target session parses the
    values with. The ledger query, if any, runs on ``target``. ``wal_dsn`` is a database of the
    server that wrote the capture, where pg_walinspect may read its WAL (to tell a re-created
    table).
    """
    source = CaptureSource(
        path,
        plugin,
        options=options,
        progress=progress,
        settings=capture_settings_of(capture_settings),
    )
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
        wal_dsn=wal_dsn,
    )


def capture_settings_of(given: CaptureSettings | Mapping[str, str] | None) -> CaptureSettings:
    """``given`` as :class:`CaptureSettings`; raise :class:`WalrecoverError` for a bad one."""
    if isinstance(given, CaptureSettings):
        return given
    try:
        return CaptureSettings.parse(given)
    except ValueError as exc:
        raise WalrecoverError(f"--capture-setting: {exc}") from None


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
    wal_dsn: str | None = None,
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
    checker: ValueChecker | None = None
    roundtrip: ServerRoundTrip | None = None
    wal: WalInspect | None = None
    judge: RecreationJudge | None = None
    notes: list[str] = []
    try:
        lock_target(target_conn, into)  # before any work: a second writer is refused at once
        refuse_listed(target_conn, into)  # a table a publication names cannot be kept from it
        target_conn.commit()
        if isinstance(src, CaptureSource):
            # The target parses the capture's text (COPY, statements) as it was printed.
            apply_settings(target_conn, src.settings)
            if src.settings.date_output != "ISO":
                roundtrip = ServerRoundTrip(target_dsn, src.settings)
            checker = ValueChecker(src.settings, src.plugin, (table,), roundtrip)
        with src:
            _check_stop_range(stop, src)
            wal, wal_problem = (
                _open_wal(wal_dsn, capture=isinstance(src, CaptureSource))
                if src.plugin != "pgoutput" or stop.xid is not None
                else (None, "")
            )
            given_stop = stop
            stop = _resolve_stop_xid(stop, src, wal, notes)
            if src.plugin != "pgoutput":  # pgoutput has relation ids: replay compares them
                judge = RecreationJudge(
                    table,
                    into,
                    wal=wal,
                    wal_problem=wal_problem,
                    start=src.start_lsn,
                    end=src.end_lsn,
                    format1=src.plugin == "wal2json"
                    and dict(src.options).get("format-version", "2") == "1",
                )
                wal = None  # the judge owns it now
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
                        **(
                            {"capture_settings": src.settings.to_dict()}
                            if isinstance(src, CaptureSource)
                            else {}
                        ),
                    },
                    partitioned=audit_dir is not None,
                    force=force,
                    protect=(src.path,) if isinstance(src, CaptureSource) else (),
                )
            decoder = make_decoder(src.plugin, dict(src.options))
            warnings = list(warnings_for(src.plugin, dict(src.options)))
            unproven: list[str] = []
            events = decode_all(decoder, src.messages())
            if checker is not None:
                warnings.extend(checker.settings.warnings())
                events = checker.events(events)
            watch: LossWatch | None = None
            identity: CaptureIdentityWatch | None = None
            if isinstance(src, CaptureSource) and src.plugin == "wal2json":
                identity = CaptureIdentityWatch(table, stop, dict(src.options))
                events = identity.follow(events)
            if isinstance(src, SlotSource):
                warnings.extend(src.warnings)
                unproven.extend(src.unproven)
                watch = LossWatch(src.notices, table, stop, src.plugin)
                events = watch.follow(events)
            if ddl is None:
                version = src.server_version if isinstance(src, SlotSource) else None
                warnings.extend(column_limits(src.plugin, version))
            try:
                result = replay(
                    target_conn,
                    events,
                    table,
                    into,
                    stop=stop,
                    ddl=ddl,
                    force=force,
                    # Positions mean different things in different plugins (test_decoding's is
                    # the end of the commit record): resume only through the same one.
                    source=src.describe()
                    if isinstance(src, CaptureSource)
                    else f"{src.describe()} through {src.plugin}",
                    batch_size=batch_size,
                    sink=audit,
                    audit_id=str(Path(audit_at).resolve()) if audit_at is not None else None,
                    stream_start=src.start_lsn if isinstance(src, SlotSource) else None,
                    judge=judge,
                )
            except StopPointError as exc:
                if exc.facts.get("missing") and given_stop.xid is not None:
                    raise _xid_hint(exc, given_stop, src) from None
                raise
            except TableNotInStream as exc:
                if isinstance(src, SlotSource) and not exc.facts.get("tables"):
                    raise _with_tables(exc, dsn, src) from None
                raise
            except DecodeError as exc:
                if isinstance(src, CaptureSource):
                    src.locate(exc)
                raise
            plugin, swept = src.plugin, tuple(src.swept)
            if isinstance(src, SlotSource) and watch is not None:
                lost, after_stop = watch.verdict()
                unproven.extend(lost)
                warnings.extend(src.notices.warnings(skip=table))
                warnings.extend(after_stop)
            if identity is not None:
                lost, doubts = identity.verdict()
                unproven.extend(lost)
                warnings.extend(doubts)
        if checker is not None:
            restore_settings(target_conn)
            notes, doubts = checker.notes(table, audit=audit_at is not None)
            warnings.extend(notes)
            unproven.extend(doubts)
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
    except psycopg.Error as exc:
        if connection_lost(exc):
            raise ConnectionFailed(
                f"lost a database connection during the recovery into {into} "
                f"({redact(first_line(exc), target_dsn)}): what was committed is kept; rerun "
                "the same command to resume",
                table=str(into),
            ) from None
        raise WalrecoverError(
            f"the recovery into {into} failed: {redact(first_line(exc), target_dsn)}; what was"
            " committed is kept as an unfinished recovery",
            table=str(into),
        ) from None
    finally:
        if audit is not None:
            audit.abort()
        if roundtrip is not None:
            roundtrip.close()
        if judge is not None:
            judge.close()
        if wal is not None:
            wal.close()
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
            *notes,
            *result.warnings,
            *(f"followed an ALTER TABLE {change}" for change in result.schema_changes),
            *result.warnings,
        ),
        unproven=(*unproven, *result.unproven),
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


def _open_wal(dsn: str | None, *, capture: bool) -> tuple[WalInspect | None, str]:
    """pg_walinspect on the source's server, or None and why not (for the user's advice)."""
    if dsn is None and capture:
        return None, (
            "no source database was given (-d) to read the WAL of the server that wrote the capture"
        )
    conn = connect(dsn, autocommit=True, role="source")
    try:
        return WalInspect.open(conn), ""
    except WalUnavailable as exc:
        conn.close()
        return None, exc.message


def _resolve_stop_xid(
    stop: StopPoint, src: SlotSource | CaptureSource, wal: WalInspect | None, notes: list[str]
) -> StopPoint:
    """Check an xid stop point against the source and resolve a subtransaction to its
    top-level transaction (the stream shows only those): the stop point to use."""
    if stop.xid is None or stop.xid32 is None:
        return stop
    xid, xid32 = stop.xid, stop.xid32
    if not isinstance(src, SlotSource):
        if stop.epoch is not None:
            notes.append(
                f"a capture records no epochs: --stop-before-xid {xid} is matched as xid {xid32}"
                f" (epoch {stop.epoch} is not checked)"
            )
        return stop
    if stop.epoch is not None:
        here = src.widen_xid(xid32)
        if here is not None and here != xid:
            when = (
                "has not been assigned yet"
                if xid > here
                else "is older than anything the slot can hold (a slot holds at most the last"
                " 2^31 transactions)"
            )
            raise StopPointError(
                f"--stop-before-xid {xid} is xid {xid32} of epoch {stop.epoch}, but the server "
                f"is in epoch {here >> 32}, where xid {xid32} is {here}: transaction {xid} "
                f"{when}; check --stop-before-xid",
                xid=xid,
            )
    status = src.xid_status(xid)
    if status in ("aborted", "in progress"):
        raise StopPointError(
            f"transaction {xid} is {status} on the source, so it never commits "
            "in the stream: check --stop-before-xid",
            xid=xid,
        )
    if status == "committed" and wal is not None and src.start_lsn is not None:
        try:
            record = wal.top_level(xid32, src.start_lsn, src.end_lsn)
        except WalUnavailable:
            record = None
        if record is not None and record.xid != xid32:
            notes.append(
                f"transaction {xid} is a subtransaction of transaction {record.xid} (commit LSN "
                f"{record.lsn}): a subtransaction commits with its top-level transaction, so "
                f"the recovery stops before transaction {record.xid}"
            )
            return StopPoint(xid=record.xid)
    return stop


def _xid_hint(
    exc: StopPointError, stop: StopPoint, src: SlotSource | CaptureSource
) -> StopPointError:
    """The 'does not commit in the stream' error, with what the xid may be."""
    assert stop.xid32 is not None
    check = waldump_command(src.start_lsn, src.end_lsn, f"subxacts:.* {stop.xid32}( |$)")
    message = (
        f"{exc.message}. If it is a subtransaction (the stream shows only top-level xids), stop"
        f" at its top-level transaction: with pg_walinspect in the source database (CREATE "
        f"EXTENSION pg_walinspect, PostgreSQL 15+) walrecover finds it itself; or find it on "
        f"the server with: {check}"
    )
    return StopPointError(message, **exc.facts)
