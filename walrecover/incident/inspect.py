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

import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..db import Connection, connect, safe_dsn
from ..errors import StopPointError, WalrecoverError
from ..stream.lsn import Lsn
from ..stream.model import StopPoint, TableName
from ..stream.sources import read_slot
from .events import DestructiveEvent, TableRelation, assemble
from .slotview import SlotView, StreamTransaction, read_slot_view
from .wal import OpenedWal, WalFacts, collect, open_wal, wal_range

#: Default of ``--mass``: a DELETE or UPDATE of more rows than this in one transaction.
DEFAULT_MASS = 1000

STOP_KINDS = ("drop", "truncate", "auto")


@dataclass(frozen=True)
class Inspection:
    """What the retained WAL (and the slot, if given) says about one table."""

    table: str
    #: How the WAL was read (``pg_walinspect``, ``pg_waldump on DIR``), or None and why not.
    wal: str | None
    wal_problem: str | None
    slot: str | None
    plugin: str | None
    start_lsn: Lsn | None
    end_lsn: Lsn | None
    mass: int
    #: The table's relations in order (more than one: it was dropped and re-created).
    relations: tuple[TableRelation, ...]
    #: DROPs, TRUNCATEs and mass DELETE/UPDATEs, in commit order.
    events: tuple[DestructiveEvent, ...]
    #: What the slot shows after the table's last change (the DROP is among these).
    after_last_change: int = 0
    first_after: StreamTransaction | None = None
    empty_after: tuple[StreamTransaction, ...] = ()
    notes: tuple[str, ...] = ()
    #: What walrecover changed on the source to read it (``--install-walinspect``).
    installed: str | None = None
    dsn: str = field(default="", repr=False)
    #: The plugin options the slot was read with (``-o``), repeated in the recover command.
    options: tuple[tuple[str, str], ...] = ()
    #: A table of that name exists now.
    exists_now: bool = False

    @property
    def transactions(self) -> int:
        return sum(r.transactions for r in self.relations)

    @property
    def counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for relation in self.relations:
            total.update(relation.counts)
        return dict(total)

    @property
    def first_commit(self) -> tuple[Lsn | None, datetime | None]:
        """(LSN, time) of the table's first transaction in what was read."""
        first = next((r for r in self.relations if r.transactions), None)
        return (first.first_lsn, first.first_time) if first else (None, None)

    @property
    def last_commit(self) -> tuple[Lsn | None, datetime | None]:
        """(LSN, time) of the table's last transaction in what was read."""
        last = self.last_change
        return (last.last_lsn, last.last_time) if last else (None, None)

    @property
    def last_change(self) -> TableRelation | None:
        """The relation with the table's last change (its ``last_*`` fields say which)."""
        with_changes = [r for r in self.relations if r.transactions]
        return with_changes[-1] if with_changes else None

    def command(self, event: DestructiveEvent) -> str:
        """The ``walrecover recover`` command that rebuilds the table as it was just before."""
        words = ["walrecover", "recover", "-d", safe_dsn(self.dsn)]
        words += ["--slot", self.slot or "SLOT", "--table", self.table]
        for name, value in self.options:
            words += ["-o", f"{name}={value}"]
        stop = event.stop_point()
        if stop.lsn is not None:
            words += ["--stop-before-lsn", str(stop.lsn)]
        else:
            words += ["--stop-before-xid", str(stop.xid)]
        return " ".join(shlex.quote(word) for word in words)

    def choose(self, kind: str) -> DestructiveEvent:
        """The event ``recover --stop-before KIND`` stops before; :class:`StopPointError` if
        there is none or the choice is not clear."""
        if kind == "auto":
            return self._auto()
        found = [e for e in self.events if e.kind == kind]
        if len(found) == 1:
            return found[0]
        name = kind.upper()
        if not found and kind == "drop" and self.wal is None:
            return self._drop_from_slot()
        if not found:
            raise StopPointError(f"{self._none_found(name)}", table=self.table, kind=kind)
        listed = "; ".join(f"{e.describe()}: {self.command(e)}" for e in found)
        raise StopPointError(
            f"{self.table} has {len(found)} {name}s in the retained WAL, so --stop-before "
            f"{kind} is ambiguous: choose one with --stop-before-lsn ({listed})",
            table=self.table,
            kind=kind,
        )

    def _auto(self) -> DestructiveEvent:
        if not self.relations:
            raise StopPointError(self._none_found("destructive event"), table=self.table)
        newest = self.relations[-1]
        if newest.events:
            return newest.events[0]
        if len(self.relations) > 1 and self.relations[-2].dropped is not None:
            return self.relations[-2].dropped
        if self.wal is None:
            return self._drop_from_slot()
        raise StopPointError(self._none_found("destructive event"), table=self.table)

    def _drop_from_slot(self) -> DestructiveEvent:
        """Without the WAL: the DROP of the newest relation that is gone, placed after its last
        change (the table as the DROP found it, unless a rename ended its name there)."""
        gone = [r for r in self.relations if r.transactions and not r.exists]
        if not gone or (self.exists_now and self.plugin != "pgoutput"):
            reason = (
                f"{self.table} exists now, and {self.plugin} changes carry no relation id to "
                "tell whether they are of this table or of one dropped before it"
                if gone
                else f"every relation of {self.table} in the slot exists now"
            )
            raise StopPointError(f"{self._none_found('DROP')} ({reason})", table=self.table)
        relation = gone[-1]
        return DestructiveEvent(
            "drop", None, None, None, relation.relation_id, found_in="slot",
            after_lsn=relation.last_lsn, after_end=self.plugin == "test_decoding",
            note=self.wal_problem,
        )  # fmt: skip

    def _none_found(self, name: str) -> str:
        span = f" from {self.start_lsn} to {self.end_lsn}" if self.start_lsn else ""
        if self.wal is None:
            last = self.last_change
            told = (
                f"; the slot shows {self.table}'s last change in {last.describe_last()} and "
                f"{self.after_last_change} transactions committed after it"
                if last is not None
                else ""
            )
            return (
                f"cannot find the {name} of {self.table}: the WAL cannot be read "
                f"({self.wal_problem}){told}; with pg_walinspect (--install-walinspect on "
                "inspect) or the server's WAL files (--wal-dir) walrecover finds it"
            )
        why = f": {'; '.join(self.notes)}" if not self.relations or not self.transactions else ""
        return f"no {name} of {self.table} in the retained WAL{span} (read with {self.wal}){why}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (LSNs and times as text)."""
        return {
            "table": self.table,
            "wal": self.wal,
            "wal_problem": self.wal_problem,
            "installed": self.installed,
            "slot": self.slot,
            "plugin": self.plugin,
            "start_lsn": _text(self.start_lsn),
            "end_lsn": _text(self.end_lsn),
            "mass": self.mass,
            "transactions": self.transactions,
            "counts": self.counts,
            "first_commit": _commit(self.first_commit),
            "last_commit": _commit(self.last_commit),
            "relations": [r.to_dict() for r in self.relations],
            "events": [{**e.to_dict(), "command": self.command(e)} for e in self.events],
            "after_last_change": self.after_last_change,
            "first_after": _txn(self.first_after),
            "empty_after": [_txn(t) for t in self.empty_after],
            "notes": list(self.notes),
        }


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _commit(commit: tuple[Lsn | None, datetime | None]) -> dict[str, str | None]:
    return {"lsn": _text(commit[0]), "time": commit[1].isoformat() if commit[1] else None}


def _txn(txn: StreamTransaction | None) -> dict[str, Any] | None:
    if txn is None:
        return None
    return {
        "xid": txn.xid,
        "commit_lsn": _text(txn.commit_lsn),
        "end_lsn": _text(txn.end_lsn),
        "time": txn.time.isoformat() if txn.time else None,
    }


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
        database, current = _catalog(conn, table)
        if slot is None and current is None:
            raise WalrecoverError(
                f"table {table} does not exist now and no --slot was given: the WAL numbers "
                "relations and never names them, so walrecover learns which relation was "
                f"{table} from a slot that saw its changes: give --slot",
                table=str(table),
            )
        opened, problem = open_wal(
            conn, dsn, wal_dir=Path(wal_dir) if wal_dir else None, install=install_walinspect
        )
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
    finally:
        conn.close()
    relations, events, notes = assemble(
        str(table), database, current, view, facts, mass, wal=opened is not None
    )
    return Inspection(
        table=str(table),
        wal=opened.description if opened else None,
        wal_problem=problem or None,
        slot=slot,
        plugin=view.plugin if view else None,
        start_lsn=start if start is not None else (view.start_lsn if view else None),
        end_lsn=end if end is not None else (view.end_lsn if view else None),
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
