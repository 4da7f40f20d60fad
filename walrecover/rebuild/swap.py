"""Put a rebuilt table back in place of the dropped one: ``walrecover swap``.

The rebuilt table holds the right rows but none of the original's NOT NULLs, defaults, indexes
(other than its key), foreign keys, grants or sequence; the DROP removed the table's owned
sequences too, so the application's next INSERT fails. :func:`swap` takes the original table's
DDL (``pg_dump --schema-only -t``, an old backup, the migrations; read by
:mod:`~walrecover.rebuild.ddl_reader`) and, in one transaction, renames the rebuilt table into
place and gives it everything the DDL says: constraints and indexes (validated), owned sequences
re-created at the largest key, defaults, NOT NULL, identity, grants, owner, comments, triggers
and policies; then ANALYZEs it. The rebuilt table's columns must have the DDL's types; a
difference is refused naming the column. A constraint the rows violate stops the swap before
anything is committed, naming the first offending rows by key
(:mod:`~walrecover.rebuild.swap_checks`). The statements are built phase by phase by
:class:`~walrecover.rebuild.swap_plan.SwapPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..db import Connection, connect
from ..errors import SwapError, first_line
from ..stream.model import TableName
from .ddl import Definition, Ignored, quote
from .ddl_reader import parse_ddl
from .swap_catalog import (
    relation_exists,
    unfinished,
)
from .swap_checks import run_steps
from .swap_plan import SwapPlan
from .target import lock_target

__all__ = ["SwapResult", "parse_ddl", "swap"]


@dataclass(frozen=True, slots=True)
class SwapResult:
    """What :func:`swap` did (or, with ``dry_run``, would do)."""

    table: str
    source: str
    applied: bool
    rows: int
    statements: tuple[str, ...]
    constraints: tuple[str, ...]
    indexes: tuple[str, ...]
    #: Each re-created or reused sequence and the value its next nextval() returns.
    sequences: tuple[tuple[str, int], ...]
    grants: int
    owner: str | None
    comments: int
    ignored: tuple[Ignored, ...]
    notes: tuple[str, ...]
    moved_existing_to: str | None = None

    def script(self) -> str:
        """The swap as one SQL script, ``BEGIN`` to ``COMMIT``."""
        return "BEGIN;\n" + "".join(f"{s};\n" for s in self.statements) + "COMMIT;\n"

    @property
    def warnings(self) -> tuple[str, ...]:
        """Statements about the table that were not applied: apply them by hand."""
        return tuple(
            f"not applied: {i.statement} ({i.reason})" for i in self.ignored if i.about_table
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "from": self.source,
            "applied": self.applied,
            "rows": self.rows,
            "statements": list(self.statements),
            "constraints": list(self.constraints),
            "indexes": list(self.indexes),
            "sequences": [{"name": n, "next": v} for n, v in self.sequences],
            "grants": self.grants,
            "owner": self.owner,
            "comments": self.comments,
            "ignored": [
                {"statement": i.statement, "reason": i.reason, "about_table": i.about_table}
                for i in self.ignored
            ],
            "notes": list(self.notes),
            "moved_existing_to": self.moved_existing_to,
        }


def swap(
    dsn: str | None,
    table: TableName,
    ddl: str,
    *,
    source: TableName | None = None,
    dry_run: bool = False,
    move_existing_to: str | None = None,
) -> SwapResult:
    """Put the rebuilt ``source`` (default ``<table>_recovered``) in place of ``table``, with
    everything ``ddl`` says about the original, in one transaction.

    ``dry_run`` checks the same things and returns the statements without running them.
    ``move_existing_to`` names a schema to move a table still under ``table``'s name into
    (with its indexes and sequences); without it an existing table is refused.
    """
    source = source or TableName(table.schema, f"{table.name}_recovered")
    if source == table:
        raise SwapError(f"--from and --table are both {table}: name the rebuilt table")
    definition = parse_ddl(ddl, table)
    conn = connect(dsn, role="target")
    try:
        lock_target(conn, source)
        return _swap(conn, definition, source, dry_run=dry_run, move_to=move_existing_to)
    except psycopg.OperationalError as exc:
        raise SwapError(
            f"lost the connection during the swap ({first_line(exc)}): the transaction was "
            f"not committed, {source} is unchanged; run the swap again"
        ) from None
    finally:
        conn.close()


def _swap(
    conn: Connection,
    definition: Definition,
    source: TableName,
    *,
    dry_run: bool,
    move_to: str | None,
) -> SwapResult:
    table = definition.table
    if not relation_exists(conn, source):
        raise SwapError(
            f"the rebuilt table {source} does not exist: give --from (the --into of recover)"
        )
    if unfinished(conn, source):
        raise SwapError(
            f"{source} holds an unfinished recovery: rerun the recover command to finish it, "
            "then swap"
        )
    if not dry_run:
        # Nothing may change the rows between reading the largest key and the commit.
        src = quote(source.schema, source.name)
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(src)))
    plan = SwapPlan(conn, definition, source)
    if relation_exists(conn, table):
        plan.move_existing(move_to)
    plan.check_columns()
    plan.drop_extras()
    plan.into_place()
    plan.primary_key()
    plan.columns()
    plan.sequences()
    plan.defaults()
    plan.constraints_and_indexes()
    plan.owner_grants_comments()
    result = _result(plan, applied=not dry_run)
    if dry_run:
        conn.rollback()
        return result
    run_steps(conn, plan.steps, table, source, plan.key)
    conn.commit()
    return result


def _result(plan: SwapPlan, *, applied: bool) -> SwapResult:
    """What the swap does (or, not ``applied``, would do)."""
    owner = None
    for text in plan.definition.owner:
        owner = text.rsplit(" OWNER TO ", 1)[-1]
    return SwapResult(
        table=str(plan.table),
        source=str(plan.source),
        applied=applied,
        rows=plan.rebuilt.rows,
        statements=tuple(s.sql for s in plan.steps),
        constraints=tuple(plan.constraint_names),
        indexes=tuple(plan.index_names),
        sequences=tuple(plan.sequence_values),
        grants=len(plan.grants),
        owner=owner,
        comments=len(plan.comments),
        ignored=plan.definition.ignored,
        notes=tuple(plan.notes),
        moved_existing_to=plan.moved,
    )
