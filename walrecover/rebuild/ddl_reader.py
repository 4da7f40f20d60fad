"""Reading a table's DDL with pglast (PostgreSQL's own parser), never with regular expressions:
:func:`parse_ddl` keeps the statements about the table and its sequences and lists everything
else as ignored, saying why.

One concept needs more than 400 lines here: ``_Reader`` is one visitor with one method per kind
of statement a table's DDL holds (CREATE TABLE and its columns and constraints, ALTER TABLE,
sequences, indexes, grants, comments, triggers, policies, rules, statistics). Splitting it would
put the rule for one statement in two files.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ConstrType, GrantTargetType, ObjectType
from pglast.parser import ParseError

from ..errors import SwapError, first_line
from ..stream.model import TableName
from .ddl import (
    ColumnDefinition,
    Constraint,
    Definition,
    Ignored,
    Index,
    SequenceDefinition,
    default_name,
    literal,
    quote,
    short,
    sql_text,
)

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
        return quote(self.table.schema, self.table.name)

    def sequence(self, name: TableName) -> _Sequence:
        if name not in self.sequences:
            self.sequences[name] = _Sequence(name)
        return self.sequences[name]

    def ignore(self, node: Any, reason: str, *, about_table: bool = False) -> None:
        try:
            text = sql_text(node)
        except Exception:
            text = type(node).__name__
        self.ignored.append(Ignored(short(text), reason, about_table))

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
                f"INHERITS ({', '.join(sql_text(r) for r in stmt.inhRelations)}) is not applied: "
                "ALTER TABLE ... INHERIT by hand if the table needs it"
            )
        if stmt.relation.relpersistence == "u":
            self.verbatim.append(f"ALTER TABLE {self.ident()} SET UNLOGGED")
        if stmt.options:
            options = ", ".join(sql_text(o) for o in stmt.options)
            self.verbatim.append(f"ALTER TABLE {self.ident()} SET ({options})")
        for element in stmt.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                self.column(element)
            elif isinstance(element, ast.Constraint):
                self.constraint(element, None)
            else:
                raise SwapError(
                    f"the DDL's CREATE TABLE {self.table} uses {short(sql_text(element), 40)}, "
                    "which walrecover swap cannot apply: write the columns out"
                )

    def column(self, col: Any) -> None:
        names = _strings(col.typeName.names)
        type_sql = sql_text(col.typeName)
        serial = len(names) == 1 and names[0] in _SERIALS and not col.typeName.arrayBounds
        if serial:
            type_sql = _SERIALS[names[0]]
        spec = _Column(col.colname, type_sql, not_null=bool(col.is_not_null) or serial)
        if col.collClause is not None:
            spec.collation = ".".join(quote(n) for n in _strings(col.collClause.collname))
        if serial:
            seq = TableName(self.table.schema, default_name(self.table.name, col.colname, "seq"))
            spec.serial = True
            spec.default = f"nextval({literal(str(seq))}::regclass)"
            sequence = self.sequence(seq)
            sequence.create = f"CREATE SEQUENCE {quote(seq.schema, seq.name)} AS {type_sql}"
            sequence.owned_by = col.colname
            sequence.statements.append(
                f"ALTER SEQUENCE {quote(seq.schema, seq.name)} OWNED BY "
                f"{quote(self.table.schema, self.table.name, col.colname)}"
            )
        if col.raw_default is not None:
            spec.default = sql_text(col.raw_default)
        self.columns[col.colname] = spec
        for con in col.constraints or ():
            self.constraint(con, col.colname)

    def constraint(self, con: Any, column: str | None) -> None:
        """A constraint of the table, or of ``column`` when written in its definition."""
        kind = con.contype
        if kind == ConstrType.CONSTR_NULL or (kind == ConstrType.CONSTR_NOTNULL and column is None):
            return
        if column is not None and self.column_constraint(con, column):
            return
        self.table_constraint(con, column)

    def column_constraint(self, con: Any, column: str) -> bool:
        """A constraint only a column has (NOT NULL, DEFAULT, identity, generated): True if
        ``con`` was one."""
        kind = con.contype
        spec = self.columns[column]
        if kind == ConstrType.CONSTR_NOTNULL:
            spec.not_null = True
        elif kind == ConstrType.CONSTR_DEFAULT:
            spec.default = sql_text(con.raw_expr)
        elif kind == ConstrType.CONSTR_IDENTITY:
            spec.not_null = True
            spec.identity = (
                f"ALTER TABLE {self.ident()} ALTER COLUMN {quote(column)} ADD {sql_text(con)}"
            )
            self.identity_options(column, con.options)
        elif kind == ConstrType.CONSTR_GENERATED:
            spec.generated = sql_text(con.raw_expr)
        else:
            return False
        return True

    def table_constraint(self, con: Any, column: str | None) -> None:
        """A primary key, unique, check, exclusion or foreign key constraint."""
        kind = con.contype
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
        clause = sql_text(con)
        spec = Constraint(
            name=con.conname,
            kind=codes[kind],
            clause=clause,
            columns=_strings(con.fk_attrs if kind == ConstrType.CONSTR_FOREIGN else con.keys),
            check=sql_text(con.raw_expr) if kind == ConstrType.CONSTR_CHECK else None,
            references=sql_text(con.pktable) if kind == ConstrType.CONSTR_FOREIGN else None,
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
            self.known_column(cmd.name, stmt).default = (
                None if cmd.def_ is None else sql_text(cmd.def_)
            )
        elif sub == AlterTableType.AT_SetNotNull:
            self.known_column(cmd.name, stmt).not_null = True
        elif sub == AlterTableType.AT_DropNotNull:
            self.known_column(cmd.name, stmt).not_null = False
        elif sub == AlterTableType.AT_AddIdentity:
            column = self.known_column(cmd.name, stmt)
            column.not_null = True
            column.identity = sql_text(stmt).replace(" ONLY ", " ", 1)
            self.identity_options(cmd.name, cmd.def_.options)
        elif sub == AlterTableType.AT_ChangeOwner:
            self.owner.append(sql_text(stmt))
        elif sub == AlterTableType.AT_AddColumn:
            self.column(cmd.def_)
        elif sub == AlterTableType.AT_DropColumn:
            self.columns.pop(cmd.name, None)
        elif sub == AlterTableType.AT_AlterColumnType:
            column = self.known_column(cmd.name, stmt)
            column.type_sql = sql_text(cmd.def_.typeName)
            if cmd.def_.collClause is not None:
                column.collation = ".".join(
                    quote(n) for n in _strings(cmd.def_.collClause.collname)
                )
        elif sub in _VERBATIM_ALTERS:
            self.verbatim.append(sql_text(stmt))
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
                f"({short(sql_text(stmt), 60)}): put the CREATE TABLE first"
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
            quote(e.name) if e.name is not None else f"({sql_text(e.expr)})"
            for e in stmt.indexParams or ()
        )
        self.indexes.append(
            Index(
                name=stmt.idxname,
                statement=sql_text(stmt),
                unique=bool(stmt.unique),
                elements=elements,
                where=None if stmt.whereClause is None else sql_text(stmt.whereClause),
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
                self.grants.append(sql_text(one))
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
            self.comments.append(sql_text(stmt))
        else:
            self.ignore(stmt, "not about the table")

    def is_name(self, parts: tuple[str, ...]) -> bool:
        if len(parts) == 1:
            return parts[0] == self.table.name
        return len(parts) == 2 and TableName(*parts) == self.table

    def _on_table(self, stmt: Any, rv: Any, what: str) -> None:
        if self.is_table(rv):
            self.verbatim.append(sql_text(stmt))
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
        """Everything read, as the :class:`Definition` the swap applies."""
        if not self.created:
            others = ", ".join(self.other_tables) or "none"
            raise SwapError(
                f"the DDL has no CREATE TABLE for {self.table} (it creates: {others}): give "
                f"the original table's DDL (pg_dump --schema-only -t {self.table})"
            )
        ours = self.our_sequences()
        for name, kind, stmt in self.pending:
            if name not in ours:
                if kind == "alter" and stmt.objtype == ObjectType.OBJECT_TABLE:
                    self.ignore(stmt, "another table")
                else:
                    self.ignore(stmt, "a sequence the table does not use")
                continue
            self.sequence_statement(self.sequence(name), kind, stmt)
        self.index_comments_of_table()
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
            sequences=tuple(self.sequence_definition(n, c) for n, c in ours.items()),
            verbatim=tuple(self.verbatim),
            owner=tuple(self.owner),
            grants=tuple(self.grants),
            comments=tuple(self.comments),
            ignored=tuple(self.ignored),
            notes=tuple(self.notes),
        )

    def our_sequences(self) -> dict[TableName, str | None]:
        """The table's sequences, each with the column it numbers: owned by the table,
        numbering an identity, or used by a default."""
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
        return ours

    def sequence_statement(self, seq: _Sequence, kind: str, stmt: Any) -> None:
        """A statement about one of the table's sequences, kept with it."""
        if kind == "create":
            seq.create = sql_text(stmt)
            for option in stmt.options or ():
                if option.defname == "increment":
                    seq.increment = _int(option.arg) or 1
                elif option.defname == "start":
                    seq.start = _int(option.arg)
        elif kind == "alter-seq":
            seq.statements.append(sql_text(stmt))
        elif kind == "alter":
            owner_only = all(c.subtype == AlterTableType.AT_ChangeOwner for c in stmt.cmds or ())
            text = sql_text(stmt).replace("ALTER TABLE", "ALTER SEQUENCE", 1)
            (seq.owner if owner_only else seq.statements).append(text)
        elif kind == "grant":
            seq.grants.append(sql_text(stmt))
        elif kind == "comment":
            seq.comments.append(sql_text(stmt))

    def index_comments_of_table(self) -> None:
        """Comments on the table's indexes and constraints are kept; others are ignored."""
        index_names = {i.name for i in self.indexes} | {
            c.name for c in [*self.constraints, self.primary_key] if c is not None and c.name
        }
        for index_name, stmt in self.index_comments:
            if index_name in index_names:
                self.comments.append(sql_text(stmt))
            else:
                self.ignore(stmt, "not about the table")

    def sequence_definition(self, name: TableName, column: str | None) -> SequenceDefinition:
        """One of the table's sequences as the swap applies it."""
        seq = self.sequence(name)
        return SequenceDefinition(
            name=name,
            create=seq.create,
            increment=seq.increment,
            start=seq.start,
            column=column,
            statements=tuple(seq.statements),
            owner=tuple(seq.owner),
            grants=tuple(seq.grants),
            comments=tuple(seq.comments),
        )


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
