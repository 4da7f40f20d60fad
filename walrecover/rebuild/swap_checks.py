"""The swap's statements, and naming the rows that break one: a statement that fails stops the
swap before anything is committed, naming the first offending rows by key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from ..db import Connection
from ..errors import SwapError, first_line
from ..stream.model import TableName
from .ddl import Constraint, default_name, quote, short

#: Rows named when a constraint fails.
EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class RowCheck:
    """How to find the rows that break a statement: a WHERE over the table, or duplicates."""

    what: str
    where: str | None = None
    #: Expressions whose duplicates (all non-NULL unless ``nulls_distinct`` is False) break it.
    unique: tuple[str, ...] = ()
    unique_where: str | None = None
    nulls_distinct: bool = True
    #: A foreign key's ADD clause: its rows without a referenced row break it.
    foreign_key: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of the swap, and how to name the rows that break it."""

    sql: str
    check: RowCheck | None = None


def chosen_name(table: str, con: Constraint) -> str:
    """The name PostgreSQL gives an unnamed constraint of ``table``."""
    label = {"u": "key", "c": "check", "x": "excl", "f": "fkey", "p": "pkey"}[con.kind]
    if con.kind == "p":
        return default_name(table, label)
    columns = con.columns[:1] if con.kind == "c" else con.columns
    return default_name(table, *columns, label) if columns else default_name(table, label)


def constraint_check(con: Constraint, name: str) -> RowCheck | None:
    """How to find the rows that break ``con`` (None: no way to name them)."""
    columns = tuple(quote(c) for c in con.columns)
    if con.kind == "p":
        nulls = " OR ".join(f"{c} IS NULL" for c in columns)
        return RowCheck(f"primary key {name}", where=nulls, unique=columns, nulls_distinct=True)
    if con.kind == "u":
        return RowCheck(
            f"unique constraint {name}", unique=columns, nulls_distinct=not con.nulls_not_distinct
        )
    if con.kind == "c" and con.check is not None:
        return RowCheck(f"check constraint {name}", where=f"NOT ({con.check})")
    if con.kind == "f" and con.references is not None:
        return RowCheck(f"foreign key {name} to {con.references}", foreign_key=con.clause)
    return None


def run_steps(
    conn: Connection,
    steps: Sequence[Step],
    table: TableName,
    source: TableName,
    key: tuple[str, ...],
) -> None:
    """Run the steps in the open transaction; on a failure roll everything back and raise
    :class:`SwapError` naming the statement, PostgreSQL's reason and the rows that break it."""
    for step in steps:
        conn.execute("SAVEPOINT walrecover_swap")
        try:
            conn.execute(step.sql)
        except psycopg.errors.QueryCanceled:
            conn.rollback()
            raise SwapError(
                f"the swap waited too long for a lock ({short(step.sql, 70)}): the application "
                f"holds a table it needs; nothing was changed, run the swap again when it is "
                "quieter"
            ) from None
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            conn.execute("ROLLBACK TO SAVEPOINT walrecover_swap")
            rows = _offenders(conn, step.check, table, source, key) if step.check else ""
            conn.rollback()
            reason = exc.diag.message_primary or first_line(exc)
            detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail and not rows else ""
            what = step.check.what if step.check else short(step.sql, 80)
            raise SwapError(
                f"the swap stopped at {what}: {reason}{detail}{rows}; nothing was changed "
                f"({source} is as it was): fix those rows in {source} or the DDL, then swap "
                "again",
                statement=step.sql,
            ) from None
        conn.execute("RELEASE SAVEPOINT walrecover_swap")


def _offenders(
    conn: Connection, check: RowCheck, table: TableName, source: TableName, key: tuple[str, ...]
) -> str:
    """``: 3 rows, e.g. id=5, id=9`` for the rows that break ``check``, or ``""``."""
    dst = quote(table.schema, table.name)
    key_sql = ", ".join(f"{quote(k)}::text" for k in key) if key else "ctid::text"
    labels = key or ("ctid",)
    conditions: list[str] = []
    where = check.where
    if check.foreign_key is not None:
        where = _fk_condition(conn, check.foreign_key, table)
        if where is None:
            return ""
    if where:
        conditions.append(f"({where})")
    if check.unique:
        elements = ", ".join(check.unique)
        filters = [f"{e} IS NOT NULL" for e in check.unique] if check.nulls_distinct else []
        if check.unique_where:
            filters.append(f"({check.unique_where})")
        inner = " AND ".join(filters) or "true"
        duplicate = (
            f"(({elements}) IN (SELECT {elements} FROM {dst} WHERE {inner}"
            f" GROUP BY {elements} HAVING count(*) > 1))"
        )
        if check.unique_where:
            duplicate = f"({duplicate} AND ({check.unique_where}))"
        conditions.append(duplicate)
    if not conditions:
        return ""
    query = (
        f"SELECT count(*) OVER (), {key_sql} FROM {dst} WHERE {' OR '.join(conditions)}"
        # Qualified: a bare name would sort by the text output column of the same name.
        f" ORDER BY {', '.join(f'{dst}.{quote(k)}' for k in labels)} LIMIT {EXAMPLES}"
    )
    try:
        rows = conn.execute(query).fetchall()
    except psycopg.Error:
        conn.execute("ROLLBACK TO SAVEPOINT walrecover_swap")
        return ""
    if not rows:
        return ""
    examples = ", ".join(
        " ".join(f"{label}={value}" for label, value in zip(labels, row[1:], strict=True))
        for row in rows
    )
    count = int(rows[0][0])
    return f": {count} row{'s' if count != 1 else ''} of {source} break it, e.g. {examples}"


def _fk_condition(conn: Connection, clause: str, table: TableName) -> str | None:
    """The WHERE that finds rows without a referenced row. The server resolves the foreign
    key (the referenced columns may be implied): it is added NOT VALID under a savepoint, read
    back from the catalog, and rolled back."""
    dst = quote(table.schema, table.name)
    conn.execute("SAVEPOINT walrecover_fk")
    try:
        conn.execute(f"ALTER TABLE {dst} ADD {clause} NOT VALID")
        row = conn.execute(
            "SELECT confrelid::regclass::text,"
            " (SELECT array_agg(attname::text ORDER BY n) FROM unnest(conkey)"
            "  WITH ORDINALITY k(a, n) JOIN pg_attribute ON attrelid = conrelid AND attnum = a),"
            " (SELECT array_agg(attname::text ORDER BY n) FROM unnest(confkey)"
            "  WITH ORDINALITY k(a, n) JOIN pg_attribute ON attrelid = confrelid"
            "  AND attnum = a)"
            " FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'"
            " AND NOT convalidated ORDER BY oid DESC LIMIT 1",
            (dst,),
        ).fetchone()
    except psycopg.Error:
        row = None
    conn.execute("ROLLBACK TO SAVEPOINT walrecover_fk")
    if row is None:
        return None
    ref, mine, theirs = row
    present = " AND ".join(f"{quote(c)} IS NOT NULL" for c in mine)
    match = " AND ".join(
        f"walrecover_ref.{quote(t)} = {dst}.{quote(m)}" for m, t in zip(mine, theirs, strict=True)
    )
    return f"{present} AND NOT EXISTS (SELECT 1 FROM {ref} AS walrecover_ref WHERE {match})"
