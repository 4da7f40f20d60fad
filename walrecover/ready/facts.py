"""The facts ``walrecover doctor`` reads about the server and its tables (read-only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from ..db import Connection
from ..drill.cluster import find_installation
from ..errors import WalrecoverError
from ..stream.model import TableName
from .slots import SlotState, server_version

#: The output plugins walrecover reads.
PLUGINS = ("pgoutput", "wal2json", "test_decoding")


def user_tables(conn: Connection) -> list[TableName]:
    """Every ordinary or partitioned table outside the system schemas and walrecover's own."""
    rows = conn.execute(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'walrecover')"
        " AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'"
        " ORDER BY 1, 2"
    ).fetchall()
    return [TableName(s, n) for s, n in rows]


def installed_plugins(
    conn: Connection, states: Sequence[SlotState]
) -> tuple[dict[str, bool | None], list[str]]:
    """Which output plugins the server has: pgoutput is built in; the others are looked for as
    ``<plugin>.so`` in the server's library directory, which only a local server lets us see
    (``pg_available_extensions`` does not list output plugins). Otherwise: None (unknown)."""
    libdir = _pkglibdir(conn)
    found: dict[str, bool | None] = {"pgoutput": True}
    for plugin in PLUGINS[1:]:
        found[plugin] = (libdir / f"{plugin}.so").exists() if libdir else None
    notes = []
    if libdir is None:
        notes.append(
            "the server is not local, so whether wal2json and test_decoding are installed is "
            "unknown (check the server's pg_config --pkglibdir)"
        )
    for state in states:
        if found.get(state.plugin) is False:
            notes.append(f"slot {state.name} uses plugin {state.plugin}, which is not installed")
    return found, notes


def _pkglibdir(conn: Connection) -> Path | None:
    host = conn.info.host or ""
    if not (host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")):
        return None
    try:
        row = conn.execute("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'").fetchone()
        if row is not None:
            return Path(row[0])
    except psycopg.Error:
        pass  # pg_config is for superusers only; ask the local installation instead
    try:
        installation = find_installation()
    except WalrecoverError:
        return None
    if installation.major != server_version(conn) // 10000:
        return None
    return installation.pkglibdir


@dataclass(frozen=True, slots=True)
class TableFacts:
    """A table's replica identity, key, updates and deletes so far, TOAST columns and the
    publications that publish it (with the age of the catalog row that makes them)."""

    exists: bool
    identity: str | None = None
    has_key: bool = False
    changed: int | None = None
    toast: tuple[str, ...] = ()
    publications: tuple[tuple[str, int], ...] = ()


IDENTITY = {"d": "default", "f": "full", "n": "nothing", "i": "index"}


def table_facts(conn: Connection, table: TableName) -> TableFacts:
    row = conn.execute(
        "SELECT c.oid::bigint, c.relreplident::text,"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),"
        " (SELECT s.n_tup_upd + s.n_tup_del FROM pg_stat_all_tables s WHERE s.relid = c.oid)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (table.schema, table.name),
    ).fetchone()
    if row is None:
        return TableFacts(exists=False)
    oid, ident, has_pk, has_index, changed = row
    identity = IDENTITY.get(ident, ident)
    keyed = (
        identity == "full"
        or (identity == "default" and has_pk)
        or (identity == "index" and has_index)
    )
    toast = conn.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
        " AND NOT attisdropped AND attlen = -1 AND attstorage IN ('x', 'e') ORDER BY attnum",
        (oid,),
    ).fetchall()
    return TableFacts(
        exists=True,
        identity=identity,
        has_key=bool(keyed),
        changed=None if changed is None else int(changed),
        toast=tuple(t for (t,) in toast),
        publications=_publications(conn, oid, table),
    )


def _publications(conn: Connection, oid: int, table: TableName) -> tuple[tuple[str, int], ...]:
    """(publication, age in transactions of the catalog row that makes it publish the table)."""
    schema_rows = sql.SQL(
        " UNION ALL SELECT p.pubname::text, age(pn.xmin)::bigint FROM pg_publication p"
        " JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid"
        " JOIN pg_namespace n ON n.oid = pn.pnnspid WHERE n.nspname = %(schema)s"
        if server_version(conn) >= 150000
        else " UNION ALL SELECT NULL, NULL WHERE %(schema)s IS NULL"
    )
    query = sql.SQL(
        "SELECT name, max(age) FROM ("
        " SELECT p.pubname::text AS name, age(p.xmin)::bigint AS age FROM pg_publication p"
        " WHERE p.puballtables"
        " UNION ALL SELECT p.pubname::text, age(pr.xmin)::bigint FROM pg_publication p"
        " JOIN pg_publication_rel pr ON pr.prpubid = p.oid WHERE pr.prrelid = %(oid)s"
        "{}) AS m WHERE name IS NOT NULL GROUP BY name ORDER BY name"
    ).format(schema_rows)
    rows = conn.execute(
        query,
        {"oid": oid, "schema": table.schema},
    ).fetchall()
    return tuple((str(n), int(a)) for n, a in rows)
