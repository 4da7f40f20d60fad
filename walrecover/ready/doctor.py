"""``walrecover doctor``: could we recover table X right now, and back to when?

Reads the server's state (wal_level, the database's logical slots and what they retain, the
tables' replica identity, TOAST columns and publications, the installed plugins) and a protect
directory's recovery points, and gives each table one verdict with a severity for monitoring:
``ok`` (recoverable back to a known time), ``warning`` (recoverable, but not as far back or not
for long) and ``critical`` (not recoverable now). Read-only: the session is read-only and runs
only SELECTs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..db import Connection, connect, one, safe_dsn
from ..errors import EXIT_CRITICAL, EXIT_OK, EXIT_WARNING
from ..stream.model import TableName
from .facts import installed_plugins, table_facts, user_tables
from .points import RecoveryPoint, load_recovery_points
from .slots import SlotState, human_bytes, server_version, slot_states
from .verdict import SEVERITIES, Verdict, coverage, prerequisites, reach, slot_health

_EXIT = {"ok": EXIT_OK, "warning": EXIT_WARNING, "critical": EXIT_CRITICAL}
#: A recovery's own copy of a slot (stream/sources.py), dropped when the recovery ends: it
#: covers nothing for the future.
_COPY = re.compile(r"walrecover_\d+_[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class TableDiagnosis:
    """One table's verdict and the facts behind it.

    ``recoverable_since`` is the oldest moment it can be rebuilt at exactly (the oldest usable
    protect baseline), None when unknown or not recoverable. ``covering_slots`` are the slots
    that hold its changes (for pgoutput: through a publication that publishes it).
    """

    table: TableName
    exists: bool
    severity: str
    verdict: str
    recoverable_since: datetime | None
    replica_identity: str | None
    has_key: bool
    updates_and_deletes: int | None
    toast_columns: tuple[str, ...]
    publications: tuple[str, ...]
    covering_slots: tuple[str, ...]
    newest_baseline: RecoveryPoint | None
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        newest = self.newest_baseline
        return {
            "table": str(self.table),
            "exists": self.exists,
            "severity": self.severity,
            "verdict": self.verdict,
            "recoverable_since": (
                self.recoverable_since.isoformat() if self.recoverable_since else None
            ),
            "replica_identity": self.replica_identity,
            "has_key": self.has_key,
            "updates_and_deletes": self.updates_and_deletes,
            "toast_columns": list(self.toast_columns),
            "publications": list(self.publications),
            "covering_slots": list(self.covering_slots),
            "newest_baseline": (
                {
                    "slot": newest.slot,
                    "snapshot_time": newest.snapshot_time.isoformat(),
                    "consistent_lsn": str(newest.consistent_lsn),
                }
                if newest
                else None
            ),
            "problems": list(self.problems),
        }


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The server-wide facts and one :class:`TableDiagnosis` per table."""

    database: str
    source: str
    server_version: int
    wal_level: str
    plugins: dict[str, bool | None]
    slots: tuple[SlotState, ...]
    protect_dir: Path | None
    tables: tuple[TableDiagnosis, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def severity(self) -> str:
        """The worst table's severity (``ok`` when there is no table)."""
        return max((t.severity for t in self.tables), key=SEVERITIES.index, default="ok")

    @property
    def exit_code(self) -> int:
        """0 all ok, 5 a warning, 6 a table not recoverable now (errors.EXIT_*)."""
        return _EXIT[self.severity]

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "source": self.source,
            "server_version": self.server_version,
            "wal_level": self.wal_level,
            "plugins": dict(self.plugins),
            "slots": [s.to_dict() for s in self.slots],
            "protect_dir": str(self.protect_dir) if self.protect_dir else None,
            "tables": [t.to_dict() for t in self.tables],
            "severity": self.severity,
            "exit": self.exit_code,
            "notes": list(self.notes),
        }

    def report(self) -> str:
        """The human summary: server facts, slots, then one verdict line per table."""
        plugins = ", ".join(
            f"{p} {'yes' if ok else 'no' if ok is False else 'unknown'}"
            for p, ok in self.plugins.items()
        )
        lines = [
            f"Database {self.database} (PostgreSQL {self.server_version // 10000}), "
            f"wal_level {self.wal_level}; plugins installed: {plugins}.",
        ]
        for slot in self.slots:
            lines.append(
                f"  slot {slot.name} ({slot.plugin}{', active' if slot.active else ''}): restart "
                f"{slot.restart_lsn}, confirmed {slot.confirmed_flush_lsn}, retains "
                f"{human_bytes(slot.retained_wal_bytes)}, wal_status {slot.wal_status}, "
                f"safe_wal_size {human_bytes(slot.safe_wal_size)}, catalog_xmin age "
                f"{slot.catalog_xmin_age}"
            )
        if not self.slots:
            lines.append("  no logical slot in this database")
        lines.extend(f"  note: {note}" for note in self.notes)
        for table in self.tables:
            lines.append(f"{table.severity.upper():8} {table.table}: {table.verdict}")
            lines.extend(f"         - {p}" for p in table.problems)
        return "\n".join(lines)


def doctor(
    dsn: str | None,
    tables: Sequence[TableName] = (),
    protect_dir: str | Path | None = None,
) -> Diagnosis:
    """Diagnose ``tables`` (default: every user table) of the ``dsn`` database."""
    points = load_recovery_points(protect_dir) if protect_dir is not None else ()
    with connect(dsn, autocommit=True, role="source") as conn:
        conn.execute("SET default_transaction_read_only = on")
        wal_level = str(one(conn, "SELECT current_setting('wal_level')")[0])
        states = slot_states(conn)
        plugins, notes = installed_plugins(conn, states)
        names = list(tables) or user_tables(conn)
        diagnoses = tuple(
            _diagnose(conn, t, wal_level, states, plugins, points, dsn) for t in names
        )
        return Diagnosis(
            database=conn.info.dbname,
            source=safe_dsn(dsn),
            server_version=server_version(conn),
            wal_level=wal_level,
            plugins=plugins,
            slots=states,
            protect_dir=Path(protect_dir) if protect_dir is not None else None,
            tables=diagnoses,
            notes=tuple(notes),
        )


def _diagnose(
    conn: Connection,
    table: TableName,
    wal_level: str,
    states: Sequence[SlotState],
    plugins: dict[str, bool | None],
    points: Sequence[RecoveryPoint],
    dsn: str | None,
) -> TableDiagnosis:
    facts = table_facts(conn, table)
    verdict = Verdict()
    usable = [
        s
        for s in states
        if not s.lost
        and plugins.get(s.plugin) is not False
        and not s.temporary
        and not _COPY.fullmatch(s.name)
    ]
    baselines = [p for p in points if p.baseline(table) is not None]
    known = {p.slot: set(b.publications) for p in baselines if (b := p.baseline(table))}
    covering, partial = coverage(table, facts, usable, known, verdict)
    good = [p for p in baselines if p.slot in covering and _on_disk(p, table)]
    protect = (
        f"walrecover protect -d {_shell(safe_dsn(dsn))} --table {_shell(str(table))} "
        "--retain 48h --every 6h --dir DIR"
    )
    prerequisites(conn, table, facts, wal_level, protect, verdict)
    slot_health(usable, covering, verdict)
    alive = {s.name for s in usable}
    lost = [p.slot for p in baselines if p.slot not in alive]
    if lost:
        verdict.note(f"baselines whose slot is gone or lost: {', '.join(lost)}")
    since = reach(conn, good, covering, partial, protect, verdict)
    return TableDiagnosis(
        table=table,
        exists=facts.exists,
        severity=verdict.severity,
        verdict=verdict.line(),
        recoverable_since=since if verdict.severity != "critical" else None,
        replica_identity=facts.identity,
        has_key=facts.has_key,
        updates_and_deletes=facts.changed,
        toast_columns=facts.toast,
        publications=tuple(name for name, _ in facts.publications),
        covering_slots=tuple(sorted(covering)),
        newest_baseline=max(good, key=lambda p: p.snapshot_time) if good else None,
        problems=tuple(verdict.problems),
    )


def _on_disk(point: RecoveryPoint, table: TableName) -> bool:
    baseline = point.baseline(table)
    return baseline is not None and baseline.path.is_file()


def _shell(text: str) -> str:
    return shlex.quote(text)
