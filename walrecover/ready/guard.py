"""``walrecover guard``: find what a migration destroys, and whether a recovery point covers it.

The migration is read with PostgreSQL's own parser (pglast), so comments, strings and dollar
quotes never fool it. Flagged: ``DROP TABLE``, ``TRUNCATE``, ``DELETE`` and ``UPDATE`` without
``WHERE``, ``ALTER TABLE ... DROP COLUMN`` and ``ALTER COLUMN ... TYPE`` (which rewrites the
table unless the new type is binary-compatible). With a database, each affected table gets
doctor's verdict; a destructive statement is accepted only for a table doctor calls
recoverable back to a known time (or one that does not exist yet, so has nothing to lose).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ObjectType
from pglast.parser import ParseError

from ..db import connect
from ..errors import EXIT_DESTRUCTIVE, EXIT_OK, MigrationParseError
from ..stream.model import TableName
from .doctor import TableDiagnosis, doctor


@dataclass(frozen=True, slots=True)
class Finding:
    """A destructive statement: where it is (1-based line), what it does, to which table
    (as written, and resolved through the search_path when guard had a database)."""

    line: int
    kind: str
    written: str
    table: TableName | None
    statement: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "kind": self.kind,
            "table": str(self.table) if self.table else self.written,
            "statement": self.statement,
        }


@dataclass(frozen=True, slots=True)
class GuardResult:
    """The findings, and (with ``-d``) doctor's verdict for each affected table.

    ``blocked`` are the findings no recovery point is proven to cover: without a database,
    every finding.
    """

    path: str
    statements: int
    findings: tuple[Finding, ...]
    verdicts: tuple[TableDiagnosis, ...]
    blocked: tuple[Finding, ...]
    checked: bool

    @property
    def exit_code(self) -> int:
        """0 when nothing destructive is unproven, 7 otherwise (errors.EXIT_DESTRUCTIVE)."""
        return EXIT_DESTRUCTIVE if self.blocked else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "statements": self.statements,
            "findings": [f.to_dict() for f in self.findings],
            "verdicts": [v.to_dict() for v in self.verdicts],
            "blocked": [f.to_dict() for f in self.blocked],
            "checked": self.checked,
            "exit": self.exit_code,
        }

    def report(self) -> str:
        """One line per finding (``FILE:LINE: kind table``) and, with -d, each verdict."""
        lines = [
            f"{self.path}:{f.line}: {f.kind} {f.table or f.written}: {f.statement}"
            for f in self.findings
        ]
        for verdict in self.verdicts:
            lines.append(f"  {verdict.severity.upper():8} {verdict.table}: {verdict.verdict}")
        if not self.findings:
            lines.append(f"{self.path}: {self.statements} statements, nothing destructive.")
        elif not self.checked:
            lines.append(
                f"{len(self.findings)} destructive statement(s); give -d CONNINFO to check that "
                "a recovery point covers each table."
            )
        elif self.blocked:
            tables = sorted({str(f.table or f.written) for f in self.blocked})
            lines.append(f"Not covered by a recovery point: {', '.join(tables)}.")
        else:
            lines.append("Every affected table is covered by a recovery point.")
        return "\n".join(lines)


def scan(text: str, where: str = "the migration") -> tuple[int, tuple[Finding, ...]]:
    """Parse ``text``; return its statement count and its destructive statements.

    Raises :class:`MigrationParseError` (line and column) if PostgreSQL's parser refuses it.
    """
    try:
        statements = pglast.parse_sql(text)
    except ParseError as exc:
        message, position = exc.args[0], int(exc.args[1]) if len(exc.args) > 1 else 0
        line, column = _position(text, position)
        raise MigrationParseError(
            f"{where}, line {line}, column {column}: {message}: fix the migration (guard reads "
            "it with PostgreSQL's parser)",
            line=line,
            column=column,
        ) from None
    findings: list[Finding] = []
    for raw in statements:
        start = raw.stmt_location or 0
        length = raw.stmt_len or len(text) - start
        line = _position(text, start)[0]
        shown = " ".join(text[start : start + length].split())
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        for kind, written in _destructive(raw.stmt):
            findings.append(Finding(line, kind, written, None, shown))
    return len(statements), tuple(findings)


def _destructive(stmt: ast.Node | None) -> list[tuple[str, str]]:
    """(kind, table as written) for each destructive thing ``stmt`` does."""
    if isinstance(stmt, ast.DropStmt) and stmt.removeType == ObjectType.OBJECT_TABLE:
        return [("DROP TABLE", ".".join(_name(p) for p in obj)) for obj in stmt.objects or ()]
    if isinstance(stmt, ast.TruncateStmt):
        return [("TRUNCATE", _relation(r)) for r in stmt.relations or ()]
    if isinstance(stmt, ast.DeleteStmt) and stmt.whereClause is None:
        return [("DELETE without WHERE", _relation(stmt.relation))]
    if isinstance(stmt, ast.UpdateStmt) and stmt.whereClause is None:
        return [("UPDATE without WHERE", _relation(stmt.relation))]
    if isinstance(stmt, ast.AlterTableStmt) and stmt.objtype == ObjectType.OBJECT_TABLE:
        found = []
        for cmd in stmt.cmds or ():
            if cmd.subtype == AlterTableType.AT_DropColumn:
                found.append((f"DROP COLUMN {cmd.name}", _relation(stmt.relation)))
            elif cmd.subtype == AlterTableType.AT_AlterColumnType:
                found.append((f"ALTER COLUMN {cmd.name} TYPE", _relation(stmt.relation)))
        return found
    return []


def _name(node: Any) -> str:
    return _ident(str(node.sval))


def _relation(rel: ast.RangeVar | None) -> str:
    if rel is None:
        return "?"
    parts = [p for p in (rel.catalogname, rel.schemaname, rel.relname) if p]
    return ".".join(_ident(p) for p in parts)


def _ident(part: str) -> str:
    """A name part as SQL writes it (the parser has already folded unquoted names)."""
    return str(TableName("x", part)).partition(".")[2]


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a 0-based character offset."""
    before = text[: max(offset, 0)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def guard(
    path: str | Path,
    text: str,
    dsn: str | None = None,
    protect_dir: str | Path | None = None,
) -> GuardResult:
    """Scan the migration ``text`` (read from ``path``); with ``dsn``, resolve each affected
    table through the search_path and give it doctor's verdict (with the recovery points of
    ``protect_dir``). Only a table doctor calls ``ok`` counts as covered: a slot alone
    (a warning) does not hold the rows written before it."""
    count, findings = scan(text, str(path))
    if dsn is None or not findings:
        return GuardResult(str(path), count, findings, (), findings, dsn is not None)
    resolved = _resolve(dsn, findings)
    existing = sorted({f.table for f in resolved if f.table is not None}, key=str)
    verdicts = doctor(dsn, existing, protect_dir).tables if existing else ()
    covered = {v.table for v in verdicts if v.severity == "ok"}
    blocked = tuple(f for f in resolved if f.table is not None and f.table not in covered)
    return GuardResult(str(path), count, resolved, verdicts, blocked, True)


def _resolve(dsn: str, findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """Each finding with its table resolved (None: no such table, nothing to lose)."""
    out = []
    with connect(dsn, autocommit=True, role="source") as conn:
        for finding in findings:
            row = conn.execute(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = to_regclass(%s)",
                (finding.written,),
            ).fetchone()
            table = TableName(row[0], row[1]) if row else None
            out.append(
                Finding(finding.line, finding.kind, finding.written, table, finding.statement)
            )
    return tuple(out)
