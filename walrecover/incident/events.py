"""Tie a table's name to its relations and their destructive events (for :mod:`.inspect`).

The slot's transactions of the table come in commit order. With pgoutput each names its
relation (the relation id is the table's oid). For wal2json and test_decoding the WAL record of
a transaction's first change names the relation file; a DROP commit that removes the file the
previous transactions wrote (or the relation's oid) ends one relation, and the next transaction
belongs to the next one. A relation's oid is known from a TRUNCATE record (it lists oids), from
the catalog (the table as it is now), or from a DROP that dropped the statistics of an oid equal
to the file (a table that was never rewritten keeps its first file, numbered like its oid).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..stream.lsn import Lsn
from ..stream.model import StopPoint
from ..stream.walrecords import CommitRecord
from .slotview import SlotView, StreamTransaction
from .wal import WalFacts

KINDS = ("drop", "truncate", "mass delete", "mass update")


@dataclass(frozen=True, slots=True)
class DestructiveEvent:
    """A DROP, TRUNCATE or mass DELETE/UPDATE of the table, by the transaction that did it.

    ``lsn`` is where its commit record starts (the stop point that leaves it out), or None
    where only the commit's end is known (test_decoding without the WAL): then ``xid`` stops.
    """

    kind: str
    lsn: Lsn | None
    xid: int | None
    time: datetime | None
    relation_id: int | None
    #: Rows deleted or updated (mass events).
    rows: int | None = None
    #: ``"WAL"`` (pg_walinspect/pg_waldump) or ``"slot"`` (the slot's changes).
    found_in: str = "WAL"
    end_lsn: Lsn | None = None
    #: A DROP the WAL could not show (``found_in == "slot"``): it came after the table's last
    #: change, whose commit LSN this is (its end, ``after_end``, for test_decoding).
    after_lsn: Lsn | None = None
    after_end: bool = False
    #: Why the WAL could not show it (with ``after_lsn``).
    note: str | None = None

    def stop_point(self) -> StopPoint:
        """The stop point that rebuilds the table as it was just before this event."""
        if self.lsn is not None:
            return StopPoint(lsn=self.lsn)
        if self.after_lsn is not None:  # the first transaction after the last change, on
            return StopPoint(lsn=self.after_lsn if self.after_end else Lsn(self.after_lsn + 1))
        return StopPoint(xid=self.xid)

    def describe(self) -> str:
        what = (
            self.kind.upper() if self.rows is None else f"{self.kind.upper()} of {self.rows} rows"
        )
        relation = f" (relation {self.relation_id})" if self.relation_id is not None else ""
        if self.after_lsn is not None:
            kind = "end LSN" if self.after_end else "commit LSN"
            return (
                f"{what}{relation}, not in the WAL read: after the table's last change "
                f"({kind} {self.after_lsn})"
            )
        xid = f"transaction {self.xid}" if self.xid is not None else "a transaction"
        where = (
            f"commit LSN {self.lsn}" if self.lsn is not None else f"commit end LSN {self.end_lsn}"
        )
        when = f" at {self.time.isoformat()}" if self.time else ""
        return f"{what}{relation} by {xid}, {where}{when}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "commit_lsn": None if self.lsn is None else str(self.lsn),
            "end_lsn": None if self.end_lsn is None else str(self.end_lsn),
            "xid": self.xid,
            "time": self.time.isoformat() if self.time else None,
            "relation_id": self.relation_id,
            "rows": self.rows,
            "found_in": self.found_in,
            "after_lsn": None if self.after_lsn is None else str(self.after_lsn),
            "note": self.note,
            "description": self.describe(),
        }


@dataclass(frozen=True, slots=True)
class TableRelation:
    """One relation that had the table's name: its changes, and how it ended."""

    relation_id: int | None
    files: tuple[int, ...]
    transactions: int
    counts: dict[str, int]
    first_lsn: Lsn | None
    first_time: datetime | None
    last_lsn: Lsn | None
    last_time: datetime | None
    last_xid: int | None
    #: The table has this relation now (it was not dropped).
    exists: bool
    #: The commit that created it, if that is in the WAL read.
    created_lsn: Lsn | None = None
    dropped: DestructiveEvent | None = None
    events: tuple[DestructiveEvent, ...] = ()

    def describe_last(self) -> str:
        return f"transaction {self.last_xid} (commit LSN {self.last_lsn}, {self.last_time})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "relation_id": self.relation_id,
            "files": list(self.files),
            "transactions": self.transactions,
            "counts": dict(self.counts),
            "first_commit": {"lsn": _t(self.first_lsn), "time": _iso(self.first_time)},
            "last_commit": {
                "lsn": _t(self.last_lsn),
                "time": _iso(self.last_time),
                "xid": self.last_xid,
            },
            "exists": self.exists,
            "created_lsn": _t(self.created_lsn),
            "dropped": self.dropped.to_dict() if self.dropped else None,
        }


def _t(value: Lsn | None) -> str | None:
    return None if value is None else str(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(slots=True)
class _Group:
    """A relation being assembled from transactions."""

    oid: int | None = None
    files: set[int] = field(default_factory=set)
    txns: list[tuple[int | None, Lsn | None, Lsn | None, datetime | None, dict[str, int]]] = field(
        default_factory=list
    )


def assemble(
    table: str,
    database: int,
    current: tuple[int, int] | None,
    view: SlotView | None,
    facts: WalFacts | None,
    mass: int,
    *,
    wal: bool,
) -> tuple[tuple[TableRelation, ...], tuple[DestructiveEvent, ...], list[str]]:
    """The table's relations and events, and notes on what could not be told."""
    notes: list[str] = []
    groups = (
        _from_slot(view, facts, database, current, notes)
        if view is not None
        else _from_wal(facts, current, notes)
    )
    relations = []
    for index, group in enumerate(groups):
        events = _events(group, facts, database, view is not None, mass)
        dropped = _drop(group, facts, database) if facts is not None else None
        if dropped is not None and not (current is not None and current[0] == group.oid):
            events.append(dropped)
        else:
            dropped = None
        events.sort(key=lambda e: int(e.lsn or e.end_lsn or 0))
        relations.append(_relation(group, current, facts, dropped, tuple(events)))
        del index
    if not wal and view is not None:
        notes.append(
            f"the WAL was not read, so a DROP of {table} is not shown (no plugin shows one as a "
            "change): its last change and the transactions after it are what the slot tells"
        )
    ordered = sorted(
        (e for r in relations for e in r.events), key=lambda e: int(e.lsn or e.end_lsn or 0)
    )
    return tuple(relations), tuple(ordered), notes


def _from_slot(
    view: SlotView,
    facts: WalFacts | None,
    database: int,
    current: tuple[int, int] | None,
    notes: list[str],
) -> list[_Group]:
    if not view.transactions:
        notes.append(f"the slot holds no change of the table (from {view.start_lsn})")
    groups: list[_Group] = []
    by_oid: dict[int, _Group] = {}
    previous: Lsn | None = None
    for txn in view.transactions:
        row = (txn.xid, txn.commit_lsn, txn.end_lsn, txn.time, dict(txn.counts))
        if view.plugin == "pgoutput":
            key = txn.relation_id if txn.relation_id is not None else -1
            group = by_oid.get(key)
            if group is None:
                group = by_oid[key] = _Group(oid=txn.relation_id)
                groups.append(group)
            group.txns.append(row)
            continue
        file = facts.files_at.get(int(txn.first_change)) if facts and txn.first_change else None
        relids = (
            facts.truncated_at.get(int(txn.truncate_lsn), ()) if facts and txn.truncate_lsn else ()
        )
        if not groups or (
            facts is not None and _dropped_between(groups[-1], facts, database, previous, txn)
        ):
            groups.append(_Group())
        group = groups[-1]
        if file is not None:
            group.files.add(file)
        if relids and group.oid is None and len(relids) == 1:
            group.oid = relids[0]
        group.txns.append(row)
        previous = txn.lsn
    for group in groups:
        if group.oid is None and current is not None and current[1] in group.files:
            group.oid = current[0]
        if group.oid is None and facts is not None:
            group.oid = _oid_of_files(group.files, facts, database)
    return groups


def _oid_of_files(files: set[int], facts: WalFacts, database: int) -> int | None:
    """The oid of a relation never rewritten: its file is numbered like it, and its DROP drops
    the statistics of that number."""
    for drop in facts.drops:
        both = files & drop.dropped_relations(database) & drop.dropped_relfilenodes(database)
        if len(both) == 1:
            return next(iter(both))
    return None


def _dropped_between(
    group: _Group, facts: WalFacts, database: int, after: Lsn | None, txn: StreamTransaction
) -> bool:
    """Whether a DROP of ``group`` committed between its last transaction and ``txn``."""
    upto = txn.commit_lsn if txn.commit_lsn is not None else txn.end_lsn
    for drop in facts.drops:
        if after is not None and drop.lsn <= after:
            continue
        if upto is not None and drop.lsn >= upto:
            break
        if _drops(drop, group, database):
            return True
    return False


def _drops(commit: CommitRecord, group: _Group, database: int) -> bool:
    """Whether ``commit`` dropped the relation: its oid is among the dropped statistics (a
    TRUNCATE or rewrite drops files too, but keeps the relation and its statistics)."""
    if group.oid is not None:
        return group.oid in commit.dropped_relations(database)
    return bool(group.files & commit.dropped_relations(database))


def _from_wal(
    facts: WalFacts | None, current: tuple[int, int] | None, notes: list[str]
) -> list[_Group]:
    assert current is not None
    group = _Group(oid=current[0], files={current[1]})
    if facts is None:
        notes.append("neither the WAL nor a slot could be read: nothing is known but the catalog")
        return [group]
    for row in facts.rows:
        group.txns.append((row.xid, row.lsn, None, row.time, dict(row.counts)))
    rewritten = [t for t in facts.truncates if current[0] in t.relids]
    if rewritten or current[1] in facts.created:
        notes.append(
            "without --slot only the changes since the table's current file was created are "
            "counted (a TRUNCATE or rewrite starts a new file, and the WAL does not say which "
            "earlier file was this table's)"
        )
    return [group]


def _events(
    group: _Group, facts: WalFacts | None, database: int, from_slot: bool, mass: int
) -> list[DestructiveEvent]:
    found: list[DestructiveEvent] = []
    seen_truncates: set[int | None] = set()
    if facts is not None and group.oid is not None:
        for truncate in facts.truncates:
            if group.oid in truncate.relids:
                commit = truncate.commit
                seen_truncates.add(commit.xid)
                found.append(
                    DestructiveEvent(
                        "truncate", commit.lsn, commit.xid, commit.time, group.oid,
                        end_lsn=commit.end_lsn,
                    )
                )  # fmt: skip
    origin = "slot" if from_slot else "WAL"
    for xid, lsn, end, when, counts in group.txns:
        if counts.get("truncate") and xid not in seen_truncates:
            found.append(DestructiveEvent("truncate", lsn, xid, when, group.oid, None, origin, end))
        for op in ("delete", "update"):
            if counts.get(op, 0) > mass:
                found.append(
                    DestructiveEvent(
                        f"mass {op}", lsn, xid, when, group.oid, counts[op], origin, end
                    )
                )
    return found


def _drop(group: _Group, facts: WalFacts, database: int) -> DestructiveEvent | None:
    last = max((int(t[1] or t[2] or 0) for t in group.txns), default=0)
    for drop in facts.drops:
        if int(drop.lsn) > last and _drops(drop, group, database):
            return DestructiveEvent(
                "drop", drop.lsn, drop.xid, drop.time, group.oid, end_lsn=drop.end_lsn
            )
    return None


def _relation(
    group: _Group,
    current: tuple[int, int] | None,
    facts: WalFacts | None,
    dropped: DestructiveEvent | None,
    events: tuple[DestructiveEvent, ...],
) -> TableRelation:
    counts: Counter[str] = Counter()
    for txn in group.txns:
        counts.update(txn[4])
    first = group.txns[0] if group.txns else None
    last = group.txns[-1] if group.txns else None
    created = facts.created.get(group.oid) if facts is not None and group.oid is not None else None
    exists = current is not None and (current[0] == group.oid or current[1] in group.files)
    return TableRelation(
        relation_id=group.oid,
        files=tuple(sorted(group.files)),
        transactions=len(group.txns),
        counts=dict(counts),
        first_lsn=(first[1] or first[2]) if first else None,
        first_time=first[3] if first else None,
        last_lsn=(last[1] or last[2]) if last else None,
        last_time=last[3] if last else None,
        last_xid=last[0] if last else None,
        exists=exists and dropped is None,
        created_lsn=created[1] if created else None,
        dropped=dropped,
        events=events,
    )
