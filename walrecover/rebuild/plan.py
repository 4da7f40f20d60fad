"""``walrecover check`` and ``recover --dry-run``: every check a recovery makes, and its plan.

:func:`plan_recovery` (a slot) and :func:`plan_capture` (a capture file) take the same options
as :func:`walrecover.rebuild.recover.recover` and run the checks of
:mod:`walrecover.rebuild.preflight` and of the sources (slot, plugin, stop point, audit paths)
without creating anything: no table, no schema, no progress row, no audit file. The slot is read
only through a copy, dropped at the end, and only a small sample of it, to estimate how many changes
the recovery will apply and how long it will take. The result is a :class:`Plan`; the CLI only
formats it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..audit.writer import AuditWriter
from ..db import Connection, connect, redact, safe_dsn
from ..errors import BaselineError, StopPointError, SwapError, WalrecoverError, first_line
from ..stream.decoders import decode_all, make_decoder
from ..stream.lsn import Lsn
from ..stream.model import NO_STOP, Change, RawMessage, Relation, StopPoint, TableName
from ..stream.settings import CaptureSettings
from ..stream.sources import CaptureSource, SlotSource
from .baseline import Baseline, BaselineOptions
from .command import (
    audit_identity,
    capture_command,
    capture_settings_of,
    default_into,
    slot_command,
    table_exists,
)
from .preflight import (
    ColumnTypes,
    TargetFacts,
    check_encoding,
    check_into,
    check_key_amount,
    check_ledger_query,
    check_target,
    command_differences,
    named_column_types,
    table_column_types,
)
from .result import LedgerCheck
from .stoppoint import check_stop_range
from .swap import parse_ddl
from .target import PROGRESS_SCHEMA, PROGRESS_TABLE, read_progress, refuse_listed

#: Messages read from the start of the stream to estimate the work (one page of a slot copy).
SAMPLE_MESSAGES = 5_000
#: The apply rate the estimate assumes (row changes per second into the target).
APPLY_RATE = 20_000


@dataclass(frozen=True)
class Check:
    """One check: its name, whether it passed, and what it found (or what is wrong)."""

    name: str
    ok: bool
    detail: str


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


class _Planner:
    """Runs the checks in the order a recovery meets them, recording each."""

    def __init__(
        self,
        src: SlotSource | CaptureSource,
        dsn: str | None,
        target: str | None,
        table: TableName,
        into: TableName | None,
        stop: StopPoint,
        ddl: str | None,
        force: bool,
    ) -> None:
        self.src = src
        self.dsn = dsn
        self.target = target
        self.table = table
        self.into = into or default_into(table)
        self.stop = stop
        self.ddl = ddl
        self.force = force
        self.checks: list[Check] = []
        self.creates: list[str] = []
        self.publications: list[str] = []
        self.state = "unknown (the target database could not be checked)"
        self.facts: TargetFacts | None = None
        self.exists = False
        #: The target connection (rolled back after each check: the plan changes nothing).
        self.conn: Connection | None = None
        #: The baseline the table would start from (``--baseline``, ``--from-protect``).
        self.baseline: BaselineOptions | None = None
        self.warnings: list[str] = []

    def attempt(self, name: str, check: Callable[[], str]) -> bool:
        """Run one check; record what it found or the one-line error it raised."""
        try:
            detail = check()
        except WalrecoverError as exc:
            message = redact(redact(exc.message, self.dsn), self.target)
            self.checks.append(Check(name, False, message))
            return False
        except psycopg.Error as exc:
            message = redact(redact(first_line(exc), self.dsn), self.target)
            self.checks.append(Check(name, False, message))
            return False
        finally:
            if self.conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self.conn.rollback()
        self.checks.append(Check(name, True, detail))
        return True

    def run(
        self,
        command: str,
        ledger: LedgerCheck | None,
        audit_path: str | Path | None,
        audit_dir: str | Path | None,
        sample: int,
    ) -> Plan:
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
                self._target_checks(conn, command)
                if ledger is not None and self.exists and not self.force:
                    columns = table_column_types(conn, into)
                    conn.commit()
            finally:
                with contextlib.suppress(Exception):
                    if columns is None and ledger is not None and self.ddl is not None:
                        columns = self._ddl_columns(conn)
        if ledger is not None:
            query = ledger.query

            def ledger_check() -> str:
                with connect(self.dsn, role="ledger") as ledger_conn:
                    shape = check_ledger_query(ledger_conn, query)
                return f"runs and returns ({shape})"

            self.attempt("ledger query", ledger_check)
        estimate = _Estimate()
        relation: Relation | None = None
        with contextlib.ExitStack() as stack:
            opened = self.attempt("source", lambda: self._open(stack))
            if opened and self.facts is not None:
                facts = self.facts
                encoding = self.src.server_encoding if isinstance(self.src, SlotSource) else None
                self.attempt(
                    "encoding",
                    lambda: check_encoding(facts.encoding, encoding, facts.database),
                )
            if opened:
                self.attempt("stop point", self._stop)
            if self.baseline is not None:
                self.attempt("baseline", lambda: self._baseline(opened))
            if opened:
                self.attempt("sample", lambda: estimate.read(self.src, table, self.stop, sample))
                relation = estimate.relation
            if ledger is not None:
                self._key_amount(ledger, conn, columns, relation)
            audit_at = audit_dir if audit_dir is not None else audit_path
            if audit_at is not None:
                self.attempt("audit", lambda: self._audit(audit_at, audit_dir is not None, opened))
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        src = self.src
        return Plan(
            table=str(table),
            into=str(into),
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

    # -- the target --------------------------------------------------------------------------

    def _target_checks(self, conn: Connection, command: str) -> None:
        into = self.into

        def privileges() -> str:
            self.exists = table_exists(conn, into)
            self.facts = check_target(conn, into, force=self.force, exists=self.exists)
            conn.commit()
            self.creates.extend(self.facts.creates)
            return (
                f"role {self.facts.role!r} may create {into} and keep walrecover's progress in "
                f"database {self.facts.database!r}"
            )

        if not self.attempt("target privileges", privileges):
            return

        def publications() -> str:
            found = refuse_listed(conn, into)
            conn.commit()
            self.publications = [str(p) for p in found]
            if not found:
                return f"no publication would publish {into} or {PROGRESS_SCHEMA}.{PROGRESS_TABLE}"
            return (
                f"{', '.join(self.publications)} would publish them: walrecover builds both "
                "UNLOGGED (never published) and makes the finished table logged in its last "
                "commit"
            )

        self.attempt("publications", publications)

        def state() -> str:
            unlogged = "UNLOGGED " if self.publications else ""
            if not self.exists:
                self.state = "new"
                self.creates.insert(0, f"{unlogged}table {into}")
                return f"{into} does not exist: the run creates it"
            if self.force:
                self.state = "rebuild (--force)"
                self.creates.insert(0, f"{unlogged}table {into} (the existing one is dropped)")
                return f"{into} exists: --force drops and rebuilds it"
            previous = read_progress(conn, into)
            conn.commit()
            if previous is None:
                self.state = "exists"
                raise WalrecoverError(
                    f"target table {into} already exists: choose another --into, or pass "
                    "--force to drop and rebuild it"
                )
            differs = command_differences(previous.command, command)
            if differs:
                self.state = "made by another command"
                kind = "a complete" if previous.complete else "an unfinished"
                raise WalrecoverError(
                    f"{into} holds {kind} recovery made by another command: "
                    f"{'; '.join(differs)}: rerun that command, choose another --into, or pass "
                    "--force to rebuild"
                )
            if previous.complete:
                self.state = "already complete"
                return (
                    f"{into} holds the complete recovery of this command (commit LSNs "
                    f"{previous.first_lsn or '-'} .. {previous.last_commit_lsn or '-'}): the run "
                    "prints its result (and reconciles, if asked) without reading the source"
                )
            self.state = "resume"
            return (
                f"{into} holds an unfinished recovery of this command: the run resumes it after "
                f"commit LSN {previous.last_commit_lsn or '-'} ({previous.transactions} "
                "transactions done)"
            )

        self.attempt("target table", state)

    def _ddl_columns(self, conn: Connection) -> ColumnTypes | None:
        assert self.ddl is not None
        try:
            definition = parse_ddl(self.ddl, self.into)
        except SwapError:
            return None
        named = {c.name: c.type_sql for c in definition.columns}
        columns = named_column_types(conn, named)
        conn.commit()
        return columns

    # -- the source ----------------------------------------------------------------------------

    def _open(self, stack: contextlib.ExitStack) -> str:
        stack.enter_context(self.src)
        src = self.src
        if isinstance(src, SlotSource):
            return (
                f"slot {src.slot} read through a copy with {src.plugin}, from LSN "
                f"{src.start_lsn} to {src.end_lsn}; the slot itself is not moved"
            )
        return f"capture {src.path} ({src.plugin}), {src.path.stat().st_size} bytes"

    def _stop(self) -> str:
        src = self.src
        check_stop_range(self.stop, src)
        if self.stop.xid is not None and isinstance(src, SlotSource):
            status = src.xid_status(self.stop.xid)
            if status in ("aborted", "in progress"):
                raise StopPointError(
                    f"transaction {self.stop.xid} is {status} on the source, so it never "
                    "commits in the stream: check --stop-before-xid",
                    xid=self.stop.xid,
                )
        return self.stop.describe()

    def _baseline(self, opened: bool) -> str:
        """The baseline opens (file readable, its LSN consistent with --baseline-lsn) and the
        stream covers it (or --accept-gap), as the run checks them before it creates anything."""
        assert self.baseline is not None
        base = Baseline(self.baseline, self.table)
        try:
            src = self.src
            start = src.start_lsn if isinstance(src, SlotSource) and opened else None
            if isinstance(src, SlotSource) and not opened:
                raise BaselineError("the slot could not be read, so its coverage is unknown")
            base.check_start(start, self.stop)
            rows = base.rows
            what = (
                f"{rows.source} ({rows.kind}, {len(rows.columns)} columns) at "
                f"{base.describe_point()}, replayed "
                + ("idempotently (needs a primary key)" if base.idempotent else "after its point")
            )
            if base.gap is not None:
                self.warnings.append(base.gap)
                return f"{what}; NOT proven covered: {base.gap}"
            if start is None:
                return f"{what}; the capture's first transaction shows its coverage in the run"
            return f"{what}; the slot's copy starts at LSN {start}, which covers it"
        finally:
            base.close()

    def _key_amount(
        self,
        ledger: LedgerCheck,
        conn: Connection | None,
        columns: ColumnTypes | None,
        relation: Relation | None,
    ) -> None:
        where = str(self.into)
        if columns is None and relation is not None and relation.complete and conn is not None:
            with contextlib.suppress(psycopg.Error):
                columns = named_column_types(conn, {c.name: c.type_name for c in relation.columns})
                conn.commit()
                where = f"{self.table} (its first change in the stream)"
        elif columns is not None and self.ddl is not None and not self.exists:
            where = f"{self.into} (the --ddl)"
        if columns is None:
            self.checks.append(
                Check(
                    "--key/--amount",
                    True,
                    f"{self.table} has no change in the sample: --key and --amount are checked "
                    "when the run creates the table, before its first rows commit",
                )
            )
            return
        found = columns
        self.attempt(
            "--key/--amount", lambda: check_key_amount(found, ledger.key, ledger.amount, where)
        )

    def _audit(self, audit_at: str | Path, partitioned: bool, opened: bool) -> str:
        src = self.src
        writer = AuditWriter(
            audit_at,
            {"target": safe_dsn(self.target), "into": str(self.into)},
            partitioned=partitioned,
            force=self.force,
            protect=(src.path,) if isinstance(src, CaptureSource) else (),
        )
        made = [str(writer.path), str(writer.manifest), f"{writer.parts}/ (work files)"]
        if self.state != "already complete":
            self.creates.extend(f"audit {name}" for name in made)
        return f"{writer.path} can be written"


class _Estimate:
    """Changes of the table in a sample at the stream's start, extrapolated to the stream."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.changes: int | None = None
        self.seconds: float | None = None
        self.basis = "no estimate (the source could not be read)"
        self.relation: Relation | None = None

    def read(
        self, src: SlotSource | CaptureSource, table: TableName, stop: StopPoint, sample: int
    ) -> str:
        if isinstance(src, SlotSource):
            start = int(src.start_lsn or 0)
            end = int(src.end_lsn or 0)
            if stop.lsn is not None and int(stop.lsn) < end:
                end = int(stop.lsn)
            self.total = max(end - start, 0)
        else:
            start = 0
            self.total = src.path.stat().st_size
        read = 0
        count = 0
        last = start

        def messages() -> Any:
            nonlocal read, last
            for message in src.messages():
                read += 1
                if isinstance(src, SlotSource) and message.lsn is not None:
                    last = int(message.lsn)
                elif isinstance(src, CaptureSource):
                    last += len(_raw(message)) + 1
                yield message
                if read >= sample:
                    return

        began = time.monotonic()
        decoder = make_decoder(src.plugin, dict(src.options))
        events = decode_all(decoder, messages())
        try:
            for event in events:
                if isinstance(event, Change) and event.relation.same_table(
                    table.schema, table.name
                ):
                    count += 1
                    if self.relation is None:
                        self.relation = event.relation
        finally:
            with contextlib.suppress(Exception):
                events.close()  # type: ignore[attr-defined]
        spent = time.monotonic() - began
        covered = max(last - start, 0)
        whole = read < sample
        if whole or covered >= self.total:
            self.changes = count
            self.seconds = spent + count / APPLY_RATE
            self.basis = (
                f"the whole stream was read ({read} messages): {count} changes of {table}; "
                f"the time is an estimate (applying at about {APPLY_RATE} changes/s)"
            )
        else:
            scale = self.total / covered if covered else 0.0
            self.changes = round(count * scale)
            self.seconds = spent * scale + self.changes / APPLY_RATE
            self.basis = (
                f"estimate: extrapolated from a sample of the first {read} messages ({covered} of "
                f"{self.total} bytes, {count} changes of {table}, read in {spent:.1f}s), "
                f"applying at about {APPLY_RATE} changes/s"
            )
        return self.basis


def _raw(message: RawMessage) -> bytes:
    data = message.data
    return data.encode() if isinstance(data, str) else bytes(data)
