"""One run of a recovery, phase by phase: preflight, the source's checks, audit setup, replay,
audit close, reconcile (:meth:`Recovery.run`).

Preflight takes the target's lock and answers a rerun of a finished recovery from its record
(:mod:`.complete`); the source's checks name a missing grant per object, refuse a target a
publication lists, compare encodings and check the stop point (:mod:`.stoppoint`); the replay
phase is :class:`.reading.Reading`. A database error no phase turned into one of walrecover's
becomes one here; the audit's work of a failed run is kept for the resume.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from .. import __version__
from ..db import connect, connection_lost, redact, safe_dsn
from ..errors import ConnectionFailed, PrivilegeError, WalrecoverError, first_line
from ..stream.lsn import Lsn
from ..stream.model import TableName
from ..stream.settings import apply as apply_settings
from ..stream.settings import restore as restore_settings
from ..stream.sources import CaptureSource, SlotSource
from ..stream.value_check import ServerRoundTrip, ValueChecker
from ..stream.walinspect import WalInspect
from .baseline import Baseline
from .command import table_exists
from .complete import already_complete, finished_recovery, reconcile_complete, record_result
from .preflight import (
    check_encoding,
    check_key_amount,
    check_ledger_query,
    check_target,
    table_column_types,
)
from .reading import Reading
from .recreation import RecreationJudge
from .replay import ReplayResult
from .result import Asked, AuditSummary, RecoveryResult, lsn_text
from .stoppoint import check_stop_range, open_wal, resolve_stop_xid
from .target import lock_target, refuse_listed

if TYPE_CHECKING:
    from ..audit.writer import AuditWriter
    from ..ledger.reconcile import Reconciliation


class Recovery:
    """One run of a recovery, phase by phase: preflight, audit setup, replay, audit close,
    reconcile. What a phase hands on to the next is kept here."""

    def __init__(
        self,
        ask: Asked,
        target_role: str,
        audit_path: str | Path | None,
        audit_dir: str | Path | None,
        batch_size: int,
        wal_dsn: str | None,
    ) -> None:
        self.ask, self.batch_size, self.wal_dsn = ask, batch_size, wal_dsn
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.audit_at = audit_dir if audit_dir is not None else audit_path
        self.partitioned = audit_dir is not None
        self.stop = ask.stop
        self.conn = connect(ask.target_dsn, role=target_role)
        self.exists = False
        self.checker: ValueChecker | None = None
        self.roundtrip: ServerRoundTrip | None = None
        self.wal: WalInspect | None = None
        self.judge: RecreationJudge | None = None
        self.audit: AuditWriter | None = None
        #: The older copy the table starts from (``--baseline``), once opened.
        self.base: Baseline | None = None
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.unproven: list[str] = []
        self.swept: tuple[str, ...] = ()
        src = ask.src
        # Where the source's WAL was before this run created anything (a capture's; a slot
        # copy's end serves for a slot): tables created from here on are the run's own.
        self.began = (
            _source_position(wal_dsn)
            if isinstance(src, CaptureSource) and src.plugin == "pgoutput" and wal_dsn
            else None
        )

    def run(self) -> RecoveryResult:
        """Every phase, in order; the result (or the recorded one of a finished recovery)."""
        ask = self.ask
        try:
            done = self.preflight()
            if done is not None:
                return done
            with ask.src:
                self.check_source()
                self.open_audit()
                result = self.replay()
            self.settings_verdict()
            replayed = time.monotonic()
            if self.base is not None and self.base.gap is not None:
                self.unproven.append(self.base.gap)
            # Recorded before the audit's close too: a run killed during it leaves what the
            # checks after replay found for the rerun's "already complete" answer.
            self.record(result, None)
            audit = self.close_audit(result)
            reconciliation = self.reconcile(result, audit)
            finished = time.monotonic()
        except psycopg.Error as exc:
            raise _database_error(exc, ask.into, ask.target_dsn) from None
        finally:
            self.close()
        seconds = {
            "replay": replayed - self.started,
            "reconcile": finished - replayed,
            "total": finished - self.started,
        }
        return self.result(result, audit, reconciliation, seconds)

    # -- preflight ---------------------------------------------------------------------------

    def preflight(self) -> RecoveryResult | None:
        """Check what can be checked before the source is opened: the target's lock, a finished
        recovery by the same command (its result is the answer), the ledger, the settings."""
        ask, conn, into = self.ask, self.conn, self.ask.into
        src = ask.src
        lock_target(conn, into)  # before any work: a second writer is refused at once
        self.exists = table_exists(conn, into)
        if self.audit_at is not None:
            # Imported here: the audit's modules load pyarrow, which a bare recovery never needs.
            from ..audit.workspace import finish_published_cleanup  # noqa: PLC0415

            finish_published_cleanup(self.audit_at)
        previous = finished_recovery(
            conn,
            into,
            ask.command,
            exists=self.exists,
            force=ask.force,
            capture=src.path if isinstance(src, CaptureSource) else None,
            audit_at=self.audit_at,
            partitioned=self.partitioned,
        )
        if previous is not None:
            return already_complete(
                previous,
                conn,
                ask.dsn,
                ask.target_dsn,
                ask.table,
                into,
                slot=ask.slot,
                stop=ask.stop,
                ledger=ask.ledger,
                started=self.started,
            )
        ledger = ask.ledger
        if ledger is not None:
            with connect(ask.dsn, role="ledger") as ledger_conn:
                check_ledger_query(ledger_conn, ledger.query)
            if self.exists and not ask.force:
                columns = table_column_types(conn, into)
                conn.commit()
                check_key_amount(columns, ledger.key, ledger.amount, str(into))
        if isinstance(src, CaptureSource):
            # The target parses the capture's text (COPY, statements) as it was printed.
            apply_settings(conn, src.settings)
            if src.settings.date_output != "ISO":
                self.roundtrip = ServerRoundTrip(ask.target_dsn, src.settings)
            self.checker = ValueChecker(src.settings, src.plugin, (ask.table,), self.roundtrip)
        if ask.baseline is not None:
            self.base = Baseline(ask.baseline, ask.table)
            if isinstance(src, SlotSource) and self.base.point is not None:
                src.split_lsns = (self.base.point,)  # pages on one side of it: see LossWatch
        return None

    def check_source(self) -> None:
        """With the source open, before any row: the grants the build needs (named per object),
        the publications (a table a publication names cannot be kept from it), the encodings,
        the stop point; and the judge of re-created tables."""
        ask, conn, src = self.ask, self.conn, self.ask.src
        facts = check_target(conn, ask.into, force=ask.force, exists=self.exists)
        refuse_listed(conn, ask.into)
        conn.commit()
        check_encoding(
            facts.encoding,
            src.server_encoding if isinstance(src, SlotSource) else None,
            facts.database,
        )
        check_stop_range(ask.stop, src)
        wal, wal_problem = (
            open_wal(self.wal_dsn, capture=isinstance(src, CaptureSource))
            if src.plugin != "pgoutput" or ask.stop.xid is not None
            else (None, "")
        )
        self.wal = wal
        self.stop = resolve_stop_xid(ask.stop, src, wal, self.notes)
        if src.plugin != "pgoutput":  # pgoutput has relation ids: replay compares them
            self.judge = RecreationJudge(
                ask.table,
                ask.into,
                wal=wal,
                wal_problem=wal_problem,
                start=src.start_lsn,
                end=src.end_lsn,
                format1=src.plugin == "wal2json"
                and dict(src.options).get("format-version", "2") == "1",
            )
            self.wal = None  # the judge owns it now

    # -- audit setup -------------------------------------------------------------------------

    def open_audit(self) -> None:
        """Make the audit's writer (it checks its files before replay touches the target)."""
        if self.audit_at is None:
            return
        from ..audit.writer import AuditWriter  # noqa: PLC0415 - pyarrow only with --audit

        ask, src = self.ask, self.ask.src
        self.audit = AuditWriter(
            self.audit_at,
            {
                "tool": f"walrecover {__version__}",
                "source": src.describe() if ask.slot is None else safe_dsn(ask.dsn),
                "target": safe_dsn(ask.target_dsn),
                "slot": ask.slot,
                "plugin": src.plugin,
                "table": str(ask.table),
                "into": str(ask.into),
                "stop": self.stop.describe(),
                "stream_start_lsn": lsn_text(src.start_lsn),
                "stream_end_lsn": lsn_text(src.end_lsn),
                "started_at": self.started_at.isoformat(),
                **(
                    {"capture_settings": src.settings.to_dict()}
                    if isinstance(src, CaptureSource)
                    else {}
                ),
            },
            partitioned=self.partitioned,
            force=ask.force,
            protect=(src.path,) if isinstance(src, CaptureSource) else (),
        )

    # -- replay ------------------------------------------------------------------------------

    def replay(self) -> ReplayResult:
        """Decode the source's events and replay them (:class:`.reading.Reading`)."""
        reading = Reading(
            self.ask,
            self.conn,
            stop=self.stop,
            checker=self.checker,
            judge=self.judge,
            audit=self.audit,
            audit_at=self.audit_at,
            batch_size=self.batch_size,
            wal_dsn=self.wal_dsn,
            began=self.began,
            base=self.base,
        )
        result = reading.run()
        self.warnings += reading.warnings
        self.unproven += reading.unproven
        self.swept = reading.swept
        return result

    def settings_verdict(self) -> None:
        """What the capture's values said about its stated settings."""
        if self.checker is None:
            return
        restore_settings(self.conn)
        checked, doubts = self.checker.notes(self.ask.table, audit=self.audit_at is not None)
        self.warnings.extend(checked)
        self.unproven.extend(doubts)

    # -- audit close, reconcile ----------------------------------------------------------------

    def close_audit(self, result: ReplayResult) -> AuditSummary | None:
        """Publish the audit: final outcomes, typed columns, hash chain, manifest."""
        audit = self.audit
        if audit is None:
            return None
        rows = audit.close(
            {
                "finished_at": datetime.now(UTC).isoformat(),
                "transactions": result.transactions,
                "changes": result.changes,
                "first_lsn": lsn_text(result.first_lsn),
                "last_lsn": lsn_text(result.last_lsn),
                "stopped_before_lsn": lsn_text(result.stopped_before[1])
                if result.stopped_before
                else None,
                **({"baseline": self.base.summary()} if self.base is not None else {}),
            }
        )
        self.audit = None
        return AuditSummary(
            str(audit.path),
            rows,
            manifest=str(audit.manifest),
            chain_head=audit.chain_head,
            outcomes=dict(audit.outcome_counts),
        )

    def record(self, result: ReplayResult, audit: AuditSummary | None) -> None:
        """Keep the finished recovery's result with its progress row, for a rerun's answer."""
        ask, src, base = self.ask, self.ask.src, self.base
        record_result(
            self.conn,
            ask.into,
            result,
            plugin=src.plugin,
            slot=ask.slot,
            audit=audit,
            unproven=tuple(dict.fromkeys((*self.unproven, *result.unproven))),
            capture=src.path if isinstance(src, CaptureSource) else None,
            baseline=base.summary() if base is not None else None,
        )

    def reconcile(self, result: ReplayResult, audit: AuditSummary | None) -> Reconciliation | None:
        """Record the finished recovery's result with its audit (for a rerun; without one, the
        record made before the audit's close stands), then reconcile, if asked."""
        ask = self.ask
        if audit is not None:
            self.record(result, audit)
        if ask.ledger is None:
            return None
        return reconcile_complete(
            self.conn, ask.dsn, ask.target_dsn, ask.into, ask.ledger, audit, result.counts
        )

    def result(
        self,
        result: ReplayResult,
        audit: AuditSummary | None,
        reconciliation: Reconciliation | None,
        seconds: dict[str, float],
    ) -> RecoveryResult:
        ask, src = self.ask, self.ask.src
        return RecoveryResult(
            table=str(ask.table),
            into=result.into,
            plugin=src.plugin,
            slot=ask.slot or "",
            counts=result.counts,
            rows=result.rows,
            stop=self.stop.describe(),
            stopped_before=result.stopped_before,
            resumed_from=result.resumed_from,
            seconds=seconds,
            reconciliation=reconciliation,
            audit=audit,
            swept_slots=self.swept,
            warnings=(
                *self.warnings,
                *self.notes,
                *(f"followed an ALTER TABLE {change}" for change in result.schema_changes),
                *result.warnings,
            ),
            unproven=tuple(dict.fromkeys((*self.unproven, *result.unproven))),
            capture=str(src.path) if isinstance(src, CaptureSource) else None,
            lsn_kind="end" if src.plugin == "test_decoding" else "commit",
            baseline=self.base.summary() if self.base is not None else None,
        )

    def close(self) -> None:
        """Release what the run holds, keeping an unpublished audit's work for a resume."""
        if self.audit is not None:
            kept = self.audit.abort()
            # sys.exception() is the error on its way out of run() (close runs in its finally
            # while it propagates): say where the audit's work went.
            failure = sys.exception()
            if kept is not None and isinstance(failure, WalrecoverError):
                failure.extend(
                    f"; the audit written so far is kept in {kept} (a resumed run continues it,"
                    " --force discards it)"
                )
        for held in (self.roundtrip, self.judge, self.wal, self.base):
            if held is not None:
                held.close()
        with contextlib.suppress(Exception):
            self.conn.close()


def _database_error(exc: psycopg.Error, into: TableName, target_dsn: str | None) -> WalrecoverError:
    """The error for a database error no phase turned into one of walrecover's."""
    reason = redact(first_line(exc), target_dsn)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return PrivilegeError(
            f"the recovery into {into} was refused: {reason}; "
            "grant the role that privilege (or use another role)",
            table=str(into),
        )
    if connection_lost(exc):
        return ConnectionFailed(
            f"lost a database connection during the recovery into {into} "
            f"({reason}): what was committed is kept; rerun "
            "the same command to resume",
            table=str(into),
        )
    return WalrecoverError(f"the recovery into {into} failed: {reason}", table=str(into))


def _source_position(dsn: str) -> Lsn | None:
    """The source's WAL insert position, or None if it cannot be read."""
    try:
        with connect(dsn, autocommit=True, role="source") as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    except (WalrecoverError, psycopg.Error):
        return None
    return Lsn.parse(row[0]) if row else None
