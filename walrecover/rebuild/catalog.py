"""What the catalog says about the rebuilt table: its key, columns, types, generated columns,
the indexes that can narrow a search, a column's DEFAULT when it is a constant; and indexes
added for a key learnt late (a part of :class:`~.target.Target`).
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from ..db import Connection, connection_lost, one
from ..stream.model import TableName

#: Nodes of a stored expression that evaluate to the same value every time (given immutable
#: functions), and the function references in one (``pg_node_tree`` text).
_CONSTANT_NODES = frozenset({"CONST", "FUNCEXPR", "OPEXPR", "RELABELTYPE"})
_NODE = re.compile(r"\{([A-Z_]+)")
_FUNCTION = re.compile(r":(?:funcid|opfuncid) (\d+)")


class TableRef:
    """A table of the target database, on one connection."""

    def __init__(self, conn: Connection, into: TableName) -> None:
        self.conn = conn
        self.into = into
        self.ident = sql.Identifier(into.schema, into.name)

    @property
    def regclass(self) -> str:
        """The quoted name, as ``::regclass`` takes it."""
        return self.ident.as_string(self.conn)


class TableCatalog(TableRef):
    """Catalog reads of the table."""

    def primary_key(self) -> tuple[str, ...]:
        """The primary key columns, in key order (from --ddl, or created from the stream)."""
        rows = self.conn.execute(
            "SELECT a.attname::text FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n",
            (self.regclass,),
        ).fetchall()
        return tuple(r[0] for r in rows)

    def columns(self) -> set[str]:
        rows = self.conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped",
            (self.regclass,),
        ).fetchall()
        return {r[0] for r in rows}

    def generated_columns(self) -> frozenset[str]:
        """Columns the server computes (GENERATED ALWAYS ... STORED): COPY and UPDATE refuse
        values for them."""
        rows = self.conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped AND attgenerated <> ''",
            (self.regclass,),
        ).fetchall()
        return frozenset(r[0] for r in rows)

    def column_types(self) -> dict[str, tuple[str, int, str]]:
        """Each column's type as SQL (``format_type``, modifier included), its ``typlen``
        (positive for fixed-length types, whose values always fit in an index entry) and the
        type without its modifier (``character varying`` for ``character varying(5)``; given
        as -1, not NULL, for ``bpchar`` and ``"bit"``: NULL prints ``character`` and ``bit``,
        which mean one character and one bit)."""
        rows = self.conn.execute(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typlen,"
            " format_type(a.atttypid, -1)"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (self.regclass,),
        ).fetchall()
        return {str(r[0]): (str(r[1]), int(r[2]), str(r[3])) for r in rows}

    def equality_indexed(self) -> frozenset[str]:
        """Columns a btree or hash index with the type's default operator class covers: for
        them ``column = value`` exists and lets an index narrow a search."""
        rows = self.conn.execute(
            "SELECT DISTINCT a.attname::text FROM pg_index i"
            " JOIN pg_class ic ON ic.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = ic.relam"
            " JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) AS k(attnum, opclass)"
            "   ON true"
            " JOIN pg_opclass oc ON oc.oid = k.opclass"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s::regclass AND am.amname IN ('btree', 'hash')"
            " AND oc.opcdefault AND i.indpred IS NULL",
            (self.regclass,),
        ).fetchall()
        return frozenset(str(r[0]) for r in rows)

    def rows_independent(self, key: tuple[str, ...]) -> bool:
        """Whether changes of different rows (by ``key``) may run in any order: nothing on the
        table checks one row against another but a primary key or unique constraint on
        exactly ``key`` (no other unique index, exclusion or foreign key constraint, trigger
        or rule). Row-local checks (CHECK, NOT NULL) do not care about order."""
        row = self.conn.execute(
            "SELECT NOT c.relhasrules"
            " AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid"
            "   AND NOT t.tgisinternal)"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint k"
            "   WHERE (k.conrelid = c.oid OR k.confrelid = c.oid)"
            "   AND k.contype NOT IN ('c', 'n', 'p', 'u'))"
            " AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid"
            "   AND i.indisunique AND (i.indpred IS NOT NULL OR i.indexprs IS NOT NULL"
            "   OR ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) AS n(attnum)"
            "     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = n.attnum"
            '     ORDER BY a.attname::text COLLATE "C") <> %s::text[]))'
            " FROM pg_class c WHERE c.oid = %s::regclass",
            (sorted(key), self.regclass),
        ).fetchone()
        return bool(row and row[0])

    def try_index(self, columns: tuple[str, ...], *, method: str = "btree") -> bool:
        """Index ``columns`` so updates and deletes find their rows fast (a key learned late);
        False, with nothing changed, if PostgreSQL cannot build that index.

        The index only speeds lookups up: a type without an operator class for ``method``, or
        a value too big for a btree entry, is no reason to stop a recovery.
        """
        conn = self.conn
        conn.execute("SAVEPOINT walrecover_index")
        try:
            conn.execute(
                sql.SQL("CREATE INDEX ON {} USING {} ({})").format(
                    self.ident,
                    sql.Identifier(method),
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                )
            )
        except psycopg.Error as exc:
            if connection_lost(exc, conn):
                raise
            conn.execute("ROLLBACK TO SAVEPOINT walrecover_index")
            conn.execute("RELEASE SAVEPOINT walrecover_index")
            return False
        conn.execute("RELEASE SAVEPOINT walrecover_index")
        return True

    def constant_default(self, name: str) -> str | None:
        """The DEFAULT of column ``name`` (``NULL`` when it has none) if it is the same value
        whenever it is evaluated, else None.

        Read from the stored expression tree: constants, and calls of immutable functions and
        operators (casts such as ``numeric(12,2)``), nothing else (``now()``,
        ``CURRENT_TIMESTAMP``, ``nextval`` are not constants). Dependencies cannot tell:
        PostgreSQL records none on built-in functions.
        """
        row = self.conn.execute(
            "SELECT d.adbin::text, pg_get_expr(d.adbin, d.adrelid)"
            " FROM pg_attribute a LEFT JOIN pg_attrdef d"
            "   ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE a.attrelid = %s::regclass AND a.attname = %s",
            (self.regclass, name),
        ).fetchone()
        if row is None or row[0] is None:
            return "NULL"
        tree, shown = str(row[0]), str(row[1])
        if not set(_NODE.findall(tree)) <= _CONSTANT_NODES:
            return None
        functions = sorted({int(oid) for oid in _FUNCTION.findall(tree)})
        if functions:
            (mutable,) = one(
                self.conn,
                "SELECT count(*) FROM pg_proc WHERE oid = ANY(%s) AND provolatile <> 'i'",
                (functions,),
            )
            if mutable:
                return None
        return shown
