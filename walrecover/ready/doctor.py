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
from .facts import TableFacts, installed_plugins, table_facts, user_tables
from .points import RecoveryPoint, load_recovery_points
from .slots import SlotState, human_bytes, server_version, slot_states

SEVERITIES = ("ok", "warning", "critical")
_EXIT = {"ok": EXIT_OK, "warning": EXIT_WARNING, "critical": EXIT_CRITICAL}
#: A recovery's own copy of a slot (stream/sources.py), dropped when the recovery ends: it
#: covers nothing for the future.
_COPY = re.compile(r"walrecover_\d+_[0-9a-f]+")
#: A catalog_xmin this many transactions old is reported (bloat; wraparound at about 2e9).
OLD_CATALOG_XMIN = 500_000_000


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
    verdict = _Verdict()
    usable = [
        s
        for s in states
        if not s.lost
        and plugins.get(s.plugin) is not False
        and not s.temporary
        and not _COPY.fullmatch(s.name)
    ]
    alive = {s.name for s in usable}
    baselines = [p for p in points if p.baseline(table) is not None]
    known = {p.slot: set(b.publications) for p in baselines if (b := p.baseline(table))}
    covering, partial = _coverage(table, facts, usable, known, verdict)
    good = [p for p in baselines if p.slot in covering and _on_disk(p, table)]
    protect = (
        f"walrecover protect -d {_shell(safe_dsn(dsn))} --table {_shell(str(table))} "
        "--retain 48h --every 6h --dir DIR"
    )
    if not facts.exists:
        verdict.critical(
            f"it does not exist in database {conn.info.dbname!r}",
            "check the name; if it was dropped, find the DROP with walrecover inspect and "
            "rebuild it with walrecover recover",
        )
    if wal_level != "logical":
        verdict.critical(
            f"wal_level is {wal_level}, so no row change is logged for decoding",
            "ALTER SYSTEM SET wal_level = logical, restart the server, then run " + protect,
        )
    if facts.exists and not facts.has_key:
        _identity(table, facts, verdict)
    for state in usable:
        if state.name in covering and state.wal_status == "unreserved":
            verdict.warning(
                f"slot {state.name} keeps its WAL no longer than the next checkpoint "
                "(wal_status unreserved): raise max_slot_wal_keep_size or read it now"
            )
        if (state.catalog_xmin_age or 0) > OLD_CATALOG_XMIN:
            verdict.warning(
                f"slot {state.name} holds catalog_xmin back {state.catalog_xmin_age} "
                "transactions (catalog bloat; wraparound near 2 billion)"
            )
    lost = [p.slot for p in baselines if p.slot not in alive]
    if lost:
        verdict.note(f"baselines whose slot is gone or lost: {', '.join(lost)}")
    since = min((p.snapshot_time for p in good), default=None)
    if good:
        verdict.recoverable(f"recoverable back to {since.isoformat() if since else '?'}")
    elif covering or partial:
        slots = ", ".join(sorted(covering or partial))
        verdict.warning(
            f"recoverable only for rows written after slot {slots} began (a slot holds no older "
            f"row) — do: {protect} for a baseline",
            headline=True,
        )
    else:
        verdict.critical(
            f"no usable logical slot of database {conn.info.dbname!r} holds its changes",
            protect,
        )
    newest = max(good, key=lambda p: p.snapshot_time) if good else None
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
        newest_baseline=newest,
        problems=tuple(verdict.problems),
    )


class _Verdict:
    """Collects what was found about a table and makes its one verdict line."""

    def __init__(self) -> None:
        self.severity = "ok"
        self.problems: list[str] = []
        self._critical: str | None = None
        self._headline: str | None = None
        self._good = "recoverable"

    def _raise(self, severity: str) -> None:
        if SEVERITIES.index(severity) > SEVERITIES.index(self.severity):
            self.severity = severity

    def critical(self, reason: str, action: str) -> None:
        self._raise("critical")
        text = f"not recoverable because {reason} — do: {action}"
        if self._critical is None:
            self._critical = text
        else:
            self.problems.append(text)

    def warning(self, text: str, *, headline: bool = False) -> None:
        self._raise("warning")
        if headline and self._headline is None:
            self._headline = text
        else:
            self.problems.append(text)

    def note(self, text: str) -> None:
        self.problems.append(text)

    def recoverable(self, text: str) -> None:
        self._good = text

    def line(self) -> str:
        return self._critical or self._headline or self._good


def _coverage(
    table: TableName,
    facts: TableFacts,
    usable: Sequence[SlotState],
    known: dict[str, set[str]],
    verdict: _Verdict,
) -> tuple[set[str], set[str]]:
    """The slots that hold every change of the table (wal2json and test_decoding slots hold
    all tables; a pgoutput slot only what a publication publishes), and those that hold only
    the changes after a publication younger than the slot.

    A publication is older than a protect slot when the point's baseline recorded it (read in
    the slot's snapshot); for other slots, when the catalog row that makes it publish the
    table is older than the slot's catalog_xmin (an estimate: a transaction running when the
    slot was created holds catalog_xmin further back)."""
    covering: set[str] = set()
    partial: set[str] = set()
    for slot in usable:
        if slot.plugin != "pgoutput":
            covering.add(slot.name)
            continue
        if not facts.publications:
            if facts.exists:
                verdict.note(
                    f"slot {slot.name} (pgoutput) does not hold its changes: no publication "
                    f"publishes it (CREATE PUBLICATION ... FOR TABLE {table} covers what is "
                    "written from then on)"
                )
            continue
        horizon = slot.catalog_xmin_age
        old = [
            n
            for n, age in facts.publications
            if n in known.get(slot.name, ()) or horizon is None or age >= horizon
        ]
        if old:
            covering.add(slot.name)
            continue
        partial.add(slot.name)
        names = ", ".join(n for n, _ in facts.publications)
        verdict.warning(
            f"publication {names} is younger than slot {slot.name}'s oldest changes: pgoutput "
            "reads each change with the catalog of its time, so the changes written before the "
            "publication published the table cannot be read through it"
        )
    return covering, partial


def _identity(table: TableName, facts: TableFacts, verdict: _Verdict) -> None:
    what = f"REPLICA IDENTITY {(facts.identity or '?').upper()}"
    if facts.identity == "default":
        what += " without a primary key"
    action = (
        f"ALTER TABLE {table} REPLICA IDENTITY FULL (or add a primary key); the changes "
        "written from then on can be rebuilt"
    )
    if facts.changed:
        verdict.critical(
            f"it has no replica identity ({what}): its {facts.changed} updates and deletes "
            "carry no key to find their row by",
            action,
        )
    else:
        verdict.warning(
            f"it has no replica identity ({what}): its inserts can be rebuilt, but an UPDATE "
            f"or DELETE could not — do: {action}"
        )


def _on_disk(point: RecoveryPoint, table: TableName) -> bool:
    baseline = point.baseline(table)
    return baseline is not None and baseline.path.is_file()


def _shell(text: str) -> str:
    return shlex.quote(text)
