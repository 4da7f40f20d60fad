"""The WAL records walrecover reads, and the parsing of their text.

pg_walinspect and pg_waldump describe a record in text; this module turns that text into values:
a commit record (:class:`CommitRecord`: its xid, time, subtransactions, the relation files and
statistics it dropped), a row record's relation file (:class:`RelFile`, from its block
reference), a ``TRUNCATE``'s relation oids, a created file (:class:`StorageCreated`), and which
records a scan keeps (:func:`wanted`). The readers are :class:`~walrecover.stream.walinspect.
WalInspect` (pg_walinspect) and :class:`~walrecover.incident.waldump.WalDump` (pg_waldump).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from .lsn import Lsn

#: ``dropped stats`` kind of a relation (PostgreSQL's PGSTAT_KIND_RELATION).
STATS_KIND_RELATION = 2

#: The record types of a commit (a prepared transaction's is COMMIT_PREPARED).
COMMIT_TYPES = ("COMMIT", "COMMIT_PREPARED")
_RELPATH = re.compile(r"^(?:base/(\d+)/(\d+)|global/(\d+)|pg_tblspc/(\d+)/[^/]+/(\d+)/(\d+))$")
_BLOCK_REF = re.compile(r"rel (\d+)/(\d+)/(\d+)")
_STAT = re.compile(r"^(\d+)/(\d+)/(\d+)$")
_PREPARED = re.compile(r"^(\d+): ")
_RELIDS = re.compile(r"(?<![a-z])relids:? \[?([0-9 ,]+)")


@dataclass(frozen=True, slots=True)
class RelFile:
    """A relation's file: tablespace, database and relfilenode (0 database for shared ones)."""

    tablespace: int
    database: int
    relfilenode: int


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """One commit record (``COMMIT`` or ``COMMIT PREPARED``) as pg_walinspect describes it."""

    #: Start and end of the record: the stream's commit LSN and the position after it.
    lsn: Lsn
    end_lsn: Lsn
    #: The top-level transaction (a prepared one's own xid, not the committing session's).
    xid: int
    time: datetime | None
    subxacts: tuple[int, ...]
    #: Relation files the commit dropped (temporary relations' files are left out).
    dropped_files: tuple[RelFile, ...]
    #: ``(kind, database oid, object oid)`` of the statistics the commit dropped.
    dropped_stats: tuple[tuple[int, int, int], ...]
    #: The transaction changed the catalog (it carries invalidation messages).
    catalog: bool
    prepared: bool = False

    def dropped_relations(self, database: int) -> frozenset[int]:
        """Oids of the relations of ``database`` this commit dropped (PostgreSQL 15+)."""
        return frozenset(
            oid
            for kind, db, oid in self.dropped_stats
            if kind == STATS_KIND_RELATION and db == database
        )

    def dropped_relfilenodes(self, database: int) -> frozenset[int]:
        """Relfilenodes of ``database`` whose files this commit dropped."""
        return frozenset(f.relfilenode for f in self.dropped_files if f.database == database)


@dataclass(frozen=True, slots=True)
class WalRecord:
    """One WAL record as pg_walinspect describes it (pg_waldump's text is turned into the same).

    ``record_type`` without the ``+INIT`` flag; ``description`` without the record type.
    """

    lsn: Lsn
    end_lsn: Lsn
    xid: int
    resource_manager: str
    record_type: str
    description: str
    block_ref: str

    @property
    def file(self) -> RelFile | None:
        """The relation file of the record's first block reference (None if it has none)."""
        return parse_block_ref(self.block_ref)


#: The records :meth:`WalInspect.scan` and ``pg_waldump`` readers yield: transaction ends,
#: created files, TRUNCATEs, and the row records (Heap/Heap2) of the files asked for.
SCAN_TYPES = ("COMMIT", "COMMIT_PREPARED", "ABORT", "ABORT_PREPARED")


def wanted(record: WalRecord, files: frozenset[int], lsns: frozenset[int]) -> bool:
    """Whether a scan keeps ``record`` (the filter pg_walinspect runs on the server)."""
    rm = record.resource_manager
    if rm == "Transaction":
        return record.record_type in SCAN_TYPES
    if rm == "Storage":
        return record.record_type == "CREATE"
    if rm not in ("Heap", "Heap2"):
        return False
    if record.record_type == "TRUNCATE" or int(record.lsn) in lsns:
        return True
    found = record.file
    return found is not None and found.relfilenode in files


@dataclass(frozen=True, slots=True)
class StorageCreated:
    """A relation file created by a transaction (a new table, index, or a rewrite's new file)."""

    lsn: Lsn
    xid: int
    file: RelFile


def parse_commit(
    lsn: Lsn, end_lsn: Lsn, xid: int, record_type: str, description: str
) -> CommitRecord:
    """A :class:`CommitRecord` from one pg_walinspect row (``xact_desc`` text, PG 15+)."""
    text = description
    prepared = record_type == "COMMIT_PREPARED"
    match = _PREPARED.match(text)
    if match is not None:  # COMMIT PREPARED: "<prepared xid>: <time>; ..."
        xid = int(match.group(1))
        text = text[match.end() :]
    parts = [part.strip() for part in text.split(";")]
    when: datetime | None = None
    try:
        when = datetime.fromisoformat(parts[0])
    except ValueError:
        when = None
    fields: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, value = part.partition(":")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    return CommitRecord(
        lsn=lsn,
        end_lsn=end_lsn,
        xid=xid,
        time=when,
        subxacts=tuple(int(x) for x in fields.get("subxacts", "").split() if x.isdigit()),
        dropped_files=tuple(
            f for f in (parse_relpath(p) for p in fields.get("rels", "").split()) if f is not None
        ),
        dropped_stats=tuple(
            (int(m.group(1)), int(m.group(2)), int(m.group(3)))
            for m in (_STAT.match(s) for s in fields.get("dropped stats", "").split())
            if m is not None
        ),
        catalog="inval msgs" in fields or "rels" in fields or "dropped stats" in fields,
        prepared=prepared,
    )


def parse_relpath(path: str) -> RelFile | None:
    """``base/16384/16394`` (or global/, pg_tblspc/) as a :class:`RelFile`; None if temporary."""
    match = _RELPATH.match(path)
    if match is None:
        return None  # base/16384/t3_16400: a temporary relation, never in logical decoding
    g = match.groups()
    if g[0] is not None:
        return RelFile(1663, int(g[0]), int(g[1]))
    if g[2] is not None:
        return RelFile(1664, 0, int(g[2]))
    return RelFile(int(g[3]), int(g[4]), int(g[5]))


def parse_relids(description: str) -> tuple[int, ...]:
    """The oids of a ``TRUNCATE`` record's description: ``nrelids 2 relids 16390 16400``
    (PostgreSQL 15), ``nrelids: 2, relids: [16390, 16400]`` (later versions)."""
    match = _RELIDS.search(description)
    return tuple(int(x) for x in re.split(r"[ ,]+", match.group(1).strip()) if x) if match else ()


def parse_block_ref(block_ref: str | None) -> RelFile | None:
    """The relation file of a record's first block reference, or None if it has none."""
    match = _BLOCK_REF.search(block_ref or "")
    if match is None:
        return None
    return RelFile(int(match.group(1)), int(match.group(2)), int(match.group(3)))
