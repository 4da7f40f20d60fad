"""``walrecover protect``: keep recovery points so any moment of the retention window can be
rebuilt exactly, with bounded WAL retention.

One call is one run (cron or a systemd timer): if the newest usable recovery point is older than
``every`` (or there is none, or it lacks a requested table), make a new one (a slot with an
exported snapshot plus a Parquet baseline of each table, see :mod:`.snapshot`); then drop the
points the retention window no longer needs. A point is needed while it is the newest or
younger than ``retain``, and so is the newest point older than ``retain``: it is what covers the
window's far edge. Only slots whose name starts with :data:`~.points.SLOT_PREFIX` *and* that
the directory's manifest lists are ever dropped.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..audit import safefiles
from ..db import Connection, connect, one
from ..errors import ProtectError
from ..stream.model import TableName
from . import points as pts
from .points import RecoveryPoint
from .slots import SlotState, human_bytes, slot_states
from .snapshot import make_point, remove_point_files

#: The plugins a protect slot can be created with.
PLUGINS = ("pgoutput", "wal2json", "test_decoding")


@dataclass(frozen=True, slots=True)
class ProtectResult:
    """What one protect run did, and what the kept recovery points cost.

    ``slots`` are the kept points' slots as the server shows them (retained WAL, catalog_xmin
    age); ``missing_slots`` the kept points whose slot no longer exists; ``disk_bytes`` the
    files in the directory; ``next_due`` when the next point should be made.
    """

    directory: Path
    created: RecoveryPoint | None
    dropped: tuple[str, ...]
    points: tuple[RecoveryPoint, ...]
    slots: tuple[SlotState, ...]
    missing_slots: tuple[str, ...]
    disk_bytes: int
    now: datetime
    next_due: datetime
    warnings: tuple[str, ...]

    @property
    def retained_wal_bytes(self) -> int:
        """The WAL the kept slots hold back (the oldest slot's share; they overlap)."""
        return max((s.retained_wal_bytes or 0 for s in self.slots), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "created": self.created.to_dict() if self.created else None,
            "dropped": list(self.dropped),
            "points": [p.to_dict() for p in self.points],
            "slots": [s.to_dict() for s in self.slots],
            "missing_slots": list(self.missing_slots),
            "retained_wal_bytes": self.retained_wal_bytes,
            "disk_bytes": self.disk_bytes,
            "now": self.now.isoformat(),
            "next_due": self.next_due.isoformat(),
            "warnings": list(self.warnings),
        }

    def report(self) -> str:
        """The human summary the CLI prints."""
        lines = []
        if self.created:
            tables = ", ".join(f"{b.table} ({b.rows} rows)" for b in self.created.tables)
            lines.append(
                f"New recovery point: slot {self.created.slot} at {self.created.consistent_lsn} "
                f"({self.created.snapshot_time.isoformat()}): {tables}."
            )
        else:
            lines.append(f"No new recovery point needed; the next is due {self.next_due}.")
        for name in self.dropped:
            lines.append(f"Dropped expired recovery point {name} (slot and baselines).")
        if self.points:
            lines.append(
                f"Recoverable back to {self.points[0].snapshot_time.isoformat()} with "
                f"{len(self.points)} recovery point(s) in {self.directory}:"
            )
        by_name = {s.name: s for s in self.slots}
        for point in self.points:
            state = by_name.get(point.slot)
            cost = (
                f"retains {human_bytes(state.retained_wal_bytes)} of WAL, catalog_xmin age "
                f"{state.catalog_xmin_age}, wal_status {state.wal_status or 'unknown'}"
                if state
                else "its slot is gone"
            )
            lines.append(f"  {point.snapshot_time.isoformat()}  {point.slot}: {cost}")
        lines.append(
            f"Cost: {human_bytes(self.retained_wal_bytes)} of WAL retained, "
            f"{human_bytes(self.disk_bytes)} on disk in {self.directory}."
        )
        return "\n".join(lines)


def protect(
    dsn: str | None,
    tables: Sequence[TableName],
    directory: str | Path,
    *,
    retain: timedelta,
    every: timedelta,
    plugin: str = "pgoutput",
    clock: Callable[[], datetime] | None = None,
) -> ProtectResult:
    """One protect run on ``directory`` (created if missing); see the module docstring.

    ``clock`` gives "now" (default: the server's clock, the one recovery points are stamped
    with). Raises :class:`ProtectError` for a directory of another database, a table that does
    not exist, or a slot that cannot be created.
    """
    if plugin not in PLUGINS:
        raise ProtectError(f"unknown plugin {plugin!r}: use one of {', '.join(PLUGINS)}")
    if not tables:
        raise ProtectError("give at least one --table to protect")
    root = _directory(Path(directory))
    warnings: list[str] = []
    with pts.locked(root), connect(dsn, autocommit=True, role="source") as conn:
        manifest = pts.read_manifest(root)
        if manifest is None:
            manifest = {
                "format": pts.FORMAT,
                "version": pts.VERSION,
                "database": conn.info.dbname,
                "points": [],
            }
            pts.write_manifest(root, manifest)
        if manifest.get("database") != conn.info.dbname:
            raise ProtectError(
                f"{root} keeps recovery points of database {manifest.get('database')!r}, not "
                f"{conn.info.dbname!r}: give each database its own --dir",
                directory=str(root),
            )
        warnings.extend(_clean_unfinished(dsn, conn, root, manifest))
        now = clock() if clock else one(conn, "SELECT clock_timestamp()")[0]
        created = None
        if _due(pts.load_recovery_points(root), slot_states(conn), tables, now, every):
            created = _create(dsn, conn, root, manifest, plugin, tables, now)
        dropped = _expire(conn, root, manifest, now, retain, warnings)
        kept = pts.load_recovery_points(root)
        states = {s.name: s for s in slot_states(conn)}
    newest = max((p.snapshot_time for p in kept), default=now)
    return ProtectResult(
        directory=root,
        created=created,
        dropped=tuple(dropped),
        points=kept,
        slots=tuple(states[p.slot] for p in kept if p.slot in states),
        missing_slots=tuple(p.slot for p in kept if p.slot not in states),
        disk_bytes=pts.disk_used(root),
        now=now,
        next_due=max(newest + every, now) if created is None else now + every,
        warnings=tuple(warnings)
        + tuple(_unpublished(created) if created and plugin == "pgoutput" else ()),
    )


def _directory(root: Path) -> Path:
    info = safefiles.lstat(root)
    if info is None:
        root.mkdir(parents=True)
    elif not safefiles.is_dir(info):
        raise ProtectError(
            f"{root} is not a directory (a file or a link): give a directory for --dir",
            directory=str(root),
        )
    return root.resolve()


def _due(
    kept: Sequence[RecoveryPoint],
    states: Sequence[SlotState],
    tables: Sequence[TableName],
    now: datetime,
    every: timedelta,
) -> bool:
    """True if no usable point with every table is younger than ``every``."""
    alive = {s.name for s in states if not s.lost}
    usable = [p for p in kept if p.slot in alive]
    if not usable:
        return True
    newest = max(usable, key=lambda p: p.snapshot_time)
    if any(newest.baseline(t) is None for t in tables):
        return True
    return bool(now - newest.snapshot_time >= every)


def _slot_name(now: datetime) -> str:
    return f"{pts.SLOT_PREFIX}{now:%Y%m%d%H%M%S}_{secrets.token_hex(3)}"


def _create(
    dsn: str | None,
    conn: Connection,
    root: Path,
    manifest: dict[str, Any],
    plugin: str,
    tables: Sequence[TableName],
    now: datetime,
) -> RecoveryPoint:
    """Make a new point, listed in the manifest as ``creating`` first (so a killed run's slot
    is still known to be protect's and is cleaned by the next run)."""
    name = _slot_name(now)
    entry: dict[str, Any] = {"slot": name, "state": "creating", "started": now.isoformat()}
    manifest["points"].append(entry)
    pts.write_manifest(root, manifest)
    try:
        point = make_point(dsn, name, plugin, tables, root)
    except BaseException:
        manifest["points"].remove(entry)
        pts.write_manifest(root, manifest)
        raise
    entry.clear()
    entry.update(point.to_dict(), state="ready")
    for table in entry["tables"]:
        table["file"] = str(Path(table["file"]).relative_to(root))
    pts.write_manifest(root, manifest)
    return point


def _clean_unfinished(
    dsn: str | None, conn: Connection, root: Path, manifest: dict[str, Any]
) -> list[str]:
    """Remove points a killed run left half made (their slot and files); say which."""
    notes = []
    for entry in [e for e in manifest["points"] if e.get("state") != "ready"]:
        name = str(entry.get("slot", ""))
        if name.startswith(pts.SLOT_PREFIX):
            _drop_slot(conn, name)
            remove_point_files(root / name)
        manifest["points"].remove(entry)
        notes.append(f"removed recovery point {name}, which a killed run left unfinished")
    if notes:
        pts.write_manifest(root, manifest)
    return notes


def _expire(
    conn: Connection,
    root: Path,
    manifest: dict[str, Any],
    now: datetime,
    retain: timedelta,
    warnings: list[str],
) -> list[str]:
    """Drop the points the window no longer needs; return their slot names."""
    alive = {s.name: s for s in slot_states(conn)}
    ordered = sorted(pts.load_recovery_points(root), key=lambda p: p.snapshot_time)
    horizon = now - retain
    # The newest usable point at or before the horizon covers the window's far edge.
    edge = next(
        (
            p
            for p in reversed(ordered)
            if p.snapshot_time <= horizon and p.slot in alive and not alive[p.slot].lost
        ),
        None,
    )
    dropped = []
    for point in ordered[:-1]:
        if point.snapshot_time > horizon or point is edge:
            continue
        if edge is None or point.snapshot_time > edge.snapshot_time:
            continue
        state = alive.get(point.slot)
        if state is not None and state.active:
            warnings.append(
                f"kept expired recovery point {point.slot}: its slot is in use (active); it "
                "is dropped by a later run"
            )
            continue
        _drop_slot(conn, point.slot)
        left = remove_point_files(root / point.slot)
        if left:
            warnings.append(f"left {root / point.slot}: it holds files walrecover did not write")
        manifest["points"] = [e for e in manifest["points"] if e.get("slot") != point.slot]
        pts.write_manifest(root, manifest)
        dropped.append(point.slot)
    return dropped


def _drop_slot(conn: Connection, name: str) -> None:
    """Drop protect's own slot ``name`` (listed in the manifest, named with the prefix)."""
    if not name.startswith(pts.SLOT_PREFIX):
        return
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
        " WHERE slot_name = %s AND database = current_database() AND NOT active",
        (name,),
    )


def _unpublished(point: RecoveryPoint) -> list[str]:
    return [
        f"{b.table} is in no publication: a pgoutput slot is read through one, and it must "
        f"exist before the changes it should publish; create it now (CREATE PUBLICATION "
        f"walrecover_protect FOR TABLE {b.table}) or protect with --plugin wal2json"
        for b in point.tables
        if not b.publications
    ]


def run_forever(
    run: Callable[[], ProtectResult],
    report: Callable[[ProtectResult], None],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """``--loop``: run, report, sleep until the next point is due, forever (until Ctrl-C)."""
    while True:
        result = run()
        report(result)
        sleep(max((result.next_due - result.now).total_seconds(), 1.0))
