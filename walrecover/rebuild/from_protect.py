"""``recover --from-protect DIR``: a protect directory and a stop point, as a slot + baseline.

``walrecover protect`` keeps recovery points (see docs/protect-format.md): a slot created with
an exported snapshot and, per table, a Parquet baseline read in that snapshot, so the baseline
holds exactly the transactions committed before the slot's consistent LSN. A recovery to a stop
point starts from the newest point that lies before the stop point and whose slot still exists:
its baseline (known point: the consistent LSN) and its slot. :func:`choose_point` makes that
choice, or says in one line why no point serves; the recovery itself is the ordinary
``recover`` with the returned slot and :class:`~.baseline.BaselineOptions`. With
``--stop-before drop|truncate|auto`` the event comes first: :func:`find_event` finds it from the
points, then the point before it is chosen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..db import connect
from ..errors import ProtectError
from ..incident.events import DestructiveEvent
from ..incident.inspect import drop_of_relation, resolve_stop_before
from ..ready.points import RecoveryPoint, TableBaseline, load_recovery_points
from ..stream.model import StopPoint, TableName
from .baseline import BaselineOptions


@dataclass(frozen=True)
class ProtectedStart:
    """The recovery point a recovery starts from: its slot, the table's baseline, and the
    options ``recover`` takes for them."""

    point: RecoveryPoint
    table: TableBaseline
    #: ``--baseline FILE --baseline-lsn POINT`` of the point.
    baseline: BaselineOptions
    #: The plugin options the slot is read with (pgoutput: the point's publication).
    plugin_options: dict[str, str] = field(default_factory=dict)
    #: The points the choice passed over, newest first, and why.
    passed_over: tuple[str, ...] = ()

    @property
    def slot(self) -> str:
        return self.point.slot

    def to_dict(self) -> dict[str, Any]:
        """What the result and the audit record of the choice."""
        return {
            "slot": self.point.slot,
            "plugin": self.point.plugin,
            "consistent_lsn": str(self.point.consistent_lsn),
            "snapshot_time": self.point.snapshot_time.isoformat(),
            "file": str(self.table.path),
            "rows": self.table.rows,
            "sha256": self.table.sha256,
        }


def choose_point(
    directory: str | Path,
    dsn: str | None,
    table: TableName,
    stop: StopPoint,
    *,
    plugin_options: Mapping[str, str] | None = None,
    accept_gap: bool = False,
) -> ProtectedStart:
    """The newest recovery point of ``directory`` that holds ``table``, lies before ``stop``
    and whose slot still exists on ``dsn``; raise :class:`ProtectError` naming the points
    when none does."""
    if stop.xid is not None:
        raise ProtectError(
            "--from-protect chooses its recovery point by LSN or time, and an xid does not say "
            "when it committed: give --stop-before-lsn (walrecover inspect prints the commit "
            "LSN) or --stop-before-time",
            xid=stop.xid,
        )
    holding = _holding(directory, table)
    slots = _live_slots(dsn, [p.slot for p in holding])
    passed: list[str] = []
    for point in reversed(holding):
        if not _before(point, stop):
            passed.append(f"{_describe(point)} is not before the stop point")
        elif point.slot not in slots:
            passed.append(f"{_describe(point)}: its slot is gone or has lost WAL")
        else:
            return _start(point, table, plugin_options, accept_gap, tuple(passed))
    raise ProtectError(
        f"no recovery point of {directory} covers {table} at the stop point "
        f"({stop.describe()}): {'; '.join(passed)}; recover from an older backup with "
        "--baseline, or choose a later stop point",
        table=str(table),
        directory=str(directory),
    )


def find_event(
    directory: str | Path,
    dsn: str | None,
    table: TableName,
    kind: str,
    *,
    plugin_options: Mapping[str, str] | None = None,
    wal_dir: str | Path | None = None,
) -> DestructiveEvent:
    """``table``'s ``kind`` event (``drop``, ``truncate`` or ``auto``, as ``recover
    --stop-before``), found from ``directory``'s recovery points so that the point before it
    can then be chosen.

    A DROP is found from the relation id that the newest point holding the table recorded, in
    one pass over the WAL from that point's consistent LSN (PostgreSQL 15 on: a commit record
    lists the oids it dropped), without reading any slot. Otherwise the event is found as
    ``--stop-before`` finds it, through the slot of the oldest point whose slot is alive: its
    stream reaches furthest back."""
    holding = _holding(directory, table)
    if kind == "drop":
        newest = holding[-1]
        found = newest.baseline(table)
        assert found is not None
        event = drop_of_relation(dsn, table, found.relation_id, newest.consistent_lsn)
        if event is not None:
            return event
    slots = _live_slots(dsn, [p.slot for p in holding])
    live = [p for p in holding if p.slot in slots]
    if not live:
        raise ProtectError(
            f"no recovery point of {directory} that protects {table} has its slot any more, so "
            f"its {kind} cannot be looked for in a stream: find it with walrecover inspect, "
            "then give --stop-before-lsn",
            table=str(table),
            directory=str(directory),
        )
    options = _point_options(live[0], table, plugin_options)
    _, event = resolve_stop_before(dsn, live[0].slot, table, kind, wal_dir=wal_dir, options=options)
    return event


def _holding(directory: str | Path, table: TableName) -> list[RecoveryPoint]:
    """The recovery points of ``directory`` that protect ``table``, oldest first; raise
    :class:`ProtectError` when there are none."""
    points = load_recovery_points(directory)
    if not points:
        raise ProtectError(
            f"{directory} holds no recovery point yet: run walrecover protect first",
            directory=str(directory),
        )
    holding = [p for p in points if p.baseline(table) is not None]
    if not holding:
        raise ProtectError(
            f"no recovery point of {directory} protects {table} (they protect "
            f"{_tables(points)}): recover it from another baseline (--baseline)",
            table=str(table),
            directory=str(directory),
        )
    return holding


def _before(point: RecoveryPoint, stop: StopPoint) -> bool:
    """Whether the stop point lies after the point (its changes start at its consistent LSN;
    a stop time at or after its snapshot time is reachable from it)."""
    if stop.lsn is not None:
        return point.consistent_lsn < stop.lsn
    if stop.time is not None:
        return point.snapshot_time <= stop.time
    return True


def _start(
    point: RecoveryPoint,
    table: TableName,
    plugin_options: Mapping[str, str] | None,
    accept_gap: bool,
    passed: tuple[str, ...],
) -> ProtectedStart:
    found = point.baseline(table)
    assert found is not None
    _check_file(found)
    options = _point_options(point, table, plugin_options)
    recorded = {
        "directory": str(found.path.parent.parent),
        "slot": point.slot,
        "snapshot_time": point.snapshot_time.isoformat(),
    }
    return ProtectedStart(
        point=point,
        table=found,
        baseline=BaselineOptions(
            file=found.path,
            lsn=point.consistent_lsn,
            accept_gap=accept_gap,
            recovery_point=recorded,
        ),
        plugin_options=options,
        passed_over=passed,
    )


def _point_options(
    point: RecoveryPoint, table: TableName, plugin_options: Mapping[str, str] | None
) -> dict[str, str]:
    """The plugin options ``point``'s slot is read with: the user's, and for pgoutput the
    publication that published ``table`` when the point was made."""
    found = point.baseline(table)
    assert found is not None
    options = dict(plugin_options or {})
    if point.plugin == "pgoutput" and "publication_names" not in options:
        if not found.publications:
            raise ProtectError(
                f"{_describe(point)} is a pgoutput slot, and no publication published {table} "
                "when it was made: its slot holds no change of it",
                table=str(table),
            )
        options["publication_names"] = found.publications[0]
    return options


def _check_file(baseline: TableBaseline) -> None:
    """The baseline file is there and is the one the manifest lists (its checksum)."""
    digest = hashlib.sha256()
    try:
        with baseline.path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise ProtectError(
            f"cannot read the baseline {baseline.path} of {baseline.table}: {exc.strerror}",
            table=str(baseline.table),
        ) from None
    if digest.hexdigest() != baseline.sha256:
        raise ProtectError(
            f"the baseline {baseline.path} of {baseline.table} is not the file protect wrote "
            "(its sha256 differs from the manifest's): restore the directory from a backup",
            table=str(baseline.table),
        )


def _live_slots(dsn: str | None, names: Sequence[str]) -> set[str]:
    """Those of ``names`` that are logical slots on ``dsn``'s database with their WAL."""
    with connect(dsn, autocommit=True, role="source") as conn:
        rows = conn.execute(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = ANY(%s)"
            " AND slot_type = 'logical' AND database = current_database()"
            " AND coalesce(wal_status, '') <> 'lost'",
            (list(names),),
        ).fetchall()
    return {row[0] for row in rows}


def _describe(point: RecoveryPoint) -> str:
    return (
        f"point {point.slot} (LSN {point.consistent_lsn}, "
        f"{point.snapshot_time.isoformat(timespec='seconds')})"
    )


def _tables(points: Sequence[RecoveryPoint]) -> str:
    names = sorted({str(b.table) for p in points for b in p.tables})
    return ", ".join(names) or "no table"
