"""What the fixture recorders share: a workload of transactions, its SQL, its ground truth.

A workload is a tuple of :class:`Step` (one transaction each, committed or rolled back). The
recorders run it on a throwaway cluster with :func:`run_steps`, write it out readable with
:func:`render_steps`, and record each table's final contents with :func:`table_contents`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from walrecover.db import Connection


@dataclass(frozen=True)
class Step:
    """One transaction of the workload and how it ends."""

    label: str
    statements: tuple[str, ...]
    #: commit, rollback, prepare-commit (PREPARE then COMMIT PREPARED), prepare-rollback.
    outcome: str = "commit"
    #: Run with a replication origin set up, so pgoutput sends an Origin message.
    origin: bool = False


def render_steps(header: Iterable[str], schema: str, steps: Sequence[Step]) -> str:
    """The workload as a readable SQL script: ``header`` lines, the schema, each step."""
    lines = [*header, "", schema + ";", ""]
    for step in steps:
        lines.append(f"-- {step.label}")
        lines.append("BEGIN;")
        lines.extend(statement + ";" for statement in step.statements)
        lines.append("COMMIT;" if step.outcome == "commit" else "ROLLBACK;")
        lines.append("")
    return "\n".join(lines)


def run_steps(conn: Connection, steps: Sequence[Step]) -> tuple[list[int], list[int]]:
    """Run every step, each in its own transaction; return (committed xids, aborted xids)."""
    committed: list[int] = []
    aborted: list[int] = []
    for step in steps:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for statement in step.statements:
                cur.execute(statement)
            cur.execute("SELECT pg_current_xact_id()::text::bigint")
            row = cur.fetchone()
            assert row is not None
            xid = int(row[0])
            if step.outcome == "commit":
                cur.execute("COMMIT")
                committed.append(xid)
            else:
                cur.execute("ROLLBACK")
                aborted.append(xid)
    return committed, aborted


def table_contents(conn: Connection, table: str, key: tuple[str, ...]) -> dict[str, Any]:
    """Columns and rows of ``table`` (``name`` or ``schema.name``) as output-function text
    (None for NULL), ordered by ``key`` (by every column when the table has none)."""
    schema, dot, name = table.partition(".")
    ident = sql.Identifier(schema, name) if dot else sql.Identifier(table)
    columns = [
        str(column)
        for (column,) in conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (ident.as_string(conn),),
        )
    ]
    order = key or tuple(columns)
    query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, order))
    )
    rows: list[list[str | None]] = []
    with conn.cursor() as cur, cur.copy(query) as copy:
        # Without set_types, COPY rows come back as the server's text, unescaped, None for NULL.
        for row in copy.rows():
            rows.append([None if value is None else str(value) for value in row])
    return {"columns": columns, "key": list(key), "rows": rows}
