"""The checks of ``walrecover check`` and ``recover --dry-run``, each recorded as a :class:`Check`.

:class:`PlanChecks` holds what the checks found so far (the target's state, what the run would
create, the publications, warnings) and runs each check through :meth:`PlanChecks.attempt`, which
records what it found or the one-line error it raised and rolls the target back (a plan changes
nothing). The target's checks (privileges, publications, the state of ``into``) and the source's
(opening it, the stop point, the baseline, ``--key``/``--amount``, the audit paths) are methods
here; :mod:`walrecover.rebuild.plan` runs them in the order a recovery meets them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ..audit.writer import AuditWriter
from ..db import Connection, redact, safe_dsn
from ..errors import BaselineError, StopPointError, SwapError, WalrecoverError, first_line
from ..stream.model import Relation, StopPoint, TableName
from ..stream.sources import CaptureSource, SlotSource
from .baseline import Baseline, BaselineOptions
from .command import default_into, table_exists
from .preflight import (
    ColumnTypes,
    TargetFacts,
    check_key_amount,
    check_target,
    command_differences,
    named_column_types,
)
from .result import LedgerCheck
from .stoppoint import check_stop_range
from .swap import parse_ddl
from .target import PROGRESS_SCHEMA, PROGRESS_TABLE, read_progress, refuse_listed


@dataclass(frozen=True)
class Check:
    """One check: its name, whether it passed, and what it found (or what is wrong)."""

    name: str
    ok: bool
    detail: str


class PlanChecks:
    """The checks of a plan and what they found; each check is recorded by :meth:`attempt`."""

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

    # -- the target --------------------------------------------------------------------------

    def target_checks(self, conn: Connection, command: str) -> None:
        """Privileges, publications, and what the run does with ``into`` (create, resume, ...)."""
        if not self.attempt("target privileges", lambda: self._privileges(conn)):
            return
        self.attempt("publications", lambda: self._publications(conn))
        self.attempt("target table", lambda: self._target_state(conn, command))

    def _privileges(self, conn: Connection) -> str:
        into = self.into
        self.exists = table_exists(conn, into)
        self.facts = check_target(conn, into, force=self.force, exists=self.exists)
        conn.commit()
        self.creates.extend(self.facts.creates)
        return (
            f"role {self.facts.role!r} may create {into} and keep walrecover's progress in "
            f"database {self.facts.database!r}"
        )

    def _publications(self, conn: Connection) -> str:
        into = self.into
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

    def _target_state(self, conn: Connection, command: str) -> str:
        into = self.into
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

    def ddl_columns(self, conn: Connection) -> ColumnTypes | None:
        """The column types the ``--ddl`` declares (None if it does not parse)."""
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

    def open(self, stack: contextlib.ExitStack) -> str:
        """Open the source (closed by ``stack``): the slot's copy, or the capture file."""
        stack.enter_context(self.src)
        src = self.src
        if isinstance(src, SlotSource):
            return (
                f"slot {src.slot} read through a copy with {src.plugin}, from LSN "
                f"{src.start_lsn} to {src.end_lsn}; the slot itself is not moved"
            )
        return f"capture {src.path} ({src.plugin}), {src.path.stat().st_size} bytes"

    def stop_point(self) -> str:
        """The stop point lies in the stream, and a stop xid can commit in it."""
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

    def baseline_check(self, opened: bool) -> str:
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

    def key_amount(
        self,
        ledger: LedgerCheck,
        conn: Connection | None,
        columns: ColumnTypes | None,
        relation: Relation | None,
    ) -> None:
        """``--key`` and ``--amount`` name columns of the table that fit a ledger."""
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

    def audit(self, audit_at: str | Path, partitioned: bool, opened: bool) -> str:
        """The audit file and its manifest can be written (what the run would create)."""
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
