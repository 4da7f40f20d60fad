"""The rules of ``walrecover doctor``: a table's facts and its slots and baselines, judged.

:class:`Verdict` collects what was found about one table (critical, warning, note) and makes
its one verdict line; the functions below each judge one aspect and tell the verdict. The
doctor (``doctor.py``) reads the facts and assembles the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ..db import Connection
from ..stream.model import TableName
from .facts import TableFacts
from .points import RecoveryPoint
from .slots import SlotState

SEVERITIES = ("ok", "warning", "critical")
#: A catalog_xmin this many transactions old is reported (bloat; wraparound at about 2e9).
OLD_CATALOG_XMIN = 500_000_000


class Verdict:
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


def prerequisites(
    conn: Connection,
    table: TableName,
    facts: TableFacts,
    wal_level: str,
    protect: str,
    verdict: Verdict,
) -> None:
    """What any recovery of the table needs: the table, logical WAL, a replica identity."""
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


def coverage(
    table: TableName,
    facts: TableFacts,
    usable: Sequence[SlotState],
    known: dict[str, set[str]],
    verdict: Verdict,
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


def slot_health(usable: Sequence[SlotState], covering: set[str], verdict: Verdict) -> None:
    """Warn about covering slots whose WAL may go, and slots that hold the catalog back."""
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


def reach(
    conn: Connection,
    good: Sequence[RecoveryPoint],
    covering: set[str],
    partial: set[str],
    protect: str,
    verdict: Verdict,
) -> datetime | None:
    """How far back the table can be rebuilt: the oldest usable baseline's time (returned),
    else only the rows written since a slot began, else not at all."""
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
    return since


def _identity(table: TableName, facts: TableFacts, verdict: Verdict) -> None:
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
