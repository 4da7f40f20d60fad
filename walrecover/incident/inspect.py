"""``walrecover inspect``: what happened to a table in the retained WAL, and where to stop.

A table is named by the user but numbered in the WAL: a row record names a relation *file*
(relfilenode), a ``TRUNCATE`` record the relation's oid, and a ``DROP TABLE`` is the commit
record that lists the files it removed (``rels: base/5/16390``) and, from PostgreSQL 15 on, the
relations whose statistics it dropped (``dropped stats: 2/5/16390``: the table's oid, which is
pgoutput's relation id). So the name is tied to numbers first: by the catalog (the table as it is
now) and, with ``--slot``, by the slot's own changes of the table (pgoutput's relation ids; for
the other plugins the WAL record of each transaction's first change gives its file). Then one
pass over the WAL (pg_walinspect or pg_waldump, :mod:`.wal`) finds the DROPs, TRUNCATEs and the
files' history, and the transactions are counted by operation (from the slot, or without one
from the row records of the table's current file). A table dropped and re-created under the same
name shows as two relations. A transaction that deleted or updated more than ``mass`` rows is a
destructive event too. Without any WAL reader, what the slot alone tells is reported: the
table's last change and what committed after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..db import Connection, connect
from ..errors import StopPointError, WalrecoverError
from ..stream.lsn import Lsn
from ..stream.model import StopPoint, TableName
from ..stream.sources import read_slot
from .events import DestructiveEvent, assemble
from .inspection import Inspection
from .slotview import SlotView, read_slot_view
from .wal import OpenedWal, WalFacts, collect, open_wal, wal_range

__all__ = [
    "DEFAULT_MASS",
    "STOP_KINDS",
    "Inspection",
    "drop_of_relation",
    "inspect_table",
    "resolve_stop_before",
    "settled",
]

#: Default of ``--mass``: a DELETE or UPDATE of more rows than this in one transaction.
DEFAULT_MASS = 1000

STOP_KINDS = ("drop", "truncate", "auto")


def inspect_table(
    dsn: str | None,
    table: TableName,
    *,
    slot: str | None = None,
    wal_dir: str | Path | None = None,
    mass: int = DEFAULT_MASS,
    install_walinspect: bool = False,
    options: Mapping[str, str] | None = None,
    via_plugin: str | None = None,
) -> Inspection:
    """What the retained WAL says about ``table`` (see the module's description).

    ``slot`` is read through a copy (never moved); ``wal_dir`` reads WAL segment files with
    pg_waldump instead of asking the server; ``install_walinspect`` lets walrecover run
    ``CREATE EXTENSION pg_walinspect`` on the source when it is missing.
    """
    conn = connect(dsn, autocommit=True, role="source")
    try:
        read = _read(
            conn,
            dsn,
            table,
            slot=slot,
            wal_dir=Path(wal_dir) if wal_dir else None,
            install=install_walinspect,
            options=options,
            via_plugin=via_plugin,
        )
    finally:
        conn.close()
    opened, view, current = read.opened, read.view, read.current
    relations, events, notes = assemble(
        str(table), read.database, current, view, read.facts, mass, wal=opened is not None
    )
    return Inspection(
        table=str(table),
        wal=opened.description if opened else None,
        wal_problem=read.problem or None,
        slot=slot,
        plugin=view.plugin if view else None,
        start_lsn=read.start if read.start is not None else (view.start_lsn if view else None),
        end_lsn=read.end if read.end is not None else (view.end_lsn if view else None),
        mass=mass,
        relations=relations,
        events=events,
        after_last_change=view.after_last if view else 0,
        first_after=view.first_after if view else None,
        empty_after=view.empty_after if view else (),
        notes=(*notes, *(view.warnings if view else ())),
        installed=opened.installed if opened else None,
        dsn=dsn or "",
        options=tuple((options or {}).items()),
        exists_now=current is not None,
    )


@dataclass(frozen=True)
class _Reading:
    """What one inspection read: the database's oid and the table's (oid, relfilenode) now,
    the WAL reader (or why none), the slot's view, the WAL's facts and the range they cover."""

    database: int
    current: tuple[int, int] | None
    opened: OpenedWal | None
    problem: str
    view: SlotView | None
    facts: WalFacts | None
    start: Lsn | None
    end: Lsn | None


def _read(
    conn: Connection,
    dsn: str | None,
    table: TableName,
    *,
    slot: str | None,
    wal_dir: Path | None,
    install: bool,
    options: Mapping[str, str] | None,
    via_plugin: str | None,
) -> _Reading:
    """Tie the name to the catalog, open the best WAL reader, read the slot's view of the
    table (through a copy) and make the one pass over the WAL; the reader is closed before
    returning."""
    database, current = _catalog(conn, table)
    if slot is None and current is None:
        raise WalrecoverError(
            f"table {table} does not exist now and no --slot was given: the WAL numbers "
            "relations and never names them, so walrecover learns which relation was "
            f"{table} from a slot that saw its changes: give --slot",
            table=str(table),
        )
    opened, problem = open_wal(conn, dsn, wal_dir=wal_dir, install=install)
    try:
        view = (
            read_slot_view(dsn, slot, table, options=options, via_plugin=via_plugin)
            if slot
            else None
        )
        restart = read_slot(conn, slot).restart_lsn if slot else None
        facts, start, end = (
            _read_wal(conn, opened, restart, database, current, view)
            if opened is not None
            else (None, None, None)
        )
    finally:
        close = getattr(opened.reader, "close", None) if opened is not None else None
        if close is not None:
            close()
    return _Reading(database, current, opened, problem, view, facts, start, end)


def _read_wal(
    conn: Connection,
    opened: OpenedWal,
    restart: Lsn | None,
    database: int,
    current: tuple[int, int] | None,
    view: SlotView | None,
) -> tuple[WalFacts, Lsn, Lsn]:
    """One pass over the retained WAL: from the slot's restart LSN (or the oldest WAL), with the
    table's current file's row records when there is no slot to count its changes."""
    start, end = wal_range(conn, opened, restart)
    files = frozenset({current[1]}) if current is not None and view is None else frozenset()
    facts = collect(opened.reader, start, end, database, files=files, lsns=_wanted(view))
    return facts, start, end


def _wanted(view: SlotView | None) -> frozenset[int]:
    """The LSNs of changes whose WAL records tell their relation (plugins without relation
    ids): each transaction's first change of the table and its TRUNCATE."""
    if view is None or view.plugin == "pgoutput":
        return frozenset()
    found: set[int] = set()
    for txn in view.transactions:
        found.update(int(x) for x in (txn.first_change, txn.truncate_lsn) if x is not None)
    return frozenset(found)


def _catalog(conn: Connection, table: TableName) -> tuple[int, tuple[int, int] | None]:
    """The database's oid and, if the table exists now, its (oid, relfilenode)."""
    row = conn.execute(
        "SELECT (SELECT oid::bigint FROM pg_database WHERE datname = current_database()),"
        " (SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "  WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'),"
        " (SELECT pg_relation_filenode(c.oid)::bigint FROM pg_class c"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace"
        "  WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r')",
        (table.schema, table.name, table.schema, table.name),
    ).fetchone()
    assert row is not None
    current = (int(row[1]), int(row[2])) if row[1] is not None and row[2] is not None else None
    return int(row[0]), current


def resolve_stop_before(
    dsn: str | None,
    slot: str,
    table: TableName,
    kind: str,
    *,
    wal_dir: str | Path | None = None,
    options: Mapping[str, str] | None = None,
    via_plugin: str | None = None,
) -> tuple[StopPoint, DestructiveEvent]:
    """``recover --stop-before KIND``: the event of :func:`inspect_table` to stop before, and
    the stop point (its commit LSN) that stops exactly there."""
    if kind not in STOP_KINDS:
        raise StopPointError(f"--stop-before {kind}: choose one of {', '.join(STOP_KINDS)}")
    found = inspect_table(
        dsn, table, slot=slot, wal_dir=wal_dir, options=options, via_plugin=via_plugin
    )
    event = found.choose(kind)
    return event.stop_point(), event


def drop_of_relation(
    dsn: str | None, table: TableName, relation_id: int, after: Lsn
) -> DestructiveEvent | None:
    """The DROP of ``table``'s relation ``relation_id``, committed at or after ``after``,
    found in one pass over the server's WAL without reading any slot.

    For a relation whose oid is already known (a recovery point of ``walrecover protect``
    records the table's oid and its consistent LSN), so the name need not be tied to the
    relation through a slot's changes as :func:`inspect_table` does. None when the WAL cannot
    tell: no WAL reader, or a server before PostgreSQL 15, whose commit records do not list the
    oids of the relations they dropped; then :func:`resolve_stop_before` finds it.
    """
    conn = connect(dsn, autocommit=True, role="source")
    try:
        database, _ = _catalog(conn, table)
        opened, _ = open_wal(conn, dsn, wal_dir=None, install=False)
        if opened is None:
            return None
        try:
            start, end = wal_range(conn, opened, after)
            facts = collect(opened.reader, start, end, database)
        finally:
            close = getattr(opened.reader, "close", None)
            if close is not None:
                close()
    finally:
        conn.close()
    for drop in facts.drops:
        if relation_id in drop.dropped_relations(database):
            return DestructiveEvent(
                "drop", drop.lsn, drop.xid, drop.time, relation_id, end_lsn=drop.end_lsn
            )
    return None


def settled(reasons: tuple[str, ...], table: TableName, event: DestructiveEvent) -> tuple[str, ...]:
    """The recovery's reasons for doubt, given the event it stopped before.

    A DROP found in the WAL settles pgoutput's "the name now belongs to another table, and the
    stream's relation was dropped after its last change, but when?" (asked of pg_walinspect
    only): the stop point is that relation's DROP, so it held the name up to the stop point. A
    DROP the WAL could not show adds a doubt: the stop after the table's last change gives the
    table as the DROP found it only if nothing else (a rename) took the name from it first.
    """
    if event.kind != "drop":
        return reasons
    if event.found_in != "WAL":
        return (
            *reasons,
            f"the DROP of {table} was not found in the WAL ({event.note or 'not read'}): the "
            f"recovery stopped after the table's last change in the slot ({event.after_lsn}), "
            "which is the table as its DROP found it unless something else (a rename) took "
            "the name from it first; with pg_walinspect (walrecover inspect "
            "--install-walinspect) or the server's WAL files (--wal-dir) walrecover finds the "
            "DROP itself",
        )
    if event.relation_id is None:
        return reasons
    doubt = f"{table} may have been dropped and re-created under the same name"
    mine = f"(relation id {event.relation_id})"
    return tuple(r for r in reasons if not (r.startswith(doubt) and mine in r))
