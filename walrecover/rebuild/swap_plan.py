"""The statements of one ``walrecover swap``, built phase by phase.

:class:`SwapPlan` compares the original table's DDL with the rebuilt table and lists, in order,
what the swap's one transaction runs: move a table still under the name aside, check the columns'
types, drop what the DDL does not have, rename into place, then the key, columns, sequences,
defaults, constraints and indexes, owner, grants and comments. :func:`walrecover.rebuild.swap.swap`
runs the phases and the steps (or, with ``--dry-run``, returns them).
"""

from __future__ import annotations

from psycopg import sql

from ..db import Connection, one
from ..errors import SwapError
from ..stream.model import TableName
from .ddl import Definition, default_name, literal, quote
from .swap_catalog import (
    canonical_types,
    continue_sequence,
    owned_by_table,
    read_table,
    relation_exists,
)
from .swap_checks import RowCheck, Step, chosen_name, constraint_check
from .target import PROGRESS_SCHEMA, PROGRESS_TABLE


class SwapPlan:
    """The statements of one swap, built phase by phase from the DDL and the rebuilt table."""

    def __init__(self, conn: Connection, definition: Definition, source: TableName) -> None:
        self.conn = conn
        self.definition = definition
        self.source = source
        self.table = table = definition.table
        self.src = quote(source.schema, source.name)
        self.dst = quote(table.schema, table.name)
        self.rebuilt = read_table(conn, self.src)
        self.wanted = {c.name: c for c in definition.columns}
        self.steps: list[Step] = []
        self.notes = list(definition.notes)
        self.moved: str | None = None
        self.constraint_names: list[str] = []
        self.index_names: list[str] = []
        self.sequence_values: list[tuple[str, int]] = []
        self.setvals: list[Step] = []
        self.grants: list[str] = []
        self.comments: list[str] = []
        pk = definition.primary_key
        rebuilt_pk = self.rebuilt.primary_key
        #: The rebuilt table's key is the DDL's: kept (renamed if need be), not rebuilt.
        self.keep_pk = rebuilt_pk is not None and pk is not None and rebuilt_pk[1] == pk.columns
        self.key = pk.columns if pk is not None else (rebuilt_pk[1] if rebuilt_pk else ())

    def move_existing(self, move_to: str | None) -> None:
        """A table still under the name moves to ``move_to`` (refused without it)."""
        table, conn = self.table, self.conn
        if move_to is None:
            (rows,) = one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(self.dst)))
            raise SwapError(
                f"{table} exists ({rows} rows): the swap puts the rebuilt table under that name. "
                f"Move it aside with --move-existing-to SCHEMA (it keeps its indexes and "
                "sequences there), or rename or drop it yourself"
            )
        if move_to in (table.schema, self.source.schema):
            raise SwapError(
                f"--move-existing-to {move_to}: give another schema than the table's own"
            )
        if relation_exists(conn, TableName(move_to, table.name)):
            raise SwapError(f"{TableName(move_to, table.name)} exists too: choose another schema")
        self.steps.append(Step(f"CREATE SCHEMA IF NOT EXISTS {quote(move_to)}"))
        self.steps.append(Step(f"ALTER TABLE {self.dst} SET SCHEMA {quote(move_to)}"))
        self.moved = str(TableName(move_to, table.name))

    def check_columns(self) -> None:
        """The rebuilt table has the DDL's columns with the DDL's types, and no other."""
        rebuilt, source, table = self.rebuilt, self.source, self.table
        types = canonical_types(self.conn, self.definition)
        for column in self.definition.columns:
            have = rebuilt.columns.get(column.name)
            if have is None:
                if column.generated is not None:
                    continue
                raise SwapError(
                    f"column {column.name} ({types[column.name]}) of the DDL is not in {source} "
                    f"(it has {', '.join(rebuilt.order)}): is this the DDL of {table}?"
                )
            if have[0] != types[column.name]:
                raise SwapError(
                    f"column {column.name} is {types[column.name]} in the DDL but {have[0]} in "
                    f"{source}: ALTER TABLE {self.src} ALTER COLUMN {quote(column.name)} TYPE "
                    f"{types[column.name]} first, or give the DDL the table had"
                )
        extra = [name for name in rebuilt.order if name not in self.wanted]
        if extra:
            raise SwapError(
                f"{source} has column {extra[0]}, which the DDL of {table} does not define: "
                "give the DDL the table had when it was dropped"
            )
        ddl_order = [c.name for c in self.definition.columns if c.name in rebuilt.columns]
        if ddl_order != list(rebuilt.order):
            self.notes.append(
                f"the columns are in another order than in the DDL ({', '.join(rebuilt.order)}):"
                " SELECT * lists them in that order"
            )

    def drop_extras(self) -> None:
        """1. The rebuilt table's own extras go: the DDL says what the table has."""
        rebuilt, src, steps = self.rebuilt, self.src, self.steps
        for name in rebuilt.constraints:
            steps.append(Step(f"ALTER TABLE {src} DROP CONSTRAINT {quote(name)}"))
        for name in rebuilt.indexes:
            steps.append(Step(f"DROP INDEX {quote(self.source.schema, name)}"))
        if rebuilt.primary_key is not None and not self.keep_pk:
            steps.append(Step(f"ALTER TABLE {src} DROP CONSTRAINT {quote(rebuilt.primary_key[0])}"))
        for name, (_, not_null, has_default, _) in rebuilt.columns.items():
            column = self.wanted[name]
            if has_default and column.default is None:
                steps.append(Step(f"ALTER TABLE {src} ALTER COLUMN {quote(name)} DROP DEFAULT"))
            if not_null and not column.not_null:
                steps.append(Step(f"ALTER TABLE {src} ALTER COLUMN {quote(name)} DROP NOT NULL"))
        if rebuilt.replica_identity == "f" and not any(
            "REPLICA IDENTITY" in s for s in self.definition.verbatim
        ):
            steps.append(Step(f"ALTER TABLE {src} REPLICA IDENTITY DEFAULT"))

    def into_place(self) -> None:
        """2. Into place: the table's schema, then its name."""
        source, table = self.source, self.table
        if source.schema != table.schema:
            self.steps.append(Step(f"ALTER TABLE {self.src} SET SCHEMA {quote(table.schema)}"))
        if source.name != table.name:
            self.steps.append(
                Step(
                    f"ALTER TABLE {quote(table.schema, source.name)} RENAME TO {quote(table.name)}"
                )
            )

    def primary_key(self) -> None:
        """3. The primary key: the rebuilt one renamed when it is the same, else added."""
        pk = self.definition.primary_key
        if pk is None:
            return
        name = pk.name or default_name(self.table.name, "pkey")
        self.constraint_names.append(name)
        if not self.keep_pk:
            self.steps.append(
                Step(f"ALTER TABLE {self.dst} ADD {pk.clause}", constraint_check(pk, name))
            )
            return
        assert self.rebuilt.primary_key is not None
        if self.rebuilt.primary_key[0] != name:
            self.steps.append(
                Step(
                    f"ALTER TABLE {self.dst} RENAME CONSTRAINT "
                    f"{quote(self.rebuilt.primary_key[0])} TO {quote(name)}"
                )
            )

    def columns(self) -> None:
        """4. Collations and generated columns."""
        dst = self.dst
        for column in self.definition.columns:
            have = self.rebuilt.columns.get(column.name)
            if have is None:
                self.steps.append(
                    Step(
                        f"ALTER TABLE {dst} ADD COLUMN {quote(column.name)} {column.type_sql}"
                        f" GENERATED ALWAYS AS ({column.generated}) STORED"
                    )
                )
                self.notes.append(
                    f"generated column {column.name} is computed again from its expression"
                )
                continue
            if column.generated is not None:
                self.notes.append(
                    f"column {column.name} is generated in the DDL; the rebuilt column keeps the "
                    "values it was given but is not generated (PostgreSQL cannot make it so)"
                )
            if column.collation is not None and quote(have[3] or "default") != column.collation:
                self.steps.append(
                    Step(
                        f"ALTER TABLE {dst} ALTER COLUMN {quote(column.name)} TYPE "
                        f"{column.type_sql} COLLATE {column.collation}"
                    )
                )

    def sequences(self) -> None:
        """5a. Sequences: re-created (or kept), continued after the table's largest value."""
        conn, table = self.conn, self.table
        for seq in self.definition.sequences:
            if seq.column is None or seq.column not in self.rebuilt.columns:
                continue
            seq_ident = quote(seq.name.schema, seq.name.name)
            identity = self.wanted[seq.column].identity is not None
            kept = (
                relation_exists(conn, seq.name)
                and not identity
                and not (self.moved and owned_by_table(conn, seq.name, table))
            )
            if kept:
                self.notes.append(f"sequence {seq.name} exists: kept, moved forward only if behind")
            elif seq.create is not None:
                self.steps.append(Step(seq.create))
            elif not identity:
                raise SwapError(
                    f"the DDL uses sequence {seq.name} for {table}.{seq.column} but does not "
                    "create it, and it does not exist: add its CREATE SEQUENCE to the DDL"
                )
            self.steps.extend(Step(s) for s in seq.statements)
            step, after = continue_sequence(
                conn, seq, self.src, seq_ident, identity, kept, self.dst
            )
            if step is not None:
                self.setvals.append(step)
            self.sequence_values.append((str(seq.name), after))

    def defaults(self) -> None:
        """5b. Defaults, NOT NULL (checked), identity."""
        dst = self.dst
        for column in self.definition.columns:
            have = self.rebuilt.columns.get(column.name)
            if column.default is not None:
                self.steps.append(
                    Step(
                        f"ALTER TABLE {dst} ALTER COLUMN {quote(column.name)} SET DEFAULT "
                        f"{column.default}"
                    )
                )
            if (
                column.not_null
                and not (have is not None and have[1])
                and column.name not in self.key
            ):
                self.steps.append(
                    Step(
                        f"ALTER TABLE {dst} ALTER COLUMN {quote(column.name)} SET NOT NULL",
                        RowCheck(
                            f"NOT NULL on {column.name}", where=f"{quote(column.name)} IS NULL"
                        ),
                    )
                )
        for column in self.definition.columns:
            if column.identity is not None:
                self.steps.append(Step(column.identity))

    def constraints_and_indexes(self) -> None:
        """6. Constraints (foreign keys last), indexes, the rest as written, the setvals."""
        for con in sorted(self.definition.constraints, key=lambda c: c.kind == "f"):
            name = con.name or chosen_name(self.table.name, con)
            self.constraint_names.append(name)
            self.steps.append(
                Step(f"ALTER TABLE {self.dst} ADD {con.clause}", constraint_check(con, name))
            )
        for index in self.definition.indexes:
            self.index_names.append(index.name or "(unnamed)")
            check = (
                RowCheck(
                    f"unique index {index.name}",
                    unique=index.elements,
                    unique_where=index.where,
                    nulls_distinct=not index.nulls_not_distinct,
                )
                if index.unique
                else None
            )
            self.steps.append(Step(index.statement, check))
        self.steps.extend(Step(s) for s in self.definition.verbatim)
        self.steps.extend(self.setvals)

    def owner_grants_comments(self) -> None:
        """7. Owner, grants, comments; walrecover's bookkeeping of the recovery; statistics."""
        definition, steps = self.definition, self.steps
        ours = [seq for seq in definition.sequences if seq.column in self.rebuilt.columns]
        for seq in ours:
            steps.extend(Step(s) for s in seq.owner)
        steps.extend(Step(s) for s in definition.owner)
        self.grants = list(definition.grants)
        self.comments = list(definition.comments)
        for seq in ours:
            self.grants.extend(seq.grants)
            self.comments.extend(seq.comments)
        steps.extend(Step(s) for s in self.grants)
        steps.extend(Step(s) for s in self.comments)
        progress = quote(PROGRESS_SCHEMA, PROGRESS_TABLE)
        (has_progress,) = one(self.conn, "SELECT to_regclass(%s) IS NOT NULL", (progress,))
        if has_progress:
            steps.append(Step(f"DELETE FROM {progress} WHERE target = {literal(str(self.source))}"))
        steps.append(Step(f"ANALYZE {self.dst}"))
