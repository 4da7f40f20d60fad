"""Put a rebuilt table back in place of the dropped one: ``walrecover swap``.

The rebuilt table holds the right rows but none of the original's NOT NULLs, defaults, indexes
(other than its key), foreign keys, grants or sequence; the DROP removed the table's owned
sequences too, so the application's next INSERT fails. :func:`swap` takes the original table's
DDL (``pg_dump --schema-only -t``, an old backup, the migrations) and, in one transaction,
renames the rebuilt table into place and gives it everything the DDL says: constraints and
indexes (validated), owned sequences re-created at the largest key, defaults, NOT NULL, identity,
grants, owner, comments, triggers and policies; then ANALYZEs it.

The DDL is read with pglast (PostgreSQL's own parser), never with regular expressions:
:func:`parse_ddl` keeps the statements about the table and its sequences and lists everything
else as ignored, saying why. The rebuilt table's columns must have the DDL's types; a difference
is refused naming the column. A constraint the rows violate stops the swap before anything is
committed, naming the first offending rows by key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ConstrType, GrantTargetType, ObjectType
from pglast.parser import ParseError
from pglast.stream import RawStream, maybe_double_quote_name
from psycopg import sql

from ..db import Connection, connect, one
from ..errors import SwapError, first_line
from ..stream.model import TableName
from .target import PROGRESS_SCHEMA, PROGRESS_TABLE, lock_target

#: Rows named when a constraint fails.
EXAMPLES = 5

_SERIALS = {
    "smallserial": "smallint",
    "serial2": "smallint",
    "serial": "integer",
    "serial4": "integer",
    "bigserial": "bigint",
    "serial8": "bigint",
}

#: ALTER TABLE subcommands on the table that are applied as written.
_VERBATIM_ALTERS = {
    AlterTableType.AT_ReplicaIdentity,
    AlterTableType.AT_SetStatistics,
    AlterTableType.AT_SetStorage,
    AlterTableType.AT_SetCompression,
    AlterTableType.AT_SetOptions,
    AlterTableType.AT_ResetOptions,
    AlterTableType.AT_SetRelOptions,
    AlterTableType.AT_ResetRelOptions,
    AlterTableType.AT_EnableRowSecurity,
    AlterTableType.AT_DisableRowSecurity,
    AlterTableType.AT_ForceRowSecurity,
    AlterTableType.AT_NoForceRowSecurity,
    AlterTableType.AT_ClusterOn,
    AlterTableType.AT_EnableTrig,
    AlterTableType.AT_EnableAlwaysTrig,
    AlterTableType.AT_EnableReplicaTrig,
    AlterTableType.AT_DisableTrig,
    AlterTableType.AT_EnableTrigAll,
    AlterTableType.AT_DisableTrigAll,
    AlterTableType.AT_EnableTrigUser,
    AlterTableType.AT_DisableTrigUser,
    AlterTableType.AT_ValidateConstraint,
    AlterTableType.AT_SetLogged,
    AlterTableType.AT_SetUnLogged,
}


def _sql(node: Any) -> str:
    """A parse tree printed back as SQL."""
    return str(RawStream()(node))


def _quote(*parts: str) -> str:
    """Identifiers quoted only where PostgreSQL needs it (as pglast prints them)."""
    return ".".join(maybe_double_quote_name(part) for part in parts)


def _short(text: str, limit: int = 90) -> str:
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


# -- what the DDL says ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ignored:
    """A statement of the DDL that the swap does not apply, and why."""

    statement: str
    reason: str
    #: True when it concerns the table itself: the user should apply it by hand.
    about_table: bool = False


@dataclass(slots=True)
class _Column:
    name: str
    type_sql: str
    not_null: bool = False
    default: str | None = None
    collation: str | None = None
    serial: bool = False
    generated: str | None = None
    identity: str | None = None


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


@dataclass(slots=True)
class _Sequence:
    name: TableName
    create: str | None = None
    increment: int = 1
    start: int | None = None
    owned_by: str | None = None
    statements: list[str] = field(default_factory=list)
    owner: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


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


def _strip_psql(text: str) -> tuple[str, int]:
    """Remove psql meta-commands (pg_dump's ``\\restrict`` lines): pglast reads SQL only."""
    lines = text.splitlines()
    kept = ["" if line.startswith("\\") else line for line in lines]
    return "\n".join(kept), sum(1 for line in lines if line.startswith("\\"))


def _name_of(value: str, schema: str) -> TableName:
    return TableName.parse(value, default_schema=schema)


def _strings(nodes: Iterable[Any] | None) -> tuple[str, ...]:
    return tuple(str(n.sval) for n in nodes or ())


def _int(arg: Any) -> int | None:
    if isinstance(arg, ast.Integer):
        return int(arg.ival or 0)
    if isinstance(arg, ast.Float):
        return int(str(arg.fval))
    return None


class _Reader:
    """One pass over the DDL's statements, sorting them by what they do to the table."""

    def __init__(self, table: TableName) -> None:
        self.table = table
        self.created = False
        self.columns: dict[str, _Column] = {}
        self.primary_key: Constraint | None = None
        self.constraints: list[Constraint] = []
        self.indexes: list[Index] = []
        self.sequences: dict[TableName, _Sequence] = {}
        self.verbatim: list[str] = []
        self.owner: list[str] = []
        self.grants: list[str] = []
        self.comments: list[str] = []
        self.ignored: list[Ignored] = []
        self.notes: list[str] = []
        self.settings = 0
        self.other_tables: list[str] = []
        #: Statements about relations that may turn out to be the table's sequences.
        self.pending: list[tuple[TableName, str, Any]] = []
        #: COMMENT ON INDEX statements, kept if the index turns out to be the table's.
        self.index_comments: list[tuple[str, Any]] = []

    # -- names ---------------------------------------------------------------------------

    def resolve(self, rv: Any) -> TableName:
        return TableName(rv.schemaname or self.table.schema, rv.relname)

    def is_table(self, rv: Any) -> bool:
        return bool(rv is not None and self.resolve(rv) == self.table)

    def ident(self) -> str:
        return _quote(self.table.schema, self.table.name)

    def sequence(self, name: TableName) -> _Sequence:
        if name not in self.sequences:
            self.sequences[name] = _Sequence(name)
        return self.sequences[name]

    def ignore(self, node: Any, reason: str, *, about_table: bool = False) -> None:
        try:
            text = _sql(node)
        except Exception:
            text = type(node).__name__
        self.ignored.append(Ignored(_short(text), reason, about_table))

    # -- statements ----------------------------------------------------------------------

    def read(self, stmt: Any) -> None:
        handler = getattr(self, f"_{type(stmt).__name__}", None)
        if handler is not None:
            handler(stmt)
        else:
            self.ignore(stmt, "not about the table")

    def _VariableSetStmt(self, stmt: Any) -> None:
        self.settings += 1

    def _SelectStmt(self, stmt: Any) -> None:
        targets: tuple[Any, ...] = stmt.targetList or ()
        if (
            len(targets) == 1
            and isinstance(targets[0].val, ast.FuncCall)
            and _strings(targets[0].val.funcname)[-1] == "set_config"
            and stmt.fromClause is None
        ):
            self.settings += 1
        else:
            self.ignore(stmt, "not about the table")

    def _CreateStmt(self, stmt: Any) -> None:
        if not self.is_table(stmt.relation):
            self.other_tables.append(str(self.resolve(stmt.relation)))
            self.ignore(stmt, "another table")
            return
        if self.created:
            raise SwapError(f"the DDL creates {self.table} twice: give one definition")
        self.created = True
        if stmt.partspec is not None or stmt.partbound is not None:
            raise SwapError(
                f"the DDL defines {self.table} as a partitioned table or a partition: "
                "walrecover swap puts back plain tables; attach the rebuilt table by hand"
            )
        if stmt.inhRelations:
            self.notes.append(
                f"INHERITS ({', '.join(_sql(r) for r in stmt.inhRelations)}) is not applied: "
                "ALTER TABLE ... INHERIT by hand if the table needs it"
            )
        if stmt.relation.relpersistence == "u":
            self.verbatim.append(f"ALTER TABLE {self.ident()} SET UNLOGGED")
        if stmt.options:
            options = ", ".join(_sql(o) for o in stmt.options)
            self.verbatim.append(f"ALTER TABLE {self.ident()} SET ({options})")
        for element in stmt.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                self.column(element)
            elif isinstance(element, ast.Constraint):
                self.constraint(element, None)
            else:
                raise SwapError(
                    f"the DDL's CREATE TABLE {self.table} uses {_short(_sql(element), 40)}, "
                    "which walrecover swap cannot apply: write the columns out"
                )

    def column(self, col: Any) -> None:
        names = _strings(col.typeName.names)
        type_sql = _sql(col.typeName)
        serial = len(names) == 1 and names[0] in _SERIALS and not col.typeName.arrayBounds
        if serial:
            type_sql = _SERIALS[names[0]]
        spec = _Column(col.colname, type_sql, not_null=bool(col.is_not_null) or serial)
        if col.collClause is not None:
            spec.collation = ".".join(_quote(n) for n in _strings(col.collClause.collname))
        if serial:
            seq = TableName(self.table.schema, default_name(self.table.name, col.colname, "seq"))
            spec.serial = True
            spec.default = f"nextval({_literal(str(seq))}::regclass)"
            sequence = self.sequence(seq)
            sequence.create = f"CREATE SEQUENCE {_quote(seq.schema, seq.name)} AS {type_sql}"
            sequence.owned_by = col.colname
            sequence.statements.append(
                f"ALTER SEQUENCE {_quote(seq.schema, seq.name)} OWNED BY "
                f"{_quote(self.table.schema, self.table.name, col.colname)}"
            )
        if col.raw_default is not None:
            spec.default = _sql(col.raw_default)
        self.columns[col.colname] = spec
        for con in col.constraints or ():
            self.constraint(con, col.colname)

    def constraint(self, con: Any, column: str | None) -> None:
        kind = con.contype
        if kind == ConstrType.CONSTR_NOTNULL:
            if column is not None:
                self.columns[column].not_null = True
            return
        if kind == ConstrType.CONSTR_NULL:
            return
        if kind == ConstrType.CONSTR_DEFAULT:
            assert column is not None
            self.columns[column].default = _sql(con.raw_expr)
            return
        if kind == ConstrType.CONSTR_IDENTITY:
            assert column is not None
            self.columns[column].not_null = True
            self.columns[
                column
            ].identity = f"ALTER TABLE {self.ident()} ALTER COLUMN {_quote(column)} ADD {_sql(con)}"
            self.identity_options(column, con.options)
            return
        if kind == ConstrType.CONSTR_GENERATED:
            assert column is not None
            self.columns[column].generated = _sql(con.raw_expr)
            return
        con = copy.deepcopy(con)
        if column is not None:
            if kind in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE):
                con.keys = (ast.String(column),)
            elif kind == ConstrType.CONSTR_FOREIGN:
                con.fk_attrs = (ast.String(column),)
        codes = {
            ConstrType.CONSTR_PRIMARY: "p",
            ConstrType.CONSTR_UNIQUE: "u",
            ConstrType.CONSTR_CHECK: "c",
            ConstrType.CONSTR_EXCLUSION: "x",
            ConstrType.CONSTR_FOREIGN: "f",
        }
        if kind not in codes:
            self.ignore(con, "a constraint kind walrecover swap does not apply", about_table=True)
            return
        if kind == ConstrType.CONSTR_PRIMARY and column is not None:
            self.columns[column].not_null = True
        clause = _sql(con)
        spec = Constraint(
            name=con.conname,
            kind=codes[kind],
            clause=clause,
            columns=_strings(con.fk_attrs if kind == ConstrType.CONSTR_FOREIGN else con.keys),
            check=_sql(con.raw_expr) if kind == ConstrType.CONSTR_CHECK else None,
            references=_sql(con.pktable) if kind == ConstrType.CONSTR_FOREIGN else None,
            referenced_columns=_strings(con.pk_attrs),
            nulls_not_distinct=bool(con.nulls_not_distinct),
        )
        if spec.kind == "p":
            if self.primary_key is not None:
                raise SwapError(f"the DDL gives {self.table} two primary keys")
            self.primary_key = spec
            for name in spec.columns:
                if name in self.columns:
                    self.columns[name].not_null = True
        else:
            self.constraints.append(spec)

    def identity_options(self, column: str, options: Any) -> None:
        seq_name: TableName | None = None
        increment, start = 1, None
        for option in options or ():
            if option.defname == "sequence_name":
                seq_name = TableName(
                    *(
                        _strings(option.arg)
                        if len(option.arg) == 2
                        else (self.table.schema, *_strings(option.arg))
                    )
                )
            elif option.defname == "increment":
                increment = _int(option.arg) or 1
            elif option.defname == "start":
                start = _int(option.arg)
        name = seq_name or TableName(
            self.table.schema, default_name(self.table.name, column, "seq")
        )
        sequence = self.sequence(name)
        sequence.owned_by = column
        sequence.increment, sequence.start = increment, start
        # The identity creates its sequence itself: nothing to CREATE.
        sequence.create = None

    def _AlterTableStmt(self, stmt: Any) -> None:
        if stmt.objtype == ObjectType.OBJECT_SEQUENCE or (
            not self.is_table(stmt.relation) and stmt.objtype == ObjectType.OBJECT_TABLE
        ):
            # pg_dump writes ALTER TABLE seq OWNER TO for sequences: decided at the end.
            self.pending.append((self.resolve(stmt.relation), "alter", stmt))
            return
        if not self.is_table(stmt.relation):
            self.ignore(stmt, "not about the table")
            return
        for cmd in stmt.cmds or ():
            one = copy.copy(stmt)
            one.cmds = (cmd,)
            self.alter(cmd, one)

    def alter(self, cmd: Any, stmt: Any) -> None:
        sub = cmd.subtype
        if sub == AlterTableType.AT_AddConstraint:
            self.constraint(cmd.def_, None)
        elif sub == AlterTableType.AT_ColumnDefault:
            self.known_column(cmd.name, stmt).default = None if cmd.def_ is None else _sql(cmd.def_)
        elif sub == AlterTableType.AT_SetNotNull:
            self.known_column(cmd.name, stmt).not_null = True
        elif sub == AlterTableType.AT_DropNotNull:
            self.known_column(cmd.name, stmt).not_null = False
        elif sub == AlterTableType.AT_AddIdentity:
            column = self.known_column(cmd.name, stmt)
            column.not_null = True
            column.identity = _sql(stmt).replace(" ONLY ", " ", 1)
            self.identity_options(cmd.name, cmd.def_.options)
        elif sub == AlterTableType.AT_ChangeOwner:
            self.owner.append(_sql(stmt))
        elif sub == AlterTableType.AT_AddColumn:
            self.column(cmd.def_)
        elif sub == AlterTableType.AT_DropColumn:
            self.columns.pop(cmd.name, None)
        elif sub == AlterTableType.AT_AlterColumnType:
            column = self.known_column(cmd.name, stmt)
            column.type_sql = _sql(cmd.def_.typeName)
            if cmd.def_.collClause is not None:
                column.collation = ".".join(
                    _quote(n) for n in _strings(cmd.def_.collClause.collname)
                )
        elif sub in _VERBATIM_ALTERS:
            self.verbatim.append(_sql(stmt))
        else:
            self.ignore(
                stmt,
                "an ALTER TABLE walrecover swap does not apply: run it by hand after the swap",
                about_table=True,
            )

    def known_column(self, name: str, stmt: Any) -> _Column:
        if name not in self.columns:
            raise SwapError(
                f"the DDL alters column {name} of {self.table} before defining it "
                f"({_short(_sql(stmt), 60)}): put the CREATE TABLE first"
            )
        return self.columns[name]

    def _CreateSeqStmt(self, stmt: Any) -> None:
        self.pending.append((self.resolve(stmt.sequence), "create", stmt))

    def _AlterSeqStmt(self, stmt: Any) -> None:
        self.pending.append((self.resolve(stmt.sequence), "alter-seq", stmt))

    def _IndexStmt(self, stmt: Any) -> None:
        if not self.is_table(stmt.relation):
            self.ignore(stmt, "an index of another table")
            return
        stmt = copy.deepcopy(stmt)
        if stmt.concurrent:
            stmt.concurrent = False
            self.notes.append(
                f"CREATE INDEX {stmt.idxname or ''} runs without CONCURRENTLY "
                "(the swap is one transaction, the table is not in use yet)"
            )
        elements = tuple(
            _quote(e.name) if e.name is not None else f"({_sql(e.expr)})"
            for e in stmt.indexParams or ()
        )
        self.indexes.append(
            Index(
                name=stmt.idxname,
                statement=_sql(stmt),
                unique=bool(stmt.unique),
                elements=elements,
                where=None if stmt.whereClause is None else _sql(stmt.whereClause),
                nulls_not_distinct=bool(stmt.nulls_not_distinct),
            )
        )

    def _GrantStmt(self, stmt: Any) -> None:
        if stmt.targtype != GrantTargetType.ACL_TARGET_OBJECT or stmt.objtype not in (
            ObjectType.OBJECT_TABLE,
            ObjectType.OBJECT_SEQUENCE,
        ):
            self.ignore(stmt, "not about the table")
            return
        for rv in stmt.objects or ():
            one = copy.copy(stmt)
            one.objects = (rv,)
            if stmt.objtype == ObjectType.OBJECT_TABLE and self.is_table(rv):
                self.grants.append(_sql(one))
            else:
                self.pending.append((self.resolve(rv), "grant", one))

    def _CommentStmt(self, stmt: Any) -> None:
        names = _strings(stmt.object) if isinstance(stmt.object, tuple) else ()
        relation: tuple[str, ...] = ()
        if stmt.objtype == ObjectType.OBJECT_TABLE:
            relation = names
        elif stmt.objtype in (
            ObjectType.OBJECT_COLUMN,
            ObjectType.OBJECT_TABCONSTRAINT,
            ObjectType.OBJECT_TRIGGER,
            ObjectType.OBJECT_POLICY,
            ObjectType.OBJECT_RULE,
        ):
            relation = names[:-1]
        elif stmt.objtype == ObjectType.OBJECT_SEQUENCE and names:
            name = TableName(*names) if len(names) == 2 else TableName(self.table.schema, names[-1])
            self.pending.append((name, "comment", stmt))
            return
        elif stmt.objtype == ObjectType.OBJECT_INDEX and names:
            self.index_comments.append((names[-1], stmt))
            return
        if relation and self.is_name(relation):
            self.comments.append(_sql(stmt))
        else:
            self.ignore(stmt, "not about the table")

    def is_name(self, parts: tuple[str, ...]) -> bool:
        if len(parts) == 1:
            return parts[0] == self.table.name
        return len(parts) == 2 and TableName(*parts) == self.table

    def _on_table(self, stmt: Any, rv: Any, what: str) -> None:
        if self.is_table(rv):
            self.verbatim.append(_sql(stmt))
        else:
            self.ignore(stmt, f"{what} of another table")

    def _CreateTrigStmt(self, stmt: Any) -> None:
        self._on_table(stmt, stmt.relation, "a trigger")

    def _CreatePolicyStmt(self, stmt: Any) -> None:
        self._on_table(stmt, stmt.table, "a policy")

    def _RuleStmt(self, stmt: Any) -> None:
        self._on_table(stmt, stmt.relation, "a rule")

    def _CreateStatsStmt(self, stmt: Any) -> None:
        relations: tuple[Any, ...] = stmt.relations or ()
        self._on_table(stmt, relations[0] if len(relations) == 1 else None, "statistics")

    # -- the end -------------------------------------------------------------------------

    def definition(self) -> Definition:
        if not self.created:
            others = ", ".join(self.other_tables) or "none"
            raise SwapError(
                f"the DDL has no CREATE TABLE for {self.table} (it creates: {others}): give "
                f"the original table's DDL (pg_dump --schema-only -t {self.table})"
            )
        # The table's sequences: owned by it, numbering an identity, or used by a default.
        ours: dict[TableName, str | None] = {
            name: seq.owned_by for name, seq in self.sequences.items()
        }
        for column in self.columns.values():
            if column.default is not None:
                used = _nextval(column.default, self.table.schema)
                if used is not None:
                    ours.setdefault(used, column.name)
                    if ours[used] is None:
                        ours[used] = column.name
        for name, kind, stmt in self.pending:
            if kind in ("create", "alter-seq"):
                owned = _owned_by(stmt, self.table.schema)
                if owned is not None and owned[0] == self.table:
                    ours[name] = owned[1]
        for name, kind, stmt in self.pending:
            if name not in ours:
                if kind == "alter" and stmt.objtype == ObjectType.OBJECT_TABLE:
                    self.ignore(stmt, "another table")
                else:
                    self.ignore(stmt, "a sequence the table does not use")
                continue
            seq = self.sequence(name)
            if kind == "create":
                seq.create = _sql(stmt)
                for option in stmt.options or ():
                    if option.defname == "increment":
                        seq.increment = _int(option.arg) or 1
                    elif option.defname == "start":
                        seq.start = _int(option.arg)
            elif kind == "alter-seq":
                seq.statements.append(_sql(stmt))
            elif kind == "alter":
                owner_only = all(
                    c.subtype == AlterTableType.AT_ChangeOwner for c in stmt.cmds or ()
                )
                text = _sql(stmt).replace("ALTER TABLE", "ALTER SEQUENCE", 1)
                (seq.owner if owner_only else seq.statements).append(text)
            elif kind == "grant":
                seq.grants.append(_sql(stmt))
            elif kind == "comment":
                seq.comments.append(_sql(stmt))
        index_names = {i.name for i in self.indexes} | {
            c.name for c in [*self.constraints, self.primary_key] if c is not None and c.name
        }
        for index_name, stmt in self.index_comments:
            if index_name in index_names:
                self.comments.append(_sql(stmt))
            else:
                self.ignore(stmt, "not about the table")
        if self.settings:
            self.ignored.insert(0, Ignored(f"{self.settings} SET statements", "session settings"))
        return Definition(
            table=self.table,
            columns=tuple(
                ColumnDefinition(
                    c.name, c.type_sql, c.not_null, c.default, c.collation, c.generated, c.identity
                )
                for c in self.columns.values()
            ),
            primary_key=self.primary_key,
            constraints=tuple(self.constraints),
            indexes=tuple(self.indexes),
            sequences=tuple(
                SequenceDefinition(
                    name=name,
                    create=self.sequence(name).create,
                    increment=self.sequence(name).increment,
                    start=self.sequence(name).start,
                    column=column,
                    statements=tuple(self.sequence(name).statements),
                    owner=tuple(self.sequence(name).owner),
                    grants=tuple(self.sequence(name).grants),
                    comments=tuple(self.sequence(name).comments),
                )
                for name, column in ours.items()
            ),
            verbatim=tuple(self.verbatim),
            owner=tuple(self.owner),
            grants=tuple(self.grants),
            comments=tuple(self.comments),
            ignored=tuple(self.ignored),
            notes=tuple(self.notes),
        )


def _literal(text: str) -> str:
    return sql.Literal(text).as_string(None)


_NEXTVAL = re.compile(
    r"^nextval\(\s*(?:CAST\()?'((?:[^']|'')+)'(?:\s*(?:AS|::)\s*regclass\)?)?\s*\)$"
)


def _nextval(default: str, schema: str) -> TableName | None:
    """The sequence of a ``nextval('seq')`` default (as pglast prints it), else None."""
    try:
        (raw,) = parse_sql(f"SELECT {default}")
    except ParseError:
        return None
    select: Any = raw.stmt
    targets: tuple[Any, ...] = select.targetList or ()
    if len(targets) != 1 or not isinstance(targets[0].val, ast.FuncCall):
        return None
    call: Any = targets[0].val
    if _strings(call.funcname)[-1] != "nextval" or len(call.args or ()) != 1:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.TypeCast):
        arg = arg.arg
    if not isinstance(arg, ast.A_Const) or not isinstance(arg.val, ast.String):
        return None
    try:
        return _name_of(str(arg.val.sval), schema)
    except ValueError:
        return None


def _owned_by(stmt: Any, schema: str) -> tuple[TableName, str] | None:
    for option in stmt.options or ():
        if option.defname == "owned_by":
            parts = _strings(option.arg)
            if len(parts) == 3:
                return TableName(parts[0], parts[1]), parts[2]
            if len(parts) == 2:
                return TableName(schema, parts[0]), parts[1]
    return None


def parse_ddl(text: str, table: TableName) -> Definition:
    """What ``text`` (SQL, e.g. from ``pg_dump --schema-only``) says about ``table``.

    Pure: no database. Raise :class:`SwapError` when the DDL cannot be read or does not
    define the table. psql meta-commands (lines starting with a backslash) are skipped.
    """
    cleaned, meta = _strip_psql(text)
    try:
        statements = parse_sql(cleaned)
    except ParseError as exc:
        line = cleaned.count("\n", 0, max(int(getattr(exc, "location", 0) or 0), 0)) + 1
        raise SwapError(
            f"the DDL is not SQL PostgreSQL can parse ({first_line(exc)}, near line {line}): "
            "give the output of pg_dump --schema-only or the migrations' SQL"
        ) from None
    reader = _Reader(table)
    for raw in statements:
        reader.read(raw.stmt)
    if meta:
        reader.ignored.insert(0, Ignored(f"{meta} psql meta-commands (\\...)", "not SQL"))
    return reader.definition()


# -- the swap ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Check:
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
    check: _Check | None = None


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


@dataclass(frozen=True, slots=True)
class _Relation:
    columns: dict[str, tuple[str, bool, bool, str | None]]
    order: tuple[str, ...]
    primary_key: tuple[str, tuple[str, ...]] | None
    constraints: tuple[str, ...]
    indexes: tuple[str, ...]
    replica_identity: str
    rows: int


def _read_relation(conn: Connection, ident: str) -> _Relation:
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
    return _Relation(
        columns={r[0]: (r[1], bool(r[2]), bool(r[3]), r[4]) for r in cols},
        order=tuple(r[0] for r in cols),
        primary_key=(pk[0], tuple(pk[1])) if pk else None,
        constraints=tuple(r[0] for r in others),
        indexes=tuple(r[0] for r in indexes),
        replica_identity=str(identity),
        rows=int(rows),
    )


def _canonical_types(conn: Connection, definition: Definition) -> dict[str, str]:
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


def _exists(conn: Connection, name: TableName) -> bool:
    (oid,) = one(conn, "SELECT to_regclass(%s)::oid", (_quote(name.schema, name.name),))
    return oid is not None


def _owned_by_table(conn: Connection, sequence: TableName, table: TableName) -> bool:
    """True if ``sequence`` belongs to ``table`` (serial or identity): it moves with it."""
    (owned,) = one(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass"
        " AND objid = %s::regclass AND refobjid = %s::regclass AND deptype IN ('a', 'i'))",
        (_quote(sequence.schema, sequence.name), _quote(table.schema, table.name)),
    )
    return bool(owned)


def _unfinished(conn: Connection, source: TableName) -> bool:
    progress = _quote(PROGRESS_SCHEMA, PROGRESS_TABLE)
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
    src = _quote(source.schema, source.name)
    dst = _quote(table.schema, table.name)
    if not _exists(conn, source):
        raise SwapError(
            f"the rebuilt table {source} does not exist: give --from (the --into of recover)"
        )
    if _unfinished(conn, source):
        raise SwapError(
            f"{source} holds an unfinished recovery: rerun the recover command to finish it, "
            "then swap"
        )
    if not dry_run:
        # Nothing may change the rows between reading the largest key and the commit.
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(src)))
    steps: list[Step] = []
    notes = list(definition.notes)
    moved: str | None = None
    if _exists(conn, table):
        if move_to is None:
            (rows,) = one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(dst)))
            raise SwapError(
                f"{table} exists ({rows} rows): the swap puts the rebuilt table under that name. "
                f"Move it aside with --move-existing-to SCHEMA (it keeps its indexes and "
                "sequences there), or rename or drop it yourself"
            )
        if move_to in (table.schema, source.schema):
            raise SwapError(
                f"--move-existing-to {move_to}: give another schema than the table's own"
            )
        if _exists(conn, TableName(move_to, table.name)):
            raise SwapError(f"{TableName(move_to, table.name)} exists too: choose another schema")
        steps.append(Step(f"CREATE SCHEMA IF NOT EXISTS {_quote(move_to)}"))
        steps.append(Step(f"ALTER TABLE {dst} SET SCHEMA {_quote(move_to)}"))
        moved = str(TableName(move_to, table.name))
    rebuilt = _read_relation(conn, src)
    types = _canonical_types(conn, definition)
    wanted = {c.name: c for c in definition.columns}
    for column in definition.columns:
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
                f"{source}: ALTER TABLE {src} ALTER COLUMN {_quote(column.name)} TYPE "
                f"{types[column.name]} first, or give the DDL the table had"
            )
    extra = [name for name in rebuilt.order if name not in wanted]
    if extra:
        raise SwapError(
            f"{source} has column {extra[0]}, which the DDL of {table} does not define: "
            "give the DDL the table had when it was dropped"
        )
    ddl_order = [c.name for c in definition.columns if c.name in rebuilt.columns]
    if ddl_order != list(rebuilt.order):
        notes.append(
            f"the columns are in another order than in the DDL ({', '.join(rebuilt.order)}): "
            "SELECT * lists them in that order"
        )

    # 1. The rebuilt table's own extras go: the DDL says what the table has.
    pk = definition.primary_key
    keep_pk = (
        rebuilt.primary_key is not None
        and pk is not None
        and (rebuilt.primary_key[1] == pk.columns)
    )
    for name in rebuilt.constraints:
        steps.append(Step(f"ALTER TABLE {src} DROP CONSTRAINT {_quote(name)}"))
    for name in rebuilt.indexes:
        steps.append(Step(f"DROP INDEX {_quote(source.schema, name)}"))
    if rebuilt.primary_key is not None and not keep_pk:
        steps.append(Step(f"ALTER TABLE {src} DROP CONSTRAINT {_quote(rebuilt.primary_key[0])}"))
    for name, (_, not_null, has_default, _) in rebuilt.columns.items():
        column = wanted[name]
        if has_default and column.default is None:
            steps.append(Step(f"ALTER TABLE {src} ALTER COLUMN {_quote(name)} DROP DEFAULT"))
        if not_null and not column.not_null:
            steps.append(Step(f"ALTER TABLE {src} ALTER COLUMN {_quote(name)} DROP NOT NULL"))
    if rebuilt.replica_identity == "f" and not any(
        "REPLICA IDENTITY" in s for s in definition.verbatim
    ):
        steps.append(Step(f"ALTER TABLE {src} REPLICA IDENTITY DEFAULT"))

    # 2. Into place.
    if source.schema != table.schema:
        steps.append(Step(f"ALTER TABLE {src} SET SCHEMA {_quote(table.schema)}"))
    if source.name != table.name:
        steps.append(
            Step(f"ALTER TABLE {_quote(table.schema, source.name)} RENAME TO {_quote(table.name)}")
        )
    key = pk.columns if pk is not None else (rebuilt.primary_key[1] if rebuilt.primary_key else ())

    # 3. The primary key: the rebuilt one renamed when it is the same, else added.
    constraints: list[str] = []
    if pk is not None:
        name = pk.name or default_name(table.name, "pkey")
        constraints.append(name)
        if keep_pk:
            assert rebuilt.primary_key is not None
            if rebuilt.primary_key[0] != name:
                steps.append(
                    Step(
                        f"ALTER TABLE {dst} RENAME CONSTRAINT "
                        f"{_quote(rebuilt.primary_key[0])} TO {_quote(name)}"
                    )
                )
        else:
            steps.append(Step(f"ALTER TABLE {dst} ADD {pk.clause}", _constraint_check(pk, name)))

    # 4. Collations and generated columns.
    for column in definition.columns:
        have = rebuilt.columns.get(column.name)
        if have is None:
            steps.append(
                Step(
                    f"ALTER TABLE {dst} ADD COLUMN {_quote(column.name)} {column.type_sql}"
                    f" GENERATED ALWAYS AS ({column.generated}) STORED"
                )
            )
            notes.append(f"generated column {column.name} is computed again from its expression")
            continue
        if column.generated is not None:
            notes.append(
                f"column {column.name} is generated in the DDL; the rebuilt column keeps the "
                "values it was given but is not generated (PostgreSQL cannot make it so)"
            )
        if column.collation is not None and _quote(have[3] or "default") != column.collation:
            steps.append(
                Step(
                    f"ALTER TABLE {dst} ALTER COLUMN {_quote(column.name)} TYPE "
                    f"{column.type_sql} COLLATE {column.collation}"
                )
            )

    # 5. Sequences, defaults, NOT NULL, identity.
    sequences: list[tuple[str, int]] = []
    setvals: list[Step] = []
    for seq in definition.sequences:
        if seq.column is None or seq.column not in rebuilt.columns:
            continue
        seq_ident = _quote(seq.name.schema, seq.name.name)
        identity = wanted[seq.column].identity is not None
        exists = (
            _exists(conn, seq.name)
            and not identity
            and not (moved and _owned_by_table(conn, seq.name, table))
        )
        if exists:
            notes.append(f"sequence {seq.name} exists: kept, moved forward only if behind")
        elif seq.create is not None:
            steps.append(Step(seq.create))
        elif not identity:
            raise SwapError(
                f"the DDL uses sequence {seq.name} for {table}.{seq.column} but does not create "
                "it, and it does not exist: add its CREATE SEQUENCE to the DDL"
            )
        steps.extend(Step(s) for s in seq.statements)
        step, after = _continue_sequence(conn, seq, src, seq_ident, identity, exists, dst)
        if step is not None:
            setvals.append(step)
        sequences.append((str(seq.name), after))
    for column in definition.columns:
        have = rebuilt.columns.get(column.name)
        if column.default is not None:
            steps.append(
                Step(
                    f"ALTER TABLE {dst} ALTER COLUMN {_quote(column.name)} SET DEFAULT "
                    f"{column.default}"
                )
            )
        if column.not_null and not (have is not None and have[1]) and column.name not in key:
            steps.append(
                Step(
                    f"ALTER TABLE {dst} ALTER COLUMN {_quote(column.name)} SET NOT NULL",
                    _Check(f"NOT NULL on {column.name}", where=f"{_quote(column.name)} IS NULL"),
                )
            )
    for column in definition.columns:
        if column.identity is not None:
            steps.append(Step(column.identity))

    # 6. Constraints (foreign keys last), indexes, the rest as written.
    ordered = sorted(definition.constraints, key=lambda c: c.kind == "f")
    for con in ordered:
        name = con.name or _chosen_name(table.name, con)
        constraints.append(name)
        steps.append(Step(f"ALTER TABLE {dst} ADD {con.clause}", _constraint_check(con, name)))
    indexes: list[str] = []
    for index in definition.indexes:
        indexes.append(index.name or "(unnamed)")
        check = (
            _Check(
                f"unique index {index.name}",
                unique=index.elements,
                unique_where=index.where,
                nulls_distinct=not index.nulls_not_distinct,
            )
            if index.unique
            else None
        )
        steps.append(Step(index.statement, check))
    steps.extend(Step(s) for s in definition.verbatim)
    steps.extend(setvals)

    # 7. Owner, grants, comments; walrecover's bookkeeping of the recovery; statistics.
    for seq in definition.sequences:
        if seq.column in rebuilt.columns:
            steps.extend(Step(s) for s in seq.owner)
    steps.extend(Step(s) for s in definition.owner)
    grants = list(definition.grants)
    comments = list(definition.comments)
    for seq in definition.sequences:
        if seq.column in rebuilt.columns:
            grants.extend(seq.grants)
            comments.extend(seq.comments)
    steps.extend(Step(s) for s in grants)
    steps.extend(Step(s) for s in comments)
    progress = _quote(PROGRESS_SCHEMA, PROGRESS_TABLE)
    (has_progress,) = one(conn, "SELECT to_regclass(%s) IS NOT NULL", (progress,))
    if has_progress:
        steps.append(Step(f"DELETE FROM {progress} WHERE target = {_literal(str(source))}"))
    steps.append(Step(f"ANALYZE {dst}"))

    owner = None
    for text in definition.owner:
        owner = text.rsplit(" OWNER TO ", 1)[-1]
    result = SwapResult(
        table=str(table),
        source=str(source),
        applied=not dry_run,
        rows=rebuilt.rows,
        statements=tuple(s.sql for s in steps),
        constraints=tuple(constraints),
        indexes=tuple(indexes),
        sequences=tuple(sequences),
        grants=len(grants),
        owner=owner,
        comments=len(comments),
        ignored=definition.ignored,
        notes=tuple(notes),
        moved_existing_to=moved,
    )
    if dry_run:
        conn.rollback()
        return result
    _run(conn, steps, table, source, key)
    conn.commit()
    return result


def _chosen_name(table: str, con: Constraint) -> str:
    label = {"u": "key", "c": "check", "x": "excl", "f": "fkey", "p": "pkey"}[con.kind]
    if con.kind == "p":
        return default_name(table, label)
    columns = con.columns[:1] if con.kind == "c" else con.columns
    return default_name(table, *columns, label) if columns else default_name(table, label)


def _constraint_check(con: Constraint, name: str) -> _Check | None:
    columns = tuple(_quote(c) for c in con.columns)
    if con.kind == "p":
        nulls = " OR ".join(f"{c} IS NULL" for c in columns)
        return _Check(f"primary key {name}", where=nulls, unique=columns, nulls_distinct=True)
    if con.kind == "u":
        return _Check(
            f"unique constraint {name}", unique=columns, nulls_distinct=not con.nulls_not_distinct
        )
    if con.kind == "c" and con.check is not None:
        return _Check(f"check constraint {name}", where=f"NOT ({con.check})")
    if con.kind == "f" and con.references is not None:
        return _Check(f"foreign key {name} to {con.references}", foreign_key=con.clause)
    return None


def _continue_sequence(
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
    column = _quote(seq.column)
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
    return Step(f"SELECT pg_catalog.setval({_literal(seq_ident)}, {int(edge)}, true)"), following


def _run(
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
                f"the swap waited too long for a lock ({_short(step.sql, 70)}): the application "
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
            what = step.check.what if step.check else _short(step.sql, 80)
            raise SwapError(
                f"the swap stopped at {what}: {reason}{detail}{rows}; nothing was changed "
                f"({source} is as it was): fix those rows in {source} or the DDL, then swap "
                "again",
                statement=step.sql,
            ) from None
        conn.execute("RELEASE SAVEPOINT walrecover_swap")


def _offenders(
    conn: Connection, check: _Check, table: TableName, source: TableName, key: tuple[str, ...]
) -> str:
    """``: 3 rows, e.g. id=5, id=9`` for the rows that break ``check``, or ``""``."""
    dst = _quote(table.schema, table.name)
    key_sql = ", ".join(f"{_quote(k)}::text" for k in key) if key else "ctid::text"
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
        f" ORDER BY {', '.join(f'{dst}.{_quote(k)}' for k in labels)} LIMIT {EXAMPLES}"
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
    dst = _quote(table.schema, table.name)
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
    present = " AND ".join(f"{_quote(c)} IS NOT NULL" for c in mine)
    match = " AND ".join(
        f"walrecover_ref.{_quote(t)} = {dst}.{_quote(m)}" for m, t in zip(mine, theirs, strict=True)
    )
    return f"{present} AND NOT EXISTS (SELECT 1 FROM {ref} AS walrecover_ref WHERE {match})"
