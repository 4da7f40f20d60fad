"""What the database says about the tables of a swap: the rebuilt table's columns, key,
constraints and indexes, the DDL's types as the server resolves them, sequences to continue.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..db import Connection, one
from ..errors import SwapError, first_line
from ..stream.model import TableName
from .ddl import Definition, SequenceDefinition, literal, quote
from .swap_checks import Step
from .target import PROGRESS_SCHEMA, PROGRESS_TABLE


@dataclass(frozen=True, slots=True)
class TableFacts:
    """The rebuilt table as the catalog has it: each column's (type, NOT NULL, has a default,
    collation), their order, its primary key (name, columns), other constraints and indexes,
    replica identity, row count."""

    columns: dict[str, tuple[str, bool, bool, str | None]]
    order: tuple[str, ...]
    primary_key: tuple[str, tuple[str, ...]] | None
    constraints: tuple[str, ...]
    indexes: tuple[str, ...]
    replica_identity: str
    rows: int


def read_table(conn: Connection, ident: str) -> TableFacts:
    """The facts of the table ``ident`` (quoted, qualified)."""
    cols = conn.execute(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        " a.atthasdef, CASE WHEN a.attcollation <> t.typcollation THEN c.collname::text END"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " LEFT JOIN pg_collation c ON c.oid = a.attcollation"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        (ident,),
    ).fetchall()
    pk = conn.execute(
        "SELECT c.conname::text, array_agg(a.attname::text ORDER BY k.n)"
        " FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
        " WHERE c.conrelid = %s::regclass AND c.contype = 'p' GROUP BY c.conname",
        (ident,),
    ).fetchone()
    others = conn.execute(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND contype IN ('c', 'f', 'u', 'x') ORDER BY conname",
        (ident,),
    ).fetchall()
    indexes = conn.execute(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = %s::regclass AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid"
        "  AND k.conrelid = i.indrelid) ORDER BY 1",
        (ident,),
    ).fetchall()
    (identity,) = one(
        conn, "SELECT relreplident::text FROM pg_class WHERE oid = %s::regclass", (ident,)
    )
    (rows,) = one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(ident)))
    return TableFacts(
        columns={r[0]: (r[1], bool(r[2]), bool(r[3]), r[4]) for r in cols},
        order=tuple(r[0] for r in cols),
        primary_key=(pk[0], tuple(pk[1])) if pk else None,
        constraints=tuple(r[0] for r in others),
        indexes=tuple(r[0] for r in indexes),
        replica_identity=str(identity),
        rows=int(rows),
    )


def canonical_types(conn: Connection, definition: Definition) -> dict[str, str]:
    """The DDL's column types as ``format_type`` prints them, resolved by the server."""
    columns = [c for c in definition.columns]
    if not columns:
        return {}
    select = ", ".join(f"NULL::{c.type_sql}" for c in columns)
    try:
        cur = conn.execute(f"SELECT {select} LIMIT 0")
    except psycopg.Error as exc:
        conn.rollback()
        raise SwapError(
            f"a column type of the DDL's {definition.table} does not exist in this database "
            f"({first_line(exc)}): create the type first, or fix the DDL"
        ) from None
    result = cur.pgresult
    assert result is not None
    oids = [result.ftype(i) for i in range(result.nfields)]
    mods = [result.fmod(i) for i in range(result.nfields)]
    names = conn.execute(
        "SELECT format_type(o, m) FROM unnest(%s::oid[], %s::int[]) WITH ORDINALITY u(o, m, n)"
        " ORDER BY n",
        (oids, mods),
    ).fetchall()
    return {c.name: str(n[0]) for c, n in zip(columns, names, strict=True)}


def relation_exists(conn: Connection, name: TableName) -> bool:
    """True if a relation of that name exists."""
    (oid,) = one(conn, "SELECT to_regclass(%s)::oid", (quote(name.schema, name.name),))
    return oid is not None


def owned_by_table(conn: Connection, sequence: TableName, table: TableName) -> bool:
    """True if ``sequence`` belongs to ``table`` (serial or identity): it moves with it."""
    (owned,) = one(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass"
        " AND objid = %s::regclass AND refobjid = %s::regclass AND deptype IN ('a', 'i'))",
        (quote(sequence.schema, sequence.name), quote(table.schema, table.name)),
    )
    return bool(owned)


def unfinished(conn: Connection, source: TableName) -> bool:
    """True if ``source`` is the target of a recovery that has not finished."""
    progress = quote(PROGRESS_SCHEMA, PROGRESS_TABLE)
    (exists,) = one(conn, "SELECT to_regclass(%s) IS NOT NULL", (progress,))
    if not exists:
        return False
    row = conn.execute(
        sql.SQL("SELECT complete FROM {} WHERE target = %s").format(
            sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)
        ),
        (str(source),),
    ).fetchone()
    return row is not None and not row[0]


def continue_sequence(
    conn: Connection,
    seq: SequenceDefinition,
    src: str,
    seq_ident: str,
    identity: bool,
    exists: bool,
    dst: str,
) -> tuple[Step | None, int]:
    """The statement that makes the sequence continue after the table's largest (or, for a
    descending sequence, smallest) value, and the value its next nextval() gives."""
    assert seq.column is not None
    column = quote(seq.column)
    descending = seq.increment < 0
    (edge,) = one(
        conn,
        sql.SQL(f"SELECT {'min' if descending else 'max'}({{}})::text FROM {{}}").format(
            sql.SQL(column), sql.SQL(src)
        ),
    )
    start = seq.start if seq.start is not None else (-1 if descending else 1)
    if exists:
        (last, called) = one(conn, f"SELECT last_value, is_called FROM {seq_ident}")
        current = int(last) + seq.increment if called else int(last)
        start = current
    if edge is None:
        return None, start
    following = int(edge) + seq.increment
    if (following <= start) if not descending else (following >= start):
        return None, start
    if identity:
        return Step(f"ALTER TABLE {dst} ALTER COLUMN {column} RESTART WITH {following}"), following
    return Step(f"SELECT pg_catalog.setval({literal(seq_ident)}, {int(edge)}, true)"), following
