"""What :class:`~walrecover.rebuild.recreation.RecreationJudge` tells the user: the reasons a
result is unproven and the warnings, each naming the transaction and the stop point that
rebuilds the earlier table.

The judge decides; these functions only word its findings, so its rules read without the prose.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ReplayError
from ..stream.lsn import Lsn
from ..stream.model import TableName
from ..stream.walinspect import CommitRecord, waldump_command


@dataclass(slots=True)
class Suspect:
    """A transaction that may have changed the catalog between (or during) the table's changes."""

    xid: int | None
    #: The commit record's start, or its end when the plugin gives only that (test_decoding).
    lsn: Lsn | None
    end: bool = False
    #: The transaction also wrote the table (the catalog change may be among its changes).
    own: bool = False


def transaction(xid: int | None) -> str:
    """A transaction for messages, also where the stream gives no xid (wal2json format 1)."""
    return f"transaction {xid}" if xid is not None else "a transaction (the stream has no xids)"


def blind_warning(
    table: TableName, first_blind: int | None, blind: int, wal_problem: str | None
) -> str:
    """``blind`` transactions wrote the table after earlier ones, and nothing shows whether
    they also dropped and re-created it."""
    more = blind - 1
    others = f" and {more} more" if more else ""
    return (
        f"not checked: whether {transaction(first_blind)}{others}, which wrote "
        f"{table} after earlier transactions had, also dropped and re-created it: a "
        "DROP TABLE and CREATE TABLE inside a transaction that writes the table leave no "
        "trace in this stream (test_decoding, or a capture without commit LSNs), and the WAL "
        f"could not be read: {wal_problem or 'unknown reason'}. With pg_walinspect "
        "installed in the source database walrecover checks it"
    )


def unseen_warning(
    table: TableName,
    into: TableName,
    first: Suspect,
    count: int,
    wal_problem: str | None,
    *,
    stop_set: bool,
) -> str:
    """``count`` transactions after the table's last change changed the catalog, and nothing
    tells whether they dropped it and created it again with no change of the new one."""
    more = f" and {count - 1} more" if count > 1 else ""
    where = (
        "before the stop point"
        if stop_set
        else "in the stream (with no stop point, one of them is likely the DROP)"
    )
    stop = (
        f"--stop-before-xid {first.xid}"
        if first.xid is not None
        else f"--stop-before-lsn {first.lsn}"
        if first.lsn is not None and not first.end
        else "a stop point before it"
    )
    return (
        f"not checked: whether {table} was dropped and created again after its last change: "
        f"{transaction(first.xid)}{more} changed the catalog after it {where}, a table created "
        "again with no change of its own leaves no trace in this stream, and the source cannot "
        f"be asked without the table's oid from the WAL ({wal_problem or 'unknown reason'}). If "
        f"it was, {into} holds the earlier table's rows: {stop} rebuilds them exactly; with "
        "pg_walinspect installed in the source database walrecover checks it (slots and "
        "captures with an LSN per change)"
    )


def doubt_reason(table: TableName, into: TableName, commit: CommitRecord) -> str:
    """The WAL cannot tell a rewrite from a DROP in ``commit``."""
    return (
        f"{table} may have been dropped and re-created in transaction "
        f"{commit.xid} (commit LSN {commit.lsn}): it replaced the relation file the "
        f"earlier changes were written to and dropped a relation whose oid the WAL does "
        f"not tie to {table}, so walrecover cannot tell a rewrite from a DROP; if it"
        f" was a DROP, recover the earlier table with --stop-before-lsn {commit.lsn}, "
        f"else {into} is exact"
    )


def truncate_reason(table: TableName, into: TableName, xid: int | None, lsn: Lsn | None) -> str:
    """Why a format 1 stream cannot show that the table was emptied (issue 8, D1)."""
    which = transaction(xid) + (f" (commit LSN {lsn})" if lsn is not None else "")
    return (
        f"{table} may have been emptied by a TRUNCATE in {which} between its changes: "
        "wal2json format-version 1 prints a TRUNCATE as a transaction without change, so "
        f"rows it removed may be back in {into}; read the slot with -o "
        "format-version=2 or --via-plugin test_decoding|pgoutput (a capture: capture again "
        "with -o format-version=2), which carry TRUNCATE"
    )


def format1_duplicate(error: ReplayError, refused: str) -> ReplayError:
    """A row came back twice in a wal2json format 1 stream: most likely a TRUNCATE that format
    1 left out (the oracle's D1), which the plain message would call a DROP."""
    return ReplayError(
        f"{refused}: a row came back twice: wal2json format-version 1 leaves a TRUNCATE out of "
        "the stream, so rows it removed come back (a DROP TABLE and re-creation looks the "
        "same); read the slot with -o format-version=2 or --via-plugin test_decoding|pgoutput "
        "(a capture: capture again with -o format-version=2), which carry TRUNCATE",
        **{name: value for name, value in error.facts.items() if name != "refused"},
    )


def unchecked_truncate_reason(
    table: TableName, into: TableName, first: int | None, count: int, wal_problem: str | None
) -> str:
    """Format 1 without the WAL: no transaction that wrote the table, or came after its first
    change, can be shown not to have truncated it."""
    which = transaction(first) + (f" and {count - 1} more" if count > 1 else "")
    why = wal_problem or "the stream does not carry the transaction ids and change LSNs to find"
    return (
        f"{table} may have been emptied by a TRUNCATE that wal2json format-version 1 left out "
        f"of the stream: whether {which} truncated it could not be checked against the WAL "
        f"({why}), so rows a TRUNCATE removed may be back in {into}; read the slot with -o "
        "format-version=2 or --via-plugin test_decoding|pgoutput (a capture: capture again "
        "with -o format-version=2), which carry TRUNCATE"
    )


def stream_reason(
    table: TableName,
    suspect: Suspect,
    before: Lsn | None,
    after: Lsn | None,
    more: int,
    wal_problem: str | None,
) -> str:
    """Without the WAL: ``suspect`` (and ``more`` others) changed the catalog between the
    table's changes at ``before`` and ``after``, which may have been a DROP TABLE."""
    where = (
        "no LSN in the stream"
        if suspect.lsn is None
        else f"commit ending at LSN {suspect.lsn}"
        if suspect.end
        else f"commit LSN {suspect.lsn}"
    )
    between = (
        " while writing it"
        if suspect.own
        else f" between its changes at LSN {before} and {after}"
        if before is not None and after is not None
        else " between two of its changes"
    )
    others = f" ({more} more such transaction{'s' if more != 1 else ''})" if more else ""
    stop = (
        f"recover the earlier table with --stop-before-lsn {suspect.lsn}"
        if suspect.lsn is not None
        else f"recover the earlier table with --stop-before-xid {suspect.xid}"
        if suspect.xid is not None
        else "the stream gives neither its LSN nor its xid to stop before: capture again"
        " with them (wal2json: -o include-xids=1 -o include-lsn=1)"
    )
    check = waldump_command(suspect.lsn if suspect.own else before, after, "dropped stats|rels:")
    return (
        f"{table} may have been dropped and re-created under the same name: "
        f"{transaction(suspect.xid)} ({where}) changed the catalog{between}{others}, and "
        "the stream cannot tell a DROP TABLE from ANALYZE or other DDL; the WAL could not "
        f"be read: {wal_problem or 'unknown reason'}. If it was a DROP, {stop}. To let "
        "walrecover judge it exactly, CREATE EXTENSION pg_walinspect in the source database "
        f"(PostgreSQL 15+) and rerun with --force; or check on the server: {check}"
    )
