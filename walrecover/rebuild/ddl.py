"""What a table's DDL says, as the swap applies it: its columns, constraints, indexes,
sequences and the statements applied as written, and the SQL text helpers the swap shares.

The DDL is read by :mod:`walrecover.rebuild.ddl_reader`; :mod:`walrecover.rebuild.swap` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pglast.stream import RawStream, maybe_double_quote_name
from psycopg import sql

from ..stream.model import TableName


def sql_text(node: Any) -> str:
    """A parse tree printed back as SQL."""
    return str(RawStream()(node))


def quote(*parts: str) -> str:
    """Identifiers quoted only where PostgreSQL needs it (as pglast prints them)."""
    return ".".join(maybe_double_quote_name(part) for part in parts)


def short(text: str, limit: int = 90) -> str:
    """``text`` on one line, cut to ``limit`` characters with ``...``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_name(table: str, *columns_and_label: str) -> str:
    """The name PostgreSQL gives an unnamed constraint (``t_pkey``, ``t_col_key``, ...)."""
    *columns, label = columns_and_label
    base = "_".join([table, *columns])
    # PostgreSQL truncates the table and column parts to fit NAMEDATALEN - 1 bytes.
    room = 63 - len(label) - 1
    while len(base.encode()) > room:
        base = base[:-1]
    return f"{base}_{label}"


def literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return sql.Literal(text).as_string(None)


# -- what the DDL says ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ignored:
    """A statement of the DDL that the swap does not apply, and why."""

    statement: str
    reason: str
    #: True when it concerns the table itself: the user should apply it by hand.
    about_table: bool = False


@dataclass(frozen=True, slots=True)
class Constraint:
    """A table constraint of the DDL (primary key, unique, check, exclusion, foreign key)."""

    #: The constraint's name, or None for PostgreSQL to choose (as the original CREATE did).
    name: str | None
    #: ``p``, ``u``, ``c``, ``x`` or ``f`` as in ``pg_constraint.contype``.
    kind: str
    #: What follows ``ALTER TABLE ... ADD`` in SQL.
    clause: str
    columns: tuple[str, ...] = ()
    check: str | None = None
    references: str | None = None
    referenced_columns: tuple[str, ...] = ()
    nulls_not_distinct: bool = False


@dataclass(frozen=True, slots=True)
class Index:
    """A CREATE INDEX of the DDL."""

    name: str | None
    statement: str
    unique: bool
    elements: tuple[str, ...]
    where: str | None
    nulls_not_distinct: bool


@dataclass(frozen=True, slots=True)
class ColumnDefinition:
    """A column of the DDL's table."""

    name: str
    type_sql: str
    not_null: bool
    default: str | None
    collation: str | None
    #: The expression of a ``GENERATED ALWAYS AS (...) STORED`` column.
    generated: str | None
    #: ``ADD GENERATED ... AS IDENTITY ...`` text for an identity column.
    identity: str | None


@dataclass(frozen=True, slots=True)
class SequenceDefinition:
    """A sequence of the table (owned by it, or used by a column default)."""

    name: TableName
    #: The CREATE SEQUENCE to run (None: the DDL only uses a sequence it does not create).
    create: str | None
    increment: int
    start: int | None
    #: The column it numbers.
    column: str | None
    statements: tuple[str, ...]
    owner: tuple[str, ...]
    grants: tuple[str, ...]
    comments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Definition:
    """Everything the DDL says about one table, ready to apply to the rebuilt one."""

    table: TableName
    columns: tuple[ColumnDefinition, ...]
    primary_key: Constraint | None
    constraints: tuple[Constraint, ...]
    indexes: tuple[Index, ...]
    sequences: tuple[SequenceDefinition, ...]
    #: ALTER TABLE subcommands, triggers, policies, rules and statistics, applied as written.
    verbatim: tuple[str, ...]
    owner: tuple[str, ...]
    grants: tuple[str, ...]
    comments: tuple[str, ...]
    ignored: tuple[Ignored, ...]
    notes: tuple[str, ...]
