"""Open a reader of the source's WAL and collect what it says about one table.

Two readers give the same records: pg_walinspect where it is installed in the source database
(or, only with ``--install-walinspect``, after walrecover installs it: a write to the source),
and ``pg_waldump`` on a directory of WAL segment files (``--wal-dir``, or the server's own
``pg_wal`` when walrecover runs on the database host and may read it). :func:`collect` reads the
range once and keeps the commits that dropped relations, the ``TRUNCATE`` records, the files
created, the relation file of chosen records, and the row records of chosen files, attributed to
the transaction that committed them (aborted ones are left out).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import psycopg

from ..db import Connection, connect, one
from ..drill.cluster import find_program
from ..errors import WalUnavailable, first_line
from ..stream.lsn import Lsn
from ..stream.sources import wait_for_flush
from ..stream.walinspect import WalInspect
from ..stream.walrecords import CommitRecord, WalRecord, parse_commit, parse_relids
from .waldump import WalDump

_TUPLES = re.compile(r"(\d+) tuples|ntuples: (\d+)")
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_ROW_OPS = {
    "INSERT": "insert",
    "MULTI_INSERT": "insert",
    "UPDATE": "update",
    "HOT_UPDATE": "update",
    "DELETE": "delete",
}


class WalReader(Protocol):
    """pg_walinspect or pg_waldump: the records :func:`~walrecover.stream.walrecords.wanted`
    keeps."""

    def scan(
        self,
        start: Lsn,
        end: Lsn,
        *,
        files: frozenset[int] = ...,
        lsns: frozenset[int] = ...,
    ) -> Iterator[WalRecord]: ...


@dataclass(frozen=True, slots=True)
class OpenedWal:
    """A WAL reader, what it is (for the user), and the oldest LSN it can read (None: ask)."""

    reader: WalReader
    description: str
    first_lsn: Lsn | None
    #: What walrecover did to the source to read it (the extension it installed), if anything.
    installed: str | None = None


def open_wal(
    conn: Connection, dsn: str | None, *, wal_dir: Path | None, install: bool
) -> tuple[OpenedWal | None, str]:
    """The best WAL reader for the source, or None and why there is none (for the user)."""
    if wal_dir is not None:
        dump = WalDump(wal_dir)
        return OpenedWal(dump, dump.describe(), dump.first_lsn), ""
    problems: list[str] = []
    installed = None
    inspect_conn = connect(dsn, autocommit=True, role="source")
    try:
        try:
            wal = WalInspect.open(inspect_conn)
        except WalUnavailable as exc:
            if not (install and exc.facts.get("reason") == "not installed"):
                raise
            inspect_conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            installed = "pg_walinspect"
            wal = WalInspect.open(inspect_conn)
        return OpenedWal(wal, "pg_walinspect", None, installed), ""
    except (WalUnavailable, psycopg.Error) as exc:
        inspect_conn.close()
        problems.append(exc.message if isinstance(exc, WalUnavailable) else first_line(exc))
    local, why = _local_wal(conn)
    if local is not None:
        try:
            dump = WalDump(local)
            return OpenedWal(dump, dump.describe(), dump.first_lsn), ""
        except WalUnavailable as exc:
            why = exc.message
    problems.append(why)
    return None, "; ".join(problems)


def _local_wal(conn: Connection) -> tuple[Path | None, str]:
    """The server's ``pg_wal`` if this machine holds that server's data directory and may read
    it (the system identifiers must match: another cluster at the same path is not it)."""
    try:
        (data,) = one(conn, "SHOW data_directory")
        (system,) = one(conn, "SELECT system_identifier::text FROM pg_control_system()")
    except psycopg.Error as exc:
        return None, f"cannot ask where the server's WAL is ({first_line(exc)})"
    wal = Path(str(data)) / "pg_wal"
    if not os.access(wal, os.R_OK | os.X_OK):
        return None, (
            f"the server's WAL directory {wal} is not readable here (walrecover runs on another "
            "machine or as another user): copy its segment files and give --wal-dir"
        )
    program = find_program("pg_controldata")
    if program is not None:
        try:
            out = subprocess.run(
                [str(program), str(data)],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "LC_ALL": "C"},
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        match = re.search(r"Database system identifier:\s*(\d+)", out)
        if match is not None and match.group(1) != str(system):
            return None, f"{wal} belongs to another cluster than the source: give --wal-dir"
    return wal, ""


def wal_range(conn: Connection, opened: OpenedWal, start: Lsn | None) -> tuple[Lsn, Lsn]:
    """[start, end) to read: from ``start`` (the slot's restart LSN) or the oldest WAL file the
    server (or the directory) has, to where the server's WAL is now (once flushed)."""
    if bool(one(conn, "SELECT pg_is_in_recovery()")[0]):
        (end_text,) = one(conn, "SELECT pg_last_wal_replay_lsn()::text")
        end = Lsn.parse(str(end_text))
    else:
        end = wait_for_flush(conn)  # what was committed when inspect began, once flushed
    oldest = opened.first_lsn
    if oldest is None:
        try:
            (name, size) = one(
                conn,
                "SELECT min(name), current_setting('wal_segment_size')"
                " FROM pg_ls_waldir() WHERE name ~ %s",
                (_SEGMENT.pattern,),
            )
        except psycopg.Error as exc:
            raise WalUnavailable(
                f"cannot list the server's WAL files ({first_line(exc)}): give --slot, whose "
                "restart LSN says where to start",
                reason="privilege",
            ) from None
        oldest = _segment_start(str(name), _bytes(str(size))) if name else end
    return (max(start, oldest) if start is not None else oldest), end


def _bytes(setting: str) -> int:
    units = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for unit, factor in units.items():
        if setting.endswith(unit):
            return int(setting[: -len(unit)]) * factor
    return int(setting)


def _segment_start(name: str, size: int) -> Lsn:
    per_id = 0x100000000 // size
    return Lsn((int(name[8:16], 16) * per_id + int(name[16:24], 16)) * size)


@dataclass(frozen=True, slots=True)
class RowTransaction:
    """A committed transaction's row records in the files asked for, by operation."""

    xid: int
    lsn: Lsn
    time: datetime | None
    counts: dict[str, int]
    files: frozenset[int]


@dataclass(frozen=True, slots=True)
class TruncateRecord:
    """A committed ``TRUNCATE``: the relations it emptied and its transaction's commit."""

    relids: tuple[int, ...]
    commit: CommitRecord


@dataclass(slots=True)
class WalFacts:
    """What one pass over the WAL found (see :func:`collect`)."""

    drops: list[CommitRecord] = field(default_factory=list)
    truncates: list[TruncateRecord] = field(default_factory=list)
    #: Relation file -> (xid, LSN) of the record that created it.
    created: dict[int, tuple[int, Lsn]] = field(default_factory=dict)
    #: Record LSN -> the relation file it wrote, for the LSNs asked for.
    files_at: dict[int, int] = field(default_factory=dict)
    #: Record LSN -> the relations a TRUNCATE record at that LSN emptied.
    truncated_at: dict[int, tuple[int, ...]] = field(default_factory=dict)
    rows: list[RowTransaction] = field(default_factory=list)


def collect(
    reader: WalReader,
    start: Lsn,
    end: Lsn,
    database: int,
    *,
    files: frozenset[int] = frozenset(),
    lsns: frozenset[int] = frozenset(),
) -> WalFacts:
    """One pass over [start, end): the facts of :class:`WalFacts` for ``database``."""
    facts = WalFacts()
    pending = _Pending()
    for record in reader.scan(start, end, files=files, lsns=lsns):
        rm, kind = record.resource_manager, record.record_type
        if rm == "Transaction":
            info = parse_commit(record.lsn, record.end_lsn, record.xid, kind, record.description)
            pending.end(info, kind in ("COMMIT", "COMMIT_PREPARED"), database, facts)
        elif rm == "Storage":
            found = record.description.strip().split("/")
            if (
                len(found) == 3
                and found[0] == "base"
                and found[2].isdigit()
                and int(found[1]) == database
            ):
                pending.created.setdefault(record.xid, []).append(int(found[2]))
        elif kind == "TRUNCATE":
            relids = parse_relids(record.description)
            pending.truncates.setdefault(record.xid, []).append(relids)
            facts.truncated_at[int(record.lsn)] = relids
        else:
            _row(record, facts, pending, files, lsns)
    return facts


@dataclass(slots=True)
class _Pending:
    """What each running transaction did so far (by xid), kept until its commit or abort."""

    rows: dict[int, Counter[str]] = field(default_factory=dict)
    files: dict[int, set[int]] = field(default_factory=dict)
    truncates: dict[int, list[tuple[int, ...]]] = field(default_factory=dict)
    created: dict[int, list[int]] = field(default_factory=dict)

    def end(self, info: CommitRecord, commit: bool, database: int, facts: WalFacts) -> None:
        """A transaction (and its subtransactions) ended: what it did counts if it committed."""
        counts: Counter[str] = Counter()
        touched: set[int] = set()
        for xid in (info.xid, *info.subxacts):
            counts.update(self.rows.pop(xid, Counter()))
            touched |= self.files.pop(xid, set())
            for relids in self.truncates.pop(xid, []):
                if commit:
                    facts.truncates.append(TruncateRecord(relids, info))
            for created in self.created.pop(xid, []):
                if commit:
                    facts.created[created] = (info.xid, info.lsn)
        if not commit:
            return
        if info.dropped_relations(database) or info.dropped_relfilenodes(database):
            facts.drops.append(info)
        if counts:
            facts.rows.append(
                RowTransaction(info.xid, info.lsn, info.time, dict(counts), frozenset(touched))
            )


def _row(
    record: WalRecord,
    facts: WalFacts,
    pending: _Pending,
    files: frozenset[int],
    lsns: frozenset[int],
) -> None:
    found = record.file
    if found is None:
        return
    if int(record.lsn) in lsns:
        facts.files_at[int(record.lsn)] = found.relfilenode
    op = _ROW_OPS.get(record.record_type)
    if op is None or found.relfilenode not in files:
        return
    number = 1
    if record.record_type == "MULTI_INSERT":
        match = _TUPLES.search(record.description)
        number = int(match.group(1) or match.group(2)) if match else 1
    pending.rows.setdefault(record.xid, Counter())[op] += number
    pending.files.setdefault(record.xid, set()).add(found.relfilenode)
