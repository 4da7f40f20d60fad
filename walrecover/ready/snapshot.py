"""Make one recovery point: a slot with an exported snapshot, and each table's rows read in it.

The slot is created on a replication connection (``CREATE_REPLICATION_SLOT ... LOGICAL plugin``
exporting its snapshot); a second, normal connection imports that snapshot in a REPEATABLE READ
transaction and copies each table out. The replication connection stays open and idle until the
copies are done: the snapshot lives only as long as that connection runs no other command.
Values are copied as the type's text representation (``COPY ... TO STDOUT``, what the output
function prints, what the plugins print), so numeric, timestamps and bytea stay exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..audit import safefiles
from ..db import Connection, connect, one
from ..errors import ConnectionFailed, ProtectError, first_line
from ..stream.lsn import Lsn
from ..stream.model import TableName
from .points import (
    BASELINE_FILE,
    PARQUET_KEY,
    VERSION,
    BaselineColumn,
    RecoveryPoint,
    TableBaseline,
)
from .slots import server_version

if TYPE_CHECKING:
    import pyarrow as pa

#: Rows per Parquet row group (and per batch kept in memory).
BATCH_ROWS = 50_000
#: The settings that decide how values are printed as text; recorded with every baseline.
TEXT_SETTINGS = ("DateStyle", "IntervalStyle", "TimeZone", "bytea_output", "extra_float_digits")


@dataclass(frozen=True, slots=True)
class TableFacts:
    """What a baseline records about its table besides the rows."""

    table: TableName
    relation_id: int
    partitioned: bool
    columns: tuple[BaselineColumn, ...]
    not_null: frozenset[str]
    key: tuple[str, ...]
    publications: tuple[str, ...]

    def ddl(self) -> str:
        """A ``CREATE TABLE`` with the columns, their NOT NULLs and the primary key."""
        lines = [
            f"    {_quote(c.name)} {c.type}{' NOT NULL' if c.name in self.not_null else ''}"
            for c in self.columns
        ]
        if self.key:
            lines.append(f"    PRIMARY KEY ({', '.join(_quote(k) for k in self.key)})")
        return f"CREATE TABLE {self.table} (\n" + ",\n".join(lines) + "\n);"


def _quote(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def table_facts(conn: Connection, table: TableName) -> TableFacts:
    """Columns, key and publications of ``table``; :class:`ProtectError` if it is not a table."""
    row = conn.execute(
        "SELECT c.oid::bigint, c.relkind::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (table.schema, table.name),
    ).fetchone()
    if row is None:
        raise ProtectError(
            f"table {table} does not exist in database {conn.info.dbname!r}: check --table "
            "(schema.table, quoted as in SQL)",
            table=str(table),
        )
    oid, relkind = int(row[0]), row[1]
    columns = conn.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,),
    ).fetchall()
    key = conn.execute(
        "SELECT a.attname::text FROM pg_index i"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.pos",
        (oid,),
    ).fetchall()
    publications = conn.execute(
        "SELECT pubname::text FROM pg_publication_tables"
        " WHERE schemaname = %s AND tablename = %s ORDER BY 1",
        (table.schema, table.name),
    ).fetchall()
    return TableFacts(
        table=table,
        relation_id=oid,
        partitioned=relkind == "p",
        columns=tuple(BaselineColumn(name, type_) for name, type_, _ in columns),
        not_null=frozenset(name for name, _, notnull in columns if notnull),
        key=tuple(k for (k,) in key),
        publications=tuple(p for (p,) in publications),
    )


def create_slot(repl: Connection, name: str, plugin: str) -> tuple[Lsn, str]:
    """Create the logical slot ``name`` exporting its snapshot; (consistent LSN, snapshot)."""
    if server_version(repl) >= 150000:
        command = f"CREATE_REPLICATION_SLOT {name} LOGICAL {plugin} (SNAPSHOT 'export')"
    else:
        command = f"CREATE_REPLICATION_SLOT {name} LOGICAL {plugin} EXPORT_SNAPSHOT"
    try:
        row = repl.execute(command).fetchone()
    except psycopg.Error as exc:
        raise ProtectError(
            f"cannot create the protect slot {name} with plugin {plugin}: {first_line(exc)}; "
            "the role needs REPLICATION (or superuser), wal_level=logical, a free "
            "max_replication_slots entry and the plugin installed",
            slot=name,
        ) from None
    assert row is not None
    return Lsn.parse(row[1]), str(row[2])


def replication_connection(dsn: str | None) -> Connection:
    """A ``replication=database`` session (walsender commands and SQL) on the source."""
    try:
        return connect(
            make_conninfo(dsn or "", replication="database"), autocommit=True, role="source"
        )
    except ConnectionFailed as exc:
        exc.extend(
            "; walrecover protect creates its slots on a replication connection: the role "
            "needs the REPLICATION attribute (ALTER ROLE ... REPLICATION) or superuser"
        )
        raise


def import_snapshot(conn: Connection, snapshot: str) -> tuple[datetime, dict[str, str]]:
    """Begin a read-only REPEATABLE READ transaction in ``snapshot`` on ``conn`` (autocommit);
    return the server's clock and the text output settings."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    (moment,) = one(conn, "SELECT clock_timestamp()")
    settings = {
        name: str(one(conn, "SELECT current_setting(%s)", (name,))[0]) for name in TEXT_SETTINGS
    }
    return moment, settings


def write_baseline(
    conn: Connection,
    facts: TableFacts,
    path: Path,
    point: dict[str, Any],
) -> TableBaseline:
    """Copy ``facts.table`` (in the imported snapshot) to a new Parquet file at ``path``."""
    import pyarrow as pa  # noqa: PLC0415 - loaded by the commands that write Parquet only
    import pyarrow.parquet as pq  # noqa: PLC0415

    names = [c.name for c in facts.columns]
    metadata = {
        "format_version": VERSION,
        **point,
        "schema": facts.table.schema,
        "table": facts.table.name,
        "relation_id": facts.relation_id,
        "columns": [{"name": c.name, "type": c.type} for c in facts.columns],
        "key": list(facts.key),
        "ddl": facts.ddl(),
        "publications": list(facts.publications),
    }
    schema = pa.schema([pa.field(n, pa.string()) for n in names]).with_metadata(
        {PARQUET_KEY: json.dumps(metadata).encode()}
    )
    only = sql.SQL("") if facts.partitioned else sql.SQL("ONLY ")
    query = sql.SQL("COPY (SELECT {} FROM {}{}) TO STDOUT").format(
        sql.SQL(", ").join(sql.Identifier(n) for n in names) if names else sql.SQL("NULL"),
        only,
        sql.Identifier(facts.table.schema, facts.table.name),
    )
    rows = 0
    with safefiles.create(path) as handle, pq.ParquetWriter(handle, schema) as writer:
        batch: list[tuple[Any, ...]] = []
        with conn.cursor().copy(query) as copy:
            for record in copy.rows():
                batch.append(record)
                if len(batch) >= BATCH_ROWS:
                    writer.write_table(_table(batch, names, schema))
                    rows += len(batch)
                    batch = []
        if batch or rows == 0:
            writer.write_table(_table(batch, names, schema))
            rows += len(batch)
    safefiles.fsync(path)
    return TableBaseline(
        table=facts.table,
        path=path,
        rows=rows,
        sha256=_sha256(path),
        relation_id=facts.relation_id,
        columns=facts.columns,
        key=facts.key,
        ddl=facts.ddl(),
        publications=facts.publications,
    )


def _table(batch: Sequence[tuple[Any, ...]], names: list[str], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa  # noqa: PLC0415

    columns = [pa.array([r[i] for r in batch], type=pa.string()) for i in range(len(names))]
    return pa.Table.from_arrays(columns, schema=schema)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_point(
    dsn: str | None,
    name: str,
    plugin: str,
    tables: Sequence[TableName],
    root: Path,
) -> RecoveryPoint:
    """Create slot ``name`` and write each table's baseline under ``root/name/``.

    On any failure the slot (created here) and the files written so far are removed before the
    error goes on, so a failed run leaves nothing behind.
    """
    folder = root / name
    repl = replication_connection(dsn)
    created = False
    try:
        with connect(dsn, autocommit=True, role="source") as conn:
            for table in tables:
                table_facts(conn, table)  # a wrong --table fails before a slot exists
            lsn, snapshot = create_slot(repl, name, plugin)
            created = True
            moment, settings = import_snapshot(conn, snapshot)
            # Read in the snapshot too: the columns as they were at the consistent point.
            facts = [table_facts(conn, t) for t in tables]
            database = conn.info.dbname
            point = {
                "slot": name,
                "plugin": plugin,
                "database": database,
                "consistent_lsn": str(lsn),
                "snapshot_time": moment.isoformat(),
                "settings": settings,
            }
            folder.mkdir()
            baselines = tuple(
                write_baseline(conn, f, folder / f"table-{i}.parquet", point)
                for i, f in enumerate(facts, 1)
            )
            conn.execute("COMMIT")
    except BaseException:
        repl.close()
        if created:
            drop_own_slot(dsn, name)
        remove_point_files(folder)
        raise
    repl.close()
    return RecoveryPoint(
        slot=name,
        plugin=plugin,
        database=database,
        consistent_lsn=lsn,
        snapshot_time=moment,
        tables=baselines,
        settings=settings,
    )


def drop_own_slot(dsn: str | None, name: str) -> None:
    """Drop a slot this run created (it may already be gone)."""
    with connect(dsn, autocommit=True, role="source") as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s AND database = current_database() AND NOT active",
            (name,),
        )


def remove_point_files(folder: Path) -> list[str]:
    """Remove a point's baseline files and then its folder; return what was left (not ours)."""
    left = safefiles.remove_own_files(folder, [BASELINE_FILE])
    safefiles.remove_dir_if_empty(folder)
    return left
