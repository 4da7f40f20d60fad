"""``walrecover check`` and ``recover --dry-run``: every check a recovery makes, and its plan.

:func:`plan_recovery` (a slot) and :func:`plan_capture` (a capture file) take the same options
as :func:`walrecover.rebuild.recover.recover` and run the checks of
:mod:`walrecover.rebuild.preflight` and of the sources (slot, plugin, stop point, audit paths)
without creating anything: no table, no schema, no progress row, no audit file. The slot is read
only through a copy, dropped at the end, and only a small sample of it, to estimate how many changes
the recovery will apply and how long it will take. The result is a :class:`Plan`; the CLI only
formats it.

The checks themselves are in :mod:`walrecover.rebuild.plan_checks`, the estimate of the work
in :mod:`walrecover.rebuild.plan_estimate`; this module runs them in order and builds the plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..db import Connection, connect, safe_dsn
from ..stream.lsn import Lsn
from ..stream.model import NO_STOP, StopPoint, TableName
from ..stream.settings import CaptureSettings
from ..stream.sources import CaptureSource, SlotSource
from .baseline import BaselineOptions
from .command import (
    audit_identity,
    capture_command,
    capture_settings_of,
    slot_command,
)
from .plan_checks import Check, PlanChecks
from .plan_estimate import APPLY_RATE, SAMPLE_MESSAGES, Estimate
from .preflight import (
    ColumnTypes,
    check_encoding,
    check_into,
    check_ledger_query,
    table_column_types,
)
from .result import LedgerCheck

__all__ = ["APPLY_RATE", "SAMPLE_MESSAGES", "Check", "Plan", "plan_capture", "plan_recovery"]


@dataclass(frozen=True)
class Plan:
    """What ``walrecover recover`` would do with these options, and whether it can.

    Estimates come from a sample at the stream's start and are labelled so: the real count
    depends on how the changes are spread over the WAL.
    """

    table: str
    into: str
    #: The target database (no password).
    target: str
    #: The slot (``slot cdc on ...``) or capture file read.
    source: str
    slot: str | None
    capture: str | None
    plugin: str | None
    stop: str
    #: The stream's LSN range (None for a capture without LSNs) and the bytes to read.
    start_lsn: Lsn | None
    end_lsn: Lsn | None
    bytes_to_read: int | None
    estimated_changes: int | None
    estimated_seconds: float | None
    #: How the estimate was made.
    estimate: str
    #: What the run does with ``into``: create it, resume it, answer "already complete", ...
    target_state: str
    #: What the run would create (tables, schema, audit files).
    creates: tuple[str, ...]
    #: Publications that would publish what it builds (it is then built unlogged).
    publications: tuple[str, ...]
    checks: tuple[Check, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every check passed: the recovery can start."""
        return all(check.ok for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.ok)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "table": self.table,
            "into": self.into,
            "target": self.target,
            "source": self.source,
            "slot": self.slot,
            "capture": self.capture,
            "plugin": self.plugin,
            "stop": self.stop,
            "start_lsn": None if self.start_lsn is None else str(self.start_lsn),
            "end_lsn": None if self.end_lsn is None else str(self.end_lsn),
            "bytes_to_read": self.bytes_to_read,
            "estimated_changes": self.estimated_changes,
            "estimated_seconds": None
            if self.estimated_seconds is None
            else round(self.estimated_seconds, 1),
            "estimate": self.estimate,
            "target_state": self.target_state,
            "creates": list(self.creates),
            "publications": list(self.publications),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "warnings": list(self.warnings),
        }


def plan_recovery(
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
    audit_dir: str | Path | None = None,
    options: Mapping[str, str] | None = None,
    via_plugin: str | None = None,
    sample: int = SAMPLE_MESSAGES,
    baseline: BaselineOptions | None = None,
) -> Plan:
    """Check a recovery from ``slot`` as :func:`walrecover.rebuild.recover.recover` would run it."""
    source = SlotSource(
        dsn,
        slot,
        tables=[table],
        options=options,
        via_plugin=via_plugin,
        page_size=sample,
        stop_lsn=stop.lsn,
    )
    command = slot_command(
        dsn, slot, table, via_plugin, options, stop, ddl, audit_identity(audit_path, audit_dir),
        baseline,
    )  # fmt: skip
    planner = _Planner(
        source, dsn, target if target is not None else dsn, table, into, stop, ddl, force
    )
    planner.baseline = baseline
    return planner.run(command, ledger, audit_path, audit_dir, sample)


def plan_capture(
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
    audit_dir: str | Path | None = None,
    capture_settings: CaptureSettings | Mapping[str, str] | None = None,
    sample: int = SAMPLE_MESSAGES,
    baseline: BaselineOptions | None = None,
) -> Plan:
    """Check a recovery from a capture file as
    :func:`walrecover.rebuild.recover.recover_capture`."""
    source = CaptureSource(
        path, plugin, options=options, settings=capture_settings_of(capture_settings)
    )
    command = capture_command(
        source, table, stop, ddl, audit_identity(audit_path, audit_dir), baseline
    )
    planner = _Planner(source, target, target, table, into, stop, ddl, force)
    planner.baseline = baseline
    return planner.run(command, ledger, audit_path, audit_dir, sample)


class _Planner(PlanChecks):
    """Runs the checks in the order a recovery meets them, recording each."""

    def run(
        self,
        command: str,
        ledger: LedgerCheck | None,
        audit_path: str | Path | None,
        audit_dir: str | Path | None,
        sample: int,
    ) -> Plan:
        columns = self._check_target(command, ledger)
        if ledger is not None:
            self._check_ledger(ledger)
        estimate = Estimate()
        with contextlib.ExitStack() as stack:
            opened = self.attempt("source", lambda: self.open(stack))
            self._check_stream(opened, estimate, sample)
            if ledger is not None:
                self.key_amount(ledger, self.conn, columns, estimate.relation)
            audit_at = audit_dir if audit_dir is not None else audit_path
            if audit_at is not None:
                partitioned = audit_dir is not None
                self.attempt("audit", lambda: self.audit(audit_at, partitioned, opened))
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        return self._plan(estimate)

    def _check_target(self, command: str, ledger: LedgerCheck | None) -> ColumnTypes | None:
        """Connect to the target and run its checks; the table's column types for the ledger."""
        into, table = self.into, self.table
        conn: Connection | None = None

        def open_target() -> str:
            nonlocal conn
            check_into(into, table, self.target, self.dsn)
            conn = self.conn = connect(self.target, role="target")
            return f"connected to {safe_dsn(self.target)}"

        columns: ColumnTypes | None = None
        if self.attempt("target database", open_target):
            assert conn is not None
            try:
                self.target_checks(conn, command)
                if ledger is not None and self.exists and not self.force:
                    columns = table_column_types(conn, into)
                    conn.commit()
            finally:
                with contextlib.suppress(Exception):
                    if columns is None and ledger is not None and self.ddl is not None:
                        columns = self.ddl_columns(conn)
        return columns

    def _check_ledger(self, ledger: LedgerCheck) -> None:
        query = ledger.query

        def ledger_check() -> str:
            with connect(self.dsn, role="ledger") as ledger_conn:
                shape = check_ledger_query(ledger_conn, query)
            return f"runs and returns ({shape})"

        self.attempt("ledger query", ledger_check)

    def _check_stream(self, opened: bool, estimate: Estimate, sample: int) -> None:
        """Encoding, stop point, baseline, and the sample the estimate reads."""
        if opened and self.facts is not None:
            facts = self.facts
            encoding = self.src.server_encoding if isinstance(self.src, SlotSource) else None
            self.attempt(
                "encoding",
                lambda: check_encoding(facts.encoding, encoding, facts.database),
            )
        if opened:
            self.attempt("stop point", self.stop_point)
        if self.baseline is not None:
            self.attempt("baseline", lambda: self.baseline_check(opened))
        if opened:
            self.attempt("sample", lambda: estimate.read(self.src, self.table, self.stop, sample))

    def _plan(self, estimate: Estimate) -> Plan:
        src = self.src
        return Plan(
            table=str(self.table),
            into=str(self.into),
            target=safe_dsn(self.target),
            source=src.describe(),
            slot=src.slot if isinstance(src, SlotSource) else None,
            capture=str(src.path) if isinstance(src, CaptureSource) else None,
            plugin=src.plugin if isinstance(src, CaptureSource) or src.info else None,
            stop=self.stop.describe(),
            start_lsn=src.start_lsn,
            end_lsn=src.end_lsn,
            bytes_to_read=estimate.total,
            estimated_changes=estimate.changes,
            estimated_seconds=estimate.seconds,
            estimate=estimate.basis,
            target_state=self.state,
            creates=tuple(self.creates),
            publications=tuple(self.publications),
            checks=tuple(self.checks),
            warnings=(
                *(src.warnings if isinstance(src, SlotSource) else ()),
                *self.warnings,
            ),
        )
