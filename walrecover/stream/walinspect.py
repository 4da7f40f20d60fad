"""Read the source's WAL through pg_walinspect: commit records, new storage, a record's relation.

Logical decoding shows row changes only; what happened to a *table* is in the WAL records around
them. A ``DROP TABLE`` is a commit record listing the relation files it dropped
(``rels: base/16384/16394``) and, from PostgreSQL 15 on, the statistics of the relations it
dropped (``dropped stats: 2/16384/16394``: kind 2 is a relation, then database and relation oid).
``TRUNCATE``, ``VACUUM FULL``, ``CLUSTER`` and rewriting ``ALTER TABLE`` also drop relation files,
but keep the relation (their only dropped stats are of transient heaps made in the same
transaction). A committed subtransaction is listed by its top-level commit (``subxacts: 736 737``).
Each row change's record names the relation file it wrote (``blkref #0: rel 1663/16384/16394``).

pg_walinspect is an extension: walrecover uses it where it is already installed (``CREATE
EXTENSION`` is a write to the source, so it is never done implicitly). :meth:`WalInspect.open`
raises :class:`~walrecover.errors.WalUnavailable` saying why it cannot be used and what to do;
:func:`waldump_command` is the same question asked of ``pg_waldump`` on the server. The records'
types and the parsing of their text are in :mod:`.walrecords`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from ..db import Connection, one
from ..errors import WalUnavailable, first_line
from .lsn import Lsn
from .walrecords import (
    COMMIT_TYPES,
    SCAN_TYPES,
    CommitRecord,
    RelFile,
    StorageCreated,
    WalRecord,
    parse_block_ref,
    parse_commit,
    parse_relids,
    parse_relpath,
    wanted,
)

# The record types and parsers live in walrecords.py; importing them from here works too.
__all__ = [
    "WINDOW",
    "CommitRecord",
    "RelFile",
    "StorageCreated",
    "WalInspect",
    "WalRecord",
    "parse_block_ref",
    "parse_commit",
    "parse_relids",
    "waldump_command",
    "wanted",
]

#: pg_walinspect materialises each call's rows: read long ranges in windows of this many bytes.
WINDOW = 256 << 20


class WalInspect:
    """pg_walinspect's functions in one database, on a connection this object owns.

    WAL is cluster-wide: any database of the server with the extension reads the same records.
    """

    def __init__(self, conn: Connection, schema: str, database: int) -> None:
        self.conn = conn
        self.schema = schema
        #: The oid of the database this connection is in (relations are looked up here).
        self.database = database

    @classmethod
    def open(cls, conn: Connection) -> WalInspect:
        """Use pg_walinspect on ``conn`` (autocommit); :class:`WalUnavailable` says why not."""
        try:
            version = int(one(conn, "SHOW server_version_num")[0])
            if version < 150000:
                raise WalUnavailable(
                    f"the server is PostgreSQL {version // 10000}, and pg_walinspect needs 15 "
                    "or later",
                    reason="version",
                )
            row = conn.execute(
                "SELECT n.nspname::text, current_database()::text,"
                " (SELECT oid::bigint FROM pg_database WHERE datname = current_database())"
                " FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                " WHERE e.extname = 'pg_walinspect'"
            ).fetchone()
            if row is None:
                (database,) = one(conn, "SELECT current_database()::text")
                raise WalUnavailable(
                    f"pg_walinspect is not installed in database {database!r}, and walrecover "
                    "never installs it itself (CREATE EXTENSION is a write to the source)",
                    reason="not installed",
                )
            schema, database, oid = row
            function = sql.Identifier(schema, "pg_get_wal_records_info").as_string(conn)
            allowed = one(
                conn,
                "SELECT has_function_privilege(%s, 'EXECUTE'), current_user::text",
                (f"{function}(pg_lsn, pg_lsn)",),
            )
        except psycopg.Error as exc:
            raise WalUnavailable(
                f"cannot check for pg_walinspect ({first_line(exc)})", reason="error"
            ) from None
        if not allowed[0]:
            raise WalUnavailable(
                f"role {allowed[1]!r} may not use pg_walinspect in database {database!r} "
                f"(GRANT pg_read_server_files TO {allowed[1]}, or use a superuser)",
                reason="privilege",
            )
        return cls(conn, schema, int(oid))

    def _function(self, name: str) -> sql.Composable:
        return sql.Identifier(self.schema, name)

    def readable_end(self, end: Lsn | None = None) -> Lsn:
        """``end`` clamped to the WAL the server has flushed (or replayed, on a standby)."""
        try:
            (flushed,) = one(
                self.conn,
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                " ELSE pg_current_wal_flush_lsn() END)::text",
            )
        except psycopg.Error as exc:
            raise WalUnavailable(
                f"cannot read the server's WAL position ({first_line(exc)})", reason="error"
            ) from None
        last = Lsn.parse(flushed)
        return last if end is None or end > last else end

    def _records(
        self, start: Lsn, end: Lsn | None, where: sql.Composable, params: tuple[Any, ...] = ()
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of pg_get_wal_records_info over [start, end) filtered on the server, in windows."""
        stop = self.readable_end(end)
        query = sql.SQL(
            "SELECT (start_lsn - '0/0'::pg_lsn)::bigint, (end_lsn - '0/0'::pg_lsn)::bigint,"
            " xid::text::bigint, resource_manager, record_type, description, block_ref"
            " FROM {}(%s::pg_lsn, %s::pg_lsn) WHERE {} ORDER BY start_lsn"
        ).format(self._function("pg_get_wal_records_info"), where)
        position = start
        while position < stop:
            upto = Lsn(min(int(position) + WINDOW, int(stop)))
            try:
                rows = self.conn.execute(query, (str(position), str(upto), *params)).fetchall()
            except psycopg.Error as exc:
                raise WalUnavailable(
                    f"pg_walinspect cannot read the WAL from {position} to {upto} "
                    f"({first_line(exc)})",
                    reason="unreadable",
                    lsn=position,
                ) from None
            yield from rows
            position = upto

    def commits(
        self,
        start: Lsn,
        end: Lsn | None = None,
        *,
        catalog_only: bool = False,
        xid: int | None = None,
    ) -> Iterator[CommitRecord]:
        """Commit records from ``start`` to ``end`` (default: all the server has flushed).

        ``catalog_only``: only commits that changed the catalog or dropped relation files.
        ``xid``: only the commit of that transaction, or of the one it is a subtransaction of.
        """
        where = sql.SQL("resource_manager = 'Transaction' AND record_type IN ({})").format(
            sql.SQL(", ").join(map(sql.Literal, COMMIT_TYPES))
        )
        params: tuple[str, ...] = ()
        if catalog_only:
            where = sql.SQL(
                "{} AND (description LIKE '%%inval msgs%%' OR description LIKE '%%rels:%%'"
                " OR description LIKE '%%dropped stats%%')"
            ).format(where)
        if xid is not None:
            # The top-level xid, a prepared transaction's "<xid>: " prefix, or a listed subxact.
            where = sql.SQL(
                "{} AND (xid::text = %s OR description LIKE %s OR description ~ %s)"
            ).format(where)
            params = (str(xid), f"{xid}: %", rf"subxacts:[ 0-9]* {xid}(\D|$)")
        for lsn, end_lsn, record_xid, _rm, record_type, description, _ in self._records(
            start, end, where, params
        ):
            yield parse_commit(Lsn(lsn), Lsn(end_lsn), int(record_xid), record_type, description)

    def scan(
        self,
        start: Lsn,
        end: Lsn,
        *,
        files: frozenset[int] = frozenset(),
        lsns: frozenset[int] = frozenset(),
    ) -> Iterator[WalRecord]:
        """The records :func:`wanted` keeps in [start, end), filtered on the server."""
        rows = self._scan_filter(files, lsns)
        for lsn, end_lsn, xid, rm, record_type, description, block_ref in self._records(
            start, end, rows[0], rows[1]
        ):
            yield WalRecord(
                Lsn(lsn),
                Lsn(end_lsn),
                int(xid),
                str(rm),
                str(record_type).removesuffix("+INIT"),
                str(description or ""),
                str(block_ref or ""),
            )

    @staticmethod
    def _scan_filter(
        files: frozenset[int], lsns: frozenset[int]
    ) -> tuple[sql.Composable, tuple[Any, ...]]:
        where = sql.SQL(
            "(resource_manager = 'Transaction' AND record_type IN ({}))"
            " OR (resource_manager = 'Storage' AND record_type = 'CREATE')"
            " OR (resource_manager = 'Heap' AND record_type = 'TRUNCATE')"
        ).format(sql.SQL(", ").join(map(sql.Literal, SCAN_TYPES)))
        params: list[Any] = []
        if files:
            where = sql.SQL(
                "{} OR (resource_manager IN ('Heap', 'Heap2') AND block_ref ~ %s)"
            ).format(where)
            numbers = "|".join(str(f) for f in sorted(files))
            params.append(rf"rel \d+/\d+/({numbers})([^0-9]|$)")
        if lsns:
            where = sql.SQL("{} OR (start_lsn - '0/0'::pg_lsn)::bigint = ANY(%s::bigint[])").format(
                where
            )
            params.append(sorted(lsns))
        return sql.SQL("({})").format(where), tuple(params)

    def storage_created(self, start: Lsn, end: Lsn | None = None) -> Iterator[StorageCreated]:
        """Relation files created from ``start`` to ``end`` (``Storage/CREATE`` records)."""
        where = sql.SQL("resource_manager = 'Storage' AND record_type = 'CREATE'")
        for lsn, _end, xid, _rm, _type, description, _ in self._records(start, end, where):
            found = parse_relpath(description.strip())
            if found is not None:
                yield StorageCreated(Lsn(lsn), int(xid), found)

    def catalog_history(
        self, start: Lsn, end: Lsn | None = None
    ) -> tuple[list[CommitRecord], list[StorageCreated]]:
        """Catalog-changing commits and created relation files in one pass over the range."""
        where = sql.SQL(
            "(resource_manager = 'Transaction' AND record_type IN ({}) AND"
            " (description LIKE '%%inval msgs%%' OR description LIKE '%%rels:%%'"
            " OR description LIKE '%%dropped stats%%'))"
            " OR (resource_manager = 'Storage' AND record_type = 'CREATE')"
        ).format(sql.SQL(", ").join(map(sql.Literal, COMMIT_TYPES)))
        commits: list[CommitRecord] = []
        created: list[StorageCreated] = []
        for lsn, end_lsn, xid, rm, record_type, description, _ in self._records(start, end, where):
            if rm == "Storage":
                found = parse_relpath(description.strip())
                if found is not None:
                    created.append(StorageCreated(Lsn(lsn), int(xid), found))
            else:
                commits.append(
                    parse_commit(Lsn(lsn), Lsn(end_lsn), int(xid), record_type, description)
                )
        return commits, created

    def record_at(self, lsn: Lsn) -> tuple[str, str, str, str | None] | None:
        """(resource manager, record type, description, block refs) of the record starting at
        ``lsn``; None if no record starts there."""
        query = sql.SQL(
            "SELECT (start_lsn - '0/0'::pg_lsn)::bigint, resource_manager, record_type,"
            " description, block_ref FROM {}(%s::pg_lsn)"
        ).format(self._function("pg_get_wal_record_info"))
        try:
            row = self.conn.execute(query, (str(lsn),)).fetchone()
        except psycopg.Error as exc:
            raise WalUnavailable(
                f"pg_walinspect cannot read the WAL record at {lsn} ({first_line(exc)})",
                reason="unreadable",
                lsn=lsn,
            ) from None
        if row is None or int(row[0]) != int(lsn):
            return None
        return str(row[1]), str(row[2]), str(row[3] or ""), row[4]

    def relfile_at(self, lsn: Lsn) -> RelFile | None:
        """The relation file the record starting at ``lsn`` wrote; None if it names none."""
        record = self.record_at(lsn)
        return None if record is None else parse_block_ref(record[3])

    def truncations(self, start: Lsn, end: Lsn) -> list[tuple[int, tuple[int, ...]]]:
        """(xid, relation oids) of each ``TRUNCATE`` record in [start, end): what tells a
        TRUNCATE from a rewrite (``VACUUM FULL``, ``CLUSTER``, ``ALTER TABLE``), which replace
        the relation's file alike but log no such record."""
        where = sql.SQL("resource_manager = 'Heap' AND record_type = 'TRUNCATE'")
        rows = self._records(start, end, where)
        return [(int(row[2]), parse_relids(str(row[5] or ""))) for row in rows]

    def truncated_at(self, lsn: Lsn) -> tuple[int, ...]:
        """The oids of the relations a ``TRUNCATE`` record at ``lsn`` truncated (else none)."""
        record = self.record_at(lsn)
        if record is None or record[1] != "TRUNCATE":
            return ()
        return parse_relids(record[2])

    def first_write(
        self, file: RelFile, start: Lsn, end: Lsn, *, before: CommitRecord | None = None
    ) -> Lsn | None:
        """The first record in [start, end) that wrote to ``file`` by a transaction that
        committed (then or later; when ``before`` is given, in that commit or before it), or
        None if none did. A rolled-back write left no row, and a record without a transaction
        (page maintenance) adds none."""
        where = sql.SQL("block_ref ~ %s AND xid <> 0")
        pattern = rf"rel {file.tablespace}/{file.database}/{file.relfilenode}([^0-9]|$)"
        # A commit after ``before`` does not count: look no further than its end.
        until = before.end_lsn if before is not None else None
        passed: set[int] = set()
        for row in self._records(start, end, where, (pattern,)):
            xid = int(row[2])
            if xid in passed:
                continue
            if self.top_level(xid, Lsn(row[0]), until) is not None:
                return Lsn(row[0])
            passed.add(xid)
        return None

    def relation_of(self, file: RelFile) -> int | None:
        """The oid of the relation that has ``file`` now, in this database; None if none does."""
        if file.database != self.database:
            return None
        try:
            row = self.conn.execute(
                "SELECT pg_filenode_relation(CASE WHEN %s = dattablespace THEN 0 ELSE %s END,"
                " %s)::oid::bigint FROM pg_database WHERE oid = %s",
                (file.tablespace, file.tablespace, file.relfilenode, self.database),
            ).fetchone()
        except psycopg.Error as exc:
            raise WalUnavailable(
                f"cannot look up relation file {file.relfilenode} ({first_line(exc)})",
                reason="error",
            ) from None
        return int(row[0]) if row is not None and row[0] is not None else None

    def top_level(self, xid: int, start: Lsn, end: Lsn | None = None) -> CommitRecord | None:
        """The commit of ``xid`` or of the transaction it is a subtransaction of; None if none
        commits in [start, end)."""
        for record in self.commits(start, end, xid=xid):
            if record.xid == xid or xid in record.subxacts:
                return record
        return None

    def close(self) -> None:
        self.conn.close()


def waldump_command(start: Lsn | None, end: Lsn | None, pattern: str) -> str:
    """The pg_waldump command line that answers the same question on the database server."""
    span = (f" --start={start}" if start is not None else "") + (
        f" --end={end}" if end is not None else ""
    )
    return f"pg_waldump --path=$PGDATA/pg_wal{span} --rmgr=Transaction | grep -E '{pattern}'"
