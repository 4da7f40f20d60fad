"""What a stream leaves unseen: asked of the source after the replay.

**A table replaced with no change of the new one in the stream.** pgoutput names tables by
relation id (the table's oid), and replay refuses a change of the same name with another
relation id. A table dropped and re-created after its last change in the stream shows nothing
(pgoutput sends no empty transactions), so the rebuilt table would be the earlier table's rows
while the name held another, empty table at the stop point. The source can tell:

- its catalog: the name now belongs to a relation with another oid than the stream's;
- its WAL (pg_walinspect, where already installed): the commit that dropped the stream's
  relation (``dropped stats``) comes before the stop point, and a relation was created in that
  transaction or after it.

Either makes the result unproven (exit 4) unless the WAL shows the stream's relation was still
there at the stop point; the message gives the DROP's LSN as a stop point, which rebuilds the
earlier table exactly. Without either (the table is gone and pg_walinspect is not installed)
nothing can be told, as README says. wal2json and test_decoding carry no relation id: their
recoveries ask the same with the oid the WAL gave the re-creation judge for the table's last
change (:attr:`~walrecover.rebuild.recreation.RecreationJudge.oid`), when it could give one.

**A publication's flags for a capture.** A slot read checks the publications it reads through
(:func:`~walrecover.stream.sources.check_publications`). A capture is checked the same way when
``-d`` names the source database; otherwise the flags cannot be known: that is a warning, and a
table with no replica identity in the stream is unproven, since the source refuses its UPDATEs and
DELETEs under a publication that publishes them, so any it had were left out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from psycopg import sql

from ..db import Connection
from ..errors import WalUnavailable
from ..stream.lsn import Lsn
from ..stream.model import Relation, StopPoint, TableName
from ..stream.sources import check_publications
from ..stream.walinspect import CommitRecord, WalInspect


def replaced(
    conn: Connection,
    wal: WalInspect | None,
    table: TableName,
    into: TableName,
    oid: int,
    *,
    last_lsn: Lsn | None,
    stop: StopPoint,
    stopped_lsn: Lsn | None,
    until: Lsn | None = None,
    own: Collection[tuple[int, int]] = (),
) -> list[str]:
    """Reasons the table ``oid`` (the stream's relation) may not be what ``table`` named at
    the stop point: it was replaced after its last change (``last_lsn``).

    Tables created at or after ``until`` (where the source's WAL was when this recovery began)
    are not looked at: the rebuilt table itself is one, when it is built on the source; nor
    are ``own`` files (database oid, relfilenode): earlier rebuilt tables of this name that
    walrecover dropped (``Target.dropped_files``)."""
    ident = sql.Identifier(table.schema, table.name).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid::bigint", (ident,)).fetchone()
    now = int(row[0]) if row and row[0] is not None else None
    drop: CommitRecord | None = None
    created: Lsn | None = None
    if wal is not None and last_lsn is not None:
        found = _wal_drop(conn, wal, table, oid, last_lsn, stop, stopped_lsn, until, own)
        if found is None:
            return []  # the stream's table still held the name at the stop point
        drop, created, usable = found
        if not usable:
            wal = None
    other = now is not None and now != oid
    if not other and created is None:
        return []
    since = f" after its last change (LSN {last_lsn})" if last_lsn is not None else ""
    what = (
        f"{table} may have been dropped and re-created under the same name with no change of "
        "the new table in the stream: "
        + (
            f"it now names another table (oid {now}) than the one the stream's changes belong "
            f"to (relation id {oid})"
            if other
            else f"a table was created at LSN {created}, by or after the transaction that "
            f"dropped the stream's {table} (relation id {oid})"
        )
    )
    if drop is not None:
        return [
            f"{what}; {table} was dropped by transaction {drop.xid} (commit LSN {drop.lsn})"
            f"{since}, before the stop point, so {into} may hold rows the name no longer held "
            f"there; recover with --stop-before-lsn {drop.lsn} to rebuild the earlier table "
            "exactly"
        ]
    how = (
        "pg_walinspect could not be used to find when"
        if wal is None
        else "the WAL walrecover read does not show when"
    )
    return [
        f"{what}; the stream's table was dropped (or renamed away){since} and {how}; {into} "
        f"holds the stream's table as of its last change, which is exact only if it still had "
        "the name at the stop point. CREATE EXTENSION pg_walinspect in the source database "
        "(PostgreSQL 15+) and rerun with --force to let walrecover find the DROP and the stop "
        "point that rebuilds the earlier table"
    ]


def _wal_drop(
    conn: Connection,
    wal: WalInspect,
    table: TableName,
    oid: int,
    last_lsn: Lsn,
    stop: StopPoint,
    stopped_lsn: Lsn | None,
    until: Lsn | None,
    own: Collection[tuple[int, int]],
) -> tuple[CommitRecord | None, Lsn | None, bool] | None:
    """What the WAL after ``last_lsn`` shows: (the commit that dropped ``oid``, where a table was
    created after it, whether pg_walinspect could be used); None when that drop comes after the
    stop point (the stream's table still held the name there)."""
    database = wal.database
    usable = True
    try:
        commits, files = wal.catalog_history(last_lsn)
    except WalUnavailable:
        commits, files = [], []
        usable = False
    drop = next((c for c in commits if oid in c.dropped_relations(database)), None)
    if drop is None:
        return None, None, usable
    if not _before_stop(drop, stop, stopped_lsn):
        return None
    rewriters, rewritten = _rewritten_files(commits, drop, database)
    created = next(
        (
            f.lsn
            for f in files
            if f.lsn >= drop.lsn or f.xid == drop.xid
            if not (f.xid in rewriters and f.file.relfilenode in rewritten)
            and _before_stop_lsn(f.lsn, stop, stopped_lsn)
            and (until is None or f.lsn < until)
            and (f.file.database, f.file.relfilenode) not in own
            and not _another_relation(conn, f.file.relfilenode, table)
        ),
        None,
    )
    return drop, created, usable


def _rewritten_files(
    commits: Collection[CommitRecord], drop: CommitRecord, database: int
) -> tuple[frozenset[int], frozenset[int]]:
    """What tells a rewrite's file (TRUNCATE, VACUUM FULL, SET LOGGED of a relation that lives
    on) from a created table's, by the WAL: (xids, relfilenodes). A file is a rewrite's when a
    transaction of the xids made it (one that dropped files, other than the DROP's) and its
    relfilenode is of those: dropped later with no drop of a relation of that number (a new
    relation's first file is numbered like its oid). Such a transaction may also have created
    the table again (``BEGIN; TRUNCATE other; CREATE TABLE t ...``), so its other files count;
    a rewrite's file still in use is told by the catalog (:func:`_another_relation`)."""
    files_gone: set[int] = set()
    relations_gone: set[int] = set()
    rewriters: set[int] = set()
    for commit in commits:
        files_gone |= commit.dropped_relfilenodes(database)
        relations_gone |= commit.dropped_relations(database)
        if commit.dropped_files and commit is not drop:
            rewriters.update((commit.xid, *commit.subxacts))
    return frozenset(rewriters), frozenset(files_gone - relations_gone)


def _before_stop(commit: CommitRecord, stop: StopPoint, stopped_lsn: Lsn | None) -> bool:
    if stop.time is not None and stop.lsn is None and commit.time is not None:
        return commit.time < stop.time
    return _before_stop_lsn(commit.lsn, stop, stopped_lsn)


def _before_stop_lsn(lsn: Lsn, stop: StopPoint, stopped_lsn: Lsn | None) -> bool:
    if stop.lsn is not None:
        return lsn < stop.lsn
    if stopped_lsn is not None:
        return lsn < stopped_lsn
    return True  # no stop point (or one by time, which an LSN cannot be compared with)


def capture_publications(
    conn: Connection | None,
    options: Mapping[str, str],
    table: TableName,
    relation: Relation,
    server_version: int | None = None,
) -> tuple[list[str], list[str]]:
    """(unproven reasons, warnings) about the publications a pgoutput capture was made with
    (``publication_names``): checked on ``conn`` (the source database) when there is one."""
    names = [p.strip() for p in options.get("publication_names", "").split(",") if p.strip()]
    found: set[str] = set()
    if conn is not None and names:
        found = {
            r[0]
            for r in conn.execute(
                "SELECT pubname::text FROM pg_publication WHERE pubname = ANY(%s)", (names,)
            )
        }
        if found:
            unproven, warnings = check_publications(conn, sorted(found), [table], server_version)
            if found == set(names):
                return unproven, warnings
        else:
            unproven, warnings = [], []
    else:
        unproven, warnings = [], []
    unknown = ", ".join(n for n in names if n not in found) or "(none named)"
    why = (
        "no longer exists in the source database"
        if conn is not None
        else "cannot be checked without -d naming the source database"
    )
    warnings.append(
        f"what publication {unknown} publishes {why}: if it does not publish UPDATE, DELETE or "
        "TRUNCATE, pgoutput left every such change out of the capture"
    )
    if relation.identity_full is False and not relation.key_columns:
        unproven.append(
            f"{table} has no replica identity in the capture (REPLICA IDENTITY DEFAULT without a "
            "primary key, or NOTHING): the source refuses its UPDATEs and DELETEs under a "
            "publication that publishes them, so any it had were left out by publication "
            f"{unknown}; give -d with the source database to check the publication, or read "
            "the slot with --via-plugin test_decoding (or wal2json), which reads every change"
        )
    return unproven, warnings


def catalog_writers(conn: Connection, xids: list[int]) -> frozenset[int]:
    """The transactions among ``xids`` whose catalog rows the source still holds: a relation,
    type, function or schema row they wrote (another table's DDL, the operator's snapshot of
    the table before the DROP). Their catalog change is explained; a DROP leaves no row."""
    rows = conn.execute(
        "SELECT x FROM unnest(%s::bigint[]) AS x WHERE"
        " EXISTS (SELECT FROM pg_class WHERE xmin = x::text::xid)"
        " OR EXISTS (SELECT FROM pg_type WHERE xmin = x::text::xid)"
        " OR EXISTS (SELECT FROM pg_proc WHERE xmin = x::text::xid)"
        " OR EXISTS (SELECT FROM pg_namespace WHERE xmin = x::text::xid)",
        (xids,),
    ).fetchall()
    return frozenset(int(r[0]) for r in rows)


def _another_relation(conn: Connection, relfilenode: int, table: TableName) -> bool:
    """The relation the file was made for is now one that is not ``table`` (an index, another
    table, the rebuilt table): its creation did not re-create ``table``. A new relation's first
    file is numbered like its oid, so the relation is found by its oid even when a rewrite
    gave it another file since (a TRUNCATE, or the rebuilt table's SET LOGGED); a mapped
    catalog's file (``VACUUM FULL pg_class``) by the relation mapper."""
    rows = conn.execute(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = %s::oid OR c.relfilenode = %s::oid"
        " OR (c.relfilenode = 0 AND pg_relation_filenode(c.oid) = %s::oid)",
        (relfilenode, relfilenode, relfilenode),
    ).fetchall()
    return any((str(r[0]), str(r[1])) != (table.schema, table.name) for r in rows)
