"""The result of ``walrecover inspect``: what the retained WAL (and the slot) says about one
table, its destructive events, and the event ``recover --stop-before KIND`` stops before.

:class:`Inspection` is built by :func:`~walrecover.incident.inspect.inspect_table`; besides its
facts it chooses the event to stop before (:meth:`Inspection.choose`, with the reason when the
choice is not clear) and writes the ``walrecover recover`` command for each event.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..db import safe_dsn
from ..errors import StopPointError
from ..stream.lsn import Lsn
from .events import DestructiveEvent, TableRelation
from .slotview import StreamTransaction


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
