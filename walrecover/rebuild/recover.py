"""The whole recovery as one call: read the slot, replay, audit, reconcile.

:func:`recover` is what ``walrecover recover`` runs. It checks everything it can before writing
anything (names, files, the slot, the stop point's range, the target), reads the user's slot only
through a copy, and returns a :class:`RecoveryResult`. A failure raises a
:class:`~walrecover.errors.WalrecoverError`; what was committed to the target is then an
unfinished recovery that rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .. import __version__
from ..audit.format import manifest_path
from ..audit.workspace import clear_published
from ..audit.writer import AuditWriter
from ..db import connect, connection_lost, redact, safe_dsn
from ..errors import (
    ConnectionFailed,
    DecodeError,
    PrivilegeError,
    ReconcileFailed,
    StopPointError,
    TableNotInStream,
    TargetExists,
    WalrecoverError,
    WalUnavailable,
    first_line,
)
from ..incident.events import DestructiveEvent
from ..incident.inspect import resolve_stop_before, settled
from ..ledger.reconcile import Reconciliation, reconcile_table
from ..stream.decoders import column_limits, warnings_for
from ..stream.lsn import Lsn
from ..stream.model import NO_STOP, Change, StopPoint, TableName
from ..stream.notices import LossWatch
from ..stream.settings import CaptureSettings
from ..stream.settings import apply as apply_settings
from ..stream.settings import restore as restore_settings
from ..stream.sources import CaptureSource, ProgressCallback, SlotSource
from ..stream.value_check import ServerRoundTrip, ValueChecker
from ..stream.walinspect import WalInspect, waldump_command
from .baseline import Baseline, BaselineOptions
from .identity import CaptureIdentityWatch
from .preflight import (
    check_encoding,
    check_key_amount,
    check_ledger_query,
    check_target,
    command_differences,
    command_identity,
    database_identity,
    ddl_identity,
    table_column_types,
)
from .recreation import RecreationJudge
from .replay import ReplayResult, replay
from .target import Progress, Target, lock_target, read_progress, refuse_listed
from .unseen import capture_publications, replaced


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
    #: An earlier run of the same command had finished this recovery: nothing was read or
    #: written, the result is the one it recorded (the reconciliation, if asked, is new).
    already_complete: bool = False
    #: The baseline the table was started from (``--baseline``): source, point, rows, hash.
    baseline: dict[str, Any] | None = None
    #: The event ``--stop-before drop|truncate|auto`` found and stopped before, if given.
    stop_event: DestructiveEvent | None = None

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
            "already_complete": self.already_complete,
            "baseline": self.baseline,
            "stop_event": self.stop_event.to_dict() if self.stop_event else None,
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
    baseline: BaselineOptions | None = None,
    stop_before: str | None = None,
    wal_dir: str | Path | None = None,
) -> RecoveryResult:
    """Rebuild ``table`` from ``slot`` on ``dsn`` into ``into`` on ``target`` (default ``dsn``).

    ``options`` are plugin options (``-o NAME=VALUE``) on top of walrecover's; ``via_plugin``
    reads the slot through another output plugin (the copy is made with it); ``baseline``
    starts the table from an older copy of it (see :mod:`.baseline`). ``stop_before``
    (``drop``, ``truncate``, ``auto``) finds that event of the table in the WAL (pg_walinspect,
    or pg_waldump on ``wal_dir`` or the server's own pg_wal) and stops exactly before it.
    """
    event = None
    if stop_before is not None:
        if stop.is_set:
            raise StopPointError("give --stop-before or a --stop-before-lsn/-xid/-time, not both")
        stop, event = resolve_stop_before(
            dsn, slot, table, stop_before, wal_dir=wal_dir, options=options, via_plugin=via_plugin
        )
    source = SlotSource(
        dsn,
        slot,
        tables=[table],
        options=options,
        via_plugin=via_plugin,
        progress=progress,
        stop_lsn=stop.lsn,
    )
    command = slot_command(
        dsn, slot, table, via_plugin, options, stop, ddl, audit_identity(audit_path, audit_dir),
        baseline,
    )  # fmt: skip
    result = _recover(
        source,
        dsn,
        slot,
        table,
        command=command,
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
        baseline=baseline,
    )
    if event is None:
        return result
    return replace(result, stop_event=event, unproven=settled(result.unproven, table, event))


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
    baseline: BaselineOptions | None = None,
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
        tables=[table],
    )
    command = capture_command(
        source, table, stop, ddl, audit_identity(audit_path, audit_dir), baseline
    )
    return _recover(
        source,
        target,
        None,
        table,
        command=command,
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
        baseline=baseline,
    )


def capture_settings_of(given: CaptureSettings | Mapping[str, str] | None) -> CaptureSettings:
    """``given`` as :class:`CaptureSettings`; raise :class:`WalrecoverError` for a bad one."""
    if isinstance(given, CaptureSettings):
        return given
    try:
        return CaptureSettings.parse(given)
    except ValueError as exc:
        raise WalrecoverError(f"--capture-setting: {exc}") from None


def slot_command(
    dsn: str | None,
    slot: str,
    table: TableName,
    via_plugin: str | None,
    options: Mapping[str, str] | None,
    stop: StopPoint,
    ddl: str | None,
    audit: str | None,
    baseline: BaselineOptions | None = None,
) -> str:
    """The identity of a recovery from a slot (see :func:`.preflight.command_identity`)."""
    return command_identity(
        database=database_identity(dsn),
        slot=slot,
        via_plugin=via_plugin,
        options=dict(options or {}),
        table=str(table),
        stop=stop.describe(),
        ddl=ddl_identity(ddl),
        audit=audit,
        baseline=baseline.identity() if baseline is not None else None,
    )


def capture_command(
    source: CaptureSource,
    table: TableName,
    stop: StopPoint,
    ddl: str | None,
    audit: str | None,
    baseline: BaselineOptions | None = None,
) -> str:
    """The identity of a recovery from a capture file."""
    return command_identity(
        capture=str(source.path.resolve()),
        plugin=source.plugin,
        options=dict(source.user_options),
        capture_settings=source.settings.describe() or None,
        table=str(table),
        stop=stop.describe(),
        ddl=ddl_identity(ddl),
        audit=audit,
        baseline=baseline.identity() if baseline is not None else None,
    )


def audit_identity(audit_path: str | Path | None, audit_dir: str | Path | None) -> str | None:
    """The audit a recovery writes, as its progress row records it (an absolute path)."""
    audit_at = audit_dir if audit_dir is not None else audit_path
    return str(Path(audit_at).resolve()) if audit_at is not None else None


def _recover(
    src: SlotSource | CaptureSource,
    dsn: str | None,
    slot: str | None,
    table: TableName,
    *,
    command: str,
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
    baseline: BaselineOptions | None = None,
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
    base: Baseline | None = None
    notes: list[str] = []
    # Where the source's WAL was before this run created anything (a capture's; a slot copy's
    # end serves for a slot): tables created from here on are the run's own.
    began = (
        _source_position(wal_dsn)
        if isinstance(src, CaptureSource) and src.plugin == "pgoutput" and wal_dsn
        else None
    )
    try:
        lock_target(target_conn, into)  # before any work: a second writer is refused at once
        exists = table_exists(target_conn, into)
        previous = None
        if exists and not force:
            try:
                previous = read_progress(target_conn, into)
            except psycopg.errors.InsufficientPrivilege:
                previous = None  # check_target names the missing grant below
            target_conn.rollback()
        if previous is not None and previous.command is not None:
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
            if previous.complete and isinstance(src, CaptureSource):
                _check_capture_unchanged(previous, src, into)
            if previous.complete and _audit_published(audit_at, audit_dir is not None, into):
                return _already_complete(
                    previous,
                    target_conn,
                    dsn,
                    target_dsn,
                    table,
                    into,
                    slot=slot,
                    stop=stop,
                    ledger=ledger,
                    started=started,
                )
        if ledger is not None:
            with connect(dsn, role="ledger") as ledger_conn:
                check_ledger_query(ledger_conn, ledger.query)
            if exists and not force:
                columns = table_column_types(target_conn, into)
                target_conn.commit()
                check_key_amount(columns, ledger.key, ledger.amount, str(into))
        if isinstance(src, CaptureSource):
            # The target parses the capture's text (COPY, statements) as it was printed.
            apply_settings(target_conn, src.settings)
            if src.settings.date_output != "ISO":
                roundtrip = ServerRoundTrip(target_dsn, src.settings)
            checker = ValueChecker(src.settings, src.plugin, (table,), roundtrip)
        if baseline is not None:
            base = Baseline(baseline, table)
            if isinstance(src, SlotSource) and base.point is not None:
                src.split_lsns = (base.point,)  # pages on one side of it: see LossWatch
        with src:
            # Before any row: the grants the build needs (named per object), then the
            # publications (a table a publication names cannot be kept from it).
            facts = check_target(target_conn, into, force=force, exists=exists)
            refuse_listed(target_conn, into)
            target_conn.commit()
            check_encoding(
                facts.encoding,
                src.server_encoding if isinstance(src, SlotSource) else None,
                facts.database,
            )
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
            warnings = list(warnings_for(src.plugin, dict(src.options)))
            unproven: list[str] = []
            events = src.events()
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
                watch = LossWatch(
                    src.notices, table, stop, src.plugin, base.point if base is not None else None
                )
                events = watch.follow(events)
            if ddl is None:
                version = src.server_version if isinstance(src, SlotSource) else None
                warnings.extend(column_limits(src.plugin, version))
            if base is not None:
                events = base.follow(
                    events, src.start_lsn if isinstance(src, SlotSource) else None, stop
                )
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
                    cut_ok=isinstance(src, CaptureSource),
                    command=command,
                    on_created=_on_created(_column_check(ledger, ddl), base),
                    idempotent=base is not None and base.idempotent,
                )
            except StopPointError as exc:
                if exc.facts.get("missing") and given_stop.xid is not None:
                    raise _xid_hint(exc, given_stop, src) from None
                raise
            except TableNotInStream as exc:
                if base is not None:
                    raise base.no_changes(exc) from None
                if isinstance(src, SlotSource) and not exc.facts.get("tables"):
                    raise _with_tables(exc, dsn, src) from None
                raise
            except DecodeError as exc:
                src.locate(exc)
                raise
            plugin, swept = src.plugin, tuple(src.swept)
            warnings.extend(src.notes())
            if plugin == "pgoutput":
                hidden, noted = _unseen(
                    src, wal_dsn, table, into, stop, result, began if began else src.end_lsn
                )
                unproven.extend(hidden)
                warnings.extend(noted)
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
            checked, doubts = checker.notes(table, audit=audit_at is not None)
            warnings.extend(checked)
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
                    **({"baseline": base.summary()} if base is not None else {}),
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
        if base is not None and base.gap is not None:
            unproven.append(base.gap)
        all_unproven = (*unproven, *result.unproven)
        with contextlib.suppress(psycopg.Error):  # only the "already complete" answer needs it
            Target(target_conn, into).store_result(
                json.dumps(
                    {
                        "plugin": plugin,
                        "slot": slot or "",
                        "rows": result.rows,
                        "stopped_before": [
                            result.stopped_before[0],
                            str(result.stopped_before[1])
                            if result.stopped_before[1] is not None
                            else None,
                        ]
                        if result.stopped_before
                        else None,
                        "audit": _audit_dict(audit_summary),
                        "unproven": list(all_unproven),
                        "capture_bytes": _size(src.path)
                        if isinstance(src, CaptureSource)
                        else None,
                        "baseline": base.summary() if base is not None else None,
                        "completed_at": datetime.now(UTC).isoformat(),
                    },
                    default=str,
                )
            )
        reconciliation = None
        if ledger is not None:
            reconciliation = _reconcile_complete(
                target_conn,
                dsn,
                target_dsn,
                into,
                ledger,
                audit_summary,
                f"{result.transactions} transactions, {result.changes} row changes, commit LSNs "
                f"{result.first_lsn or '-'} .. {result.last_lsn or '-'}",
            )
        finished = time.monotonic()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PrivilegeError(
            f"the recovery into {into} was refused: {redact(first_line(exc), target_dsn)}; "
            "grant the role that privilege (or use another role)",
            table=str(into),
        ) from None
    except psycopg.Error as exc:
        if connection_lost(exc):
            raise ConnectionFailed(
                f"lost a database connection during the recovery into {into} "
                f"({redact(first_line(exc), target_dsn)}): what was committed is kept; rerun "
                "the same command to resume",
                table=str(into),
            ) from None
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
        if roundtrip is not None:
            roundtrip.close()
        if judge is not None:
            judge.close()
        if wal is not None:
            wal.close()
        if base is not None:
            base.close()
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
            *(f"followed an ALTER TABLE {change}" for change in result.schema_changes),
            *result.warnings,
        ),
        unproven=all_unproven,
        capture=str(src.path) if isinstance(src, CaptureSource) else None,
        lsn_kind="end" if plugin == "test_decoding" else "commit",
        baseline=base.summary() if base is not None else None,
    )


def _unseen(
    src: SlotSource | CaptureSource,
    dsn: str | None,
    table: TableName,
    into: TableName,
    stop: StopPoint,
    result: ReplayResult,
    began: Lsn | None,
) -> tuple[list[str], list[str]]:
    """What the pgoutput stream could not show, asked of the source database ``dsn`` (a slot
    read's, or a capture's -d): a table replaced with no change of the new one in the stream,
    and (a capture) what its publications publish. See :mod:`walrecover.rebuild.unseen`."""
    capture = isinstance(src, CaptureSource)
    if dsn is None:
        return capture_publications(None, dict(src.options), table, result.relation)
    wal, _ = _open_wal(dsn, capture=capture)
    try:
        with connect(dsn, autocommit=True, role="source") as conn:
            unproven, warnings = (
                capture_publications(conn, dict(src.options), table, result.relation)
                if capture
                else ([], [])
            )
            oid = result.relation.relation_id
            if oid is not None:
                unproven += replaced(
                    conn,
                    wal,
                    table,
                    into,
                    oid,
                    last_lsn=result.last_lsn,
                    stop=stop,
                    stopped_lsn=result.stopped_before[1] if result.stopped_before else None,
                    until=began,
                )
    finally:
        if wal is not None:
            wal.close()
    return unproven, warnings


def table_exists(conn: Any, table: TableName) -> bool:
    """True if ``table`` exists on ``conn``."""
    (oid,) = conn.execute(
        "SELECT to_regclass(%s)::oid", (sql.Identifier(table.schema, table.name).as_string(conn),)
    ).fetchone()
    return oid is not None


def _column_check(ledger: LedgerCheck | None, ddl: str | None) -> Callable[[Target], None] | None:
    """The check of --key/--amount against the table just created (before its first commit)."""
    if ledger is None:
        return None

    def check(target: Target) -> None:
        origin = "the --ddl" if ddl is not None else "the stream's definition"
        check_key_amount(
            table_column_types(target.conn, target.into),
            ledger.key,
            ledger.amount,
            f"{target.into} (created from {origin})",
        )

    return check


def _on_created(
    check: Callable[[Target], None] | None, base: Baseline | None
) -> Callable[[Target], None] | None:
    """What to do when replay has created the table: load the baseline, then check it."""
    if base is None:
        return check

    def created(target: Target) -> None:
        base.load(target)
        if check is not None:
            check(target)

    return created


def _audit_dict(audit: AuditSummary | None) -> dict[str, Any] | None:
    if audit is None:
        return None
    return {
        "path": audit.path,
        "rows": audit.rows,
        "manifest": audit.manifest,
        "chain_head": audit.chain_head,
        "outcomes": dict(audit.outcomes),
    }


def _audit_published(audit_at: str | Path | None, partitioned: bool, into: TableName) -> bool:
    """True if no audit is asked for, or the finished recovery's audit is in place (published,
    with its manifest, no work files); False if its publishing was cut short (the normal path
    finishes it). Raise :class:`TargetExists` if it is gone."""
    if audit_at is None:
        return True
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


def _source_position(dsn: str) -> Lsn | None:
    """The source's WAL insert position, or None if it cannot be read."""
    try:
        with connect(dsn, autocommit=True, role="source") as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    except (WalrecoverError, psycopg.Error):
        return None
    return Lsn.parse(row[0]) if row else None


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


def _check_capture_unchanged(previous: Progress, src: CaptureSource, into: TableName) -> None:
    """Refuse "already complete" for a capture that changed since the recovery finished (a
    capture cut short, then written on by pg_recvlogical): the recorded result is exact only
    for the file as it was."""
    try:
        stored = json.loads(previous.result or "{}")
    except ValueError:
        return
    then, now = stored.get("capture_bytes"), _size(src.path)
    if then is None or then == now:
        return
    raise TargetExists(
        f"{into} holds the finished recovery of {src.path} as it was when it held {then} bytes;"
        f" it holds {now} now (pg_recvlogical wrote on, or the file was replaced): {into} is"
        " exact for the file as it was. Pass --force to rebuild it from the file as it is now,"
        " or choose another --into",
        table=str(into),
        differs=["the capture file"],
    )


def _audit_from_manifest(path: str) -> AuditSummary | None:
    """The audit summary from the manifest of a published audit (None if unreadable)."""
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


def _already_complete(
    previous: Progress,
    target_conn: Any,
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
    stored: dict[str, Any] = {}
    if previous.result:
        with contextlib.suppress(ValueError):
            stored = json.loads(previous.result)
    audit = None
    if stored.get("audit"):
        info = stored["audit"]
        audit = AuditSummary(
            info["path"],
            int(info["rows"]),
            manifest=info.get("manifest"),
            chain_head=info.get("chain_head"),
            outcomes=dict(info.get("outcomes") or {}),
        )
    elif previous.audit:
        audit = _audit_from_manifest(previous.audit)
    rows = stored.get("rows")
    if rows is None:
        rows = Target(target_conn, into).count_rows()
    before = stored.get("stopped_before")
    stopped_before = (before[0], _stored_lsn(before[1])) if before else None
    checked = time.monotonic()
    reconciliation = None
    if ledger is not None:
        reconciliation = _reconcile_complete(
            target_conn,
            dsn,
            target_dsn,
            into,
            ledger,
            audit,
            f"{previous.transactions} transactions, {previous.changes} row changes, commit LSNs "
            f"{previous.first_lsn or '-'} .. {previous.last_commit_lsn or '-'}",
        )
    finished = time.monotonic()
    with contextlib.suppress(Exception):
        target_conn.close()
    return RecoveryResult(
        table=str(table),
        into=str(into),
        plugin=str(stored.get("plugin") or ""),
        slot=slot or "",
        transactions=previous.transactions,
        changes=previous.changes,
        rows=int(rows),
        no_row=previous.no_row,
        first_lsn=previous.first_lsn,
        last_lsn=previous.last_commit_lsn,
        stop=stop.describe(),
        stopped_before=stopped_before,
        resumed_from=None,
        seconds={"reconcile": finished - checked, "total": finished - started},
        reconciliation=reconciliation,
        audit=audit,
        unproven=tuple(stored.get("unproven") or ()),
        already_complete=True,
        baseline=stored.get("baseline"),
    )


def _reconcile_complete(
    target_conn: Any,
    dsn: str | None,
    target_dsn: str | None,
    into: TableName,
    ledger: LedgerCheck,
    audit: AuditSummary | None,
    done: str,
) -> Reconciliation:
    """Reconcile the finished table; when that fails, say the table and audit are complete
    and give the exact ``walrecover reconcile`` command to run it alone."""
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


def _with_tables(exc: TableNotInStream, dsn: str | None, src: SlotSource) -> TableNotInStream:
    """The same error, listing the tables the slot does carry (one more pass, no filter)."""
    seen: set[str] = set()
    with (
        contextlib.suppress(WalrecoverError, psycopg.Error),
        SlotSource(dsn, src.slot, options=src.user_options, via_plugin=src.via_plugin) as again,
    ):
        for event in again.events():
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
