"""What a pgoutput read cannot see: the publications it reads through, checked in the catalog.

pgoutput silently leaves out what a publication does not publish (an action, a column list, a
row filter); :func:`check_publications` turns that into reasons and warnings for the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from psycopg import sql

from ...db import Connection, one
from ..model import TableName


def publication_names(options: Mapping[str, str]) -> list[str]:
    """The publications a pgoutput read uses (``publication_names``, as walrecover sends it)."""
    return [p.strip() for p in options.get("publication_names", "").split(",") if p.strip()]


_ACTIONS = ("update", "delete", "truncate")

#: Whether a publication lists a table, with its column list and row filter (PostgreSQL 15+).
_LISTED = (
    "SELECT 1, prattrs IS NOT NULL, pg_get_expr(prqual, prrelid) FROM pg_publication_rel"
    " WHERE prpubid = %s AND prrelid = %s"
)
_LISTED_OLD = "SELECT 1 FROM pg_publication_rel WHERE prpubid = %s AND prrelid = %s"


def check_publications(
    conn: Connection, names: list[str], tables: Iterable[TableName], server_version: int | None
) -> tuple[list[str], list[str]]:
    """(reasons a rebuilt table is not proven exact, warnings) from the publications a pgoutput
    read uses: pgoutput silently leaves out what a publication does not publish.

    Looked at: the publish flags (``publish = 'insert'`` drops every UPDATE, DELETE, TRUNCATE),
    and, where the table still exists, a column list or row filter for it
    (``pg_publication_rel.prattrs``/``prqual``, PostgreSQL 15+). A dropped table's
    ``pg_publication_rel`` rows went with it: for a publication that lists tables one by one,
    that cannot be checked, which is a warning. The catalog shows the publications as they are
    now; pgoutput read them as they were at each change.
    """
    rows = conn.execute(
        "SELECT oid, pubname::text, puballtables, pubupdate, pubdelete, pubtruncate"
        " FROM pg_publication WHERE pubname = ANY(%s) ORDER BY pubname",
        (names,),
    ).fetchall()
    tables = list(tables)
    if not tables:  # walrecover decode of every table: the flags alone
        return [], _flag_warnings(rows)
    unproven: list[str] = []
    warnings: list[str] = []
    modern = server_version is None or server_version >= 150000
    for table in tables:
        lost, doubt = _table_check(conn, table, rows, modern)
        unproven.extend(lost)
        warnings.extend(doubt)
    return unproven, warnings


_REMEDY = (
    "read the slot with --via-plugin test_decoding (or wal2json), which reads every change,"
    " and --force to rebuild"
)


def _flag_warnings(rows: list[Any]) -> list[str]:
    """Warnings for publications that leave out a kind of change, whatever the table."""
    warnings = []
    for _, name, _, *flags in rows:
        missing = [a.upper() for a, on in zip(_ACTIONS, flags, strict=True) if not on]
        if missing:
            warnings.append(
                f"publication {name} does not publish {', '.join(missing)}: pgoutput leaves "
                "every such change out of the stream; --via-plugin test_decoding shows them"
            )
    return warnings


def _table_check(
    conn: Connection, table: TableName, rows: list[Any], modern: bool
) -> tuple[list[str], list[str]]:
    """(reasons, warnings) for one table: the publications that cover it, their column lists,
    row filters and publish flags."""
    ident = sql.Identifier(table.schema, table.name).as_string(conn)
    (oid,) = one(conn, "SELECT to_regclass(%s)::oid", (ident,))
    unproven: list[str] = []
    covering: list[tuple[str, tuple[bool, ...]]] = []
    listing: list[str] = []
    for pub_oid, name, alltables, *flags in rows:
        in_schema = modern and bool(
            conn.execute(
                "SELECT 1 FROM pg_publication_namespace pn"
                " JOIN pg_namespace n ON n.oid = pn.pnnspid"
                " WHERE pn.pnpubid = %s AND n.nspname = %s",
                (pub_oid, table.schema),
            ).fetchone()
        )
        if alltables or in_schema or oid is None:  # a dropped table may have been listed
            covering.append((name, tuple(flags)))
            if not (alltables or in_schema):
                listing.append(name)
            continue
        listed = conn.execute(_LISTED if modern else _LISTED_OLD, (pub_oid, oid)).fetchone()
        if listed is not None:
            covering.append((name, tuple(flags)))
            if modern:
                unproven.extend(_filters(name, table, listed[1], listed[2]))
    unproven.extend(_unpublished(table, covering))
    warnings = []
    if listing and modern:
        warnings.append(
            f"publication {', '.join(listing)} lists its tables one by one and {table} no "
            "longer exists, so a column list or row filter it had for the table cannot be "
            "checked: if it had one, pgoutput left those columns or rows out "
            "(--via-plugin test_decoding reads every column and row)"
        )
    return unproven, warnings


def _filters(name: str, table: TableName, columns: bool, rows: str | None) -> list[str]:
    """Reasons for a publication's column list and row filter on ``table``."""
    found = []
    if columns:
        found.append(
            f"publication {name} publishes only some columns of {table} (a column "
            "list): pgoutput left the others out of the stream, so the rebuilt table "
            f"lacks them; {_REMEDY}"
        )
    if rows is not None:
        found.append(
            f"publication {name} publishes only the rows of {table} WHERE {rows}: "
            "pgoutput left the other rows out of the stream (and sent updates that "
            f"cross the filter as inserts or deletes); {_REMEDY}"
        )
    return found


def _unpublished(table: TableName, covering: list[tuple[str, tuple[bool, ...]]]) -> list[str]:
    """A reason when no covering publication publishes some kind of change."""
    missing = [
        a.upper() for i, a in enumerate(_ACTIONS) if not any(flags[i] for _, flags in covering)
    ]
    if not covering or not missing:
        return []
    pubs = ", ".join(name for name, _ in covering)
    return [
        f"publication {pubs} does not publish {', '.join(missing)}: pgoutput left "
        f"every such change of {table} out of the stream, so the rebuilt table may "
        f"still hold rows that were later changed or removed; {_REMEDY}"
    ]
