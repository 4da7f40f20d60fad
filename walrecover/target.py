"""The rebuilt table and its bookkeeping in the target database.

:class:`Target` is everything replay needs to know or change about the table it builds, apart
from applying row changes: the one-writer lock, the progress row that makes a killed run
resumable (``walrecover.progress``, committed in the same transaction as the data it describes),
creating the table from the stream's relation or a ``--ddl`` file, its key and columns, and the
ALTER TABLEs that follow the stream's own.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .errors import PrivilegeError, ReplayError, TargetBusy
from .lsn import Lsn
from .model import Column, Relation, TableName

PROGRESS_SCHEMA = "walrecover"
PROGRESS_TABLE = "progress"

#: The advisory lock class of walrecover's targets ("WALR"); the key is a hash of the name.
LOCK_CLASS = 0x57414C52

#: Type names printed without their modifier (test_decoding) that would mean the wrong type.
_WITHOUT_MODIFIER = {"character": "bpchar", "bit": "bit varying"}


def lock_key(into: TableName) -> int:
    """The advisory lock key of a target table (a signed 32-bit hash of its name)."""
    return zlib.crc32(str(into).encode()) - (1 << 31)


def lock_target(conn: Any, into: TableName) -> None:
    """Take the session's advisory lock on ``into`` (one writer per target), or raise
    :class:`TargetBusy` naming the session that holds it. Taking it twice is harmless."""
    (locked,) = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, lock_key(into))
    ).fetchone()
    conn.commit()
    if locked:
        return
    holder = conn.execute(
        "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local')"
        " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted",
        (LOCK_CLASS & 0xFFFFFFFF, lock_key(into) & 0xFFFFFFFF),
    ).fetchone()
    conn.commit()
    who = f"backend pid {holder[0]} ({holder[1]}, {holder[2]})" if holder else "another run"
    raise TargetBusy(
        f"another recovery into {into} is running ({who}): wait for it or stop it",
        table=str(into),
    )


def checked_type(type_name: str) -> str:
    """A type name from the stream, refused if it could smuggle SQL into the DDL.

    ``character`` and ``bit`` without a length mean ``character(1)`` and ``bit(1)`` in DDL,
    but a plugin that omits modifiers prints them for every length: use the unbounded forms.
    """
    base = type_name.removesuffix("[]")
    if base in _WITHOUT_MODIFIER:
        type_name = _WITHOUT_MODIFIER[base] + type_name[len(base) :]
    outside_quotes = "".join(type_name.split('"')[0::2])
    if not type_name or ";" in outside_quotes or "--" in outside_quotes or "/*" in outside_quotes:
        raise ReplayError(
            f"the stream names a column type {type_name!r} that is not a type: give --ddl FILE"
        )
    return type_name


def _quoted(name: str) -> str:
    """A name as SQL needs it: bare when it is a plain lower-case identifier, else quoted."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Progress:
    """A recovery's progress row: how far it got, from which source, and whether it finished."""

    #: The source and stop point (a run resumes only the same recovery).
    source: str
    last_commit_lsn: Lsn | None
    last_xid: int | None
    transactions: int
    changes: int
    no_row: int
    first_lsn: Lsn | None
    #: The audit path it writes, or None.
    audit: str | None
    #: Source transactions seen (the resume point of streams without LSNs).
    position: int
    complete: bool


_PROGRESS_COLUMNS = (
    "source",
    "last_commit_lsn",
    "last_xid",
    "transactions",
    "changes",
    "no_row",
    "first_lsn",
    "audit",
    "position",
    "complete",
)


class Target:
    """The table being rebuilt, on one connection of the target database."""

    def __init__(self, conn: Any, into: TableName) -> None:
        self.conn = conn
        self.into = into
        self.ident = sql.Identifier(into.schema, into.name)
        self._progress = sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)

    @property
    def regclass(self) -> str:
        """The quoted name, as ``::regclass`` takes it."""
        return self.ident.as_string(self.conn)

    # -- lock and bookkeeping ----------------------------------------------------------------

    def lock(self) -> None:
        lock_target(self.conn, self.into)

    def ensure_bookkeeping(self) -> None:
        """Create ``walrecover.progress`` if needed; name the missing privilege if refused."""
        conn = self.conn
        try:
            conn.execute(
                sql.SQL(
                    "CREATE SCHEMA IF NOT EXISTS {schema};"
                    " CREATE TABLE IF NOT EXISTS {table} ("
                    " target text PRIMARY KEY, source text NOT NULL, last_commit_lsn pg_lsn,"
                    " last_xid bigint, transactions bigint NOT NULL, changes bigint NOT NULL,"
                    " no_row bigint NOT NULL DEFAULT 0, first_lsn pg_lsn,"
                    " audit text, position bigint, complete boolean NOT NULL,"
                    " updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(schema=sql.Identifier(PROGRESS_SCHEMA), table=self._progress)
            )
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as exc:
            conn.rollback()
            # Even with IF NOT EXISTS, PostgreSQL checks the privilege to create the schema and
            # the table before it sees that they exist: a role granted what an existing progress
            # table needs (and no more) goes on.
            if self._progress_exists() and self._missing_privilege(force=False) is None:
                conn.commit()
                return
            raise self.privilege_error(exc) from None

    def _progress_exists(self) -> bool:
        (exists,) = self.conn.execute(
            "SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s)",
            (PROGRESS_SCHEMA, PROGRESS_TABLE),
        ).fetchone()
        return bool(exists)

    def check_privileges(self, *, force: bool) -> None:
        """Raise :class:`PrivilegeError` naming the object and the privilege if the role lacks
        one that building ``into`` needs: before any work, since a rerun cannot fix it."""
        missing = self._missing_privilege(force=force)
        self.conn.commit()
        if missing is not None:
            raise missing

    def privilege_error(self, exc: psycopg.Error) -> PrivilegeError:
        """The error for a refused statement: the missing privilege and its object if walrecover
        can tell which, else the server's words; never a rerun (it would be refused again)."""
        try:
            missing = self._missing_privilege(force=False)
            self.conn.rollback()
        except psycopg.Error:
            missing = None
        if missing is not None:
            return missing
        return PrivilegeError(
            f"building {self.into} was refused: {exc.diag.message_primary or exc}; grant the "
            "role that privilege (or build with another role)",
            table=str(self.into),
        )

    def _missing_privilege(self, *, force: bool) -> PrivilegeError | None:
        """The first privilege the role lacks: on the database (to create the schema
        ``walrecover``), on that schema, on ``walrecover.progress``, on the target schema, or
        (with ``force``) the ownership that dropping an existing target needs."""
        conn = self.conn
        role, database = conn.execute("SELECT current_user, current_database()").fetchone()

        def owned(owner: str) -> str:
            return f"the owner of database {database}" if owner == "pg_database_owner" else owner

        def error(privileges: str, what: str, owner: str | None, grant: str) -> PrivilegeError:
            by = f" (as {owned(owner)} or a superuser)" if owner and owner != role else ""
            return PrivilegeError(
                f"role {role!r} lacks {privileges} on {what}: {grant} TO {_quoted(role)}{by}, "
                "or build with another role",
                table=str(self.into),
                role=role,
                privilege=privileges,
            )

        quoted_db = _quoted(database)
        schema = conn.execute(
            "SELECT pg_get_userbyid(nspowner), has_schema_privilege(oid, 'USAGE'),"
            " has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = %s",
            (PROGRESS_SCHEMA,),
        ).fetchone()
        if schema is None:
            (may,) = conn.execute(
                "SELECT has_database_privilege(current_database(), 'CREATE')"
            ).fetchone()
            if not may:
                return error(
                    "CREATE",
                    f"database {database} (walrecover keeps its progress in a schema "
                    f"{PROGRESS_SCHEMA} it creates there)",
                    None,
                    f"GRANT CREATE ON DATABASE {quoted_db}",
                )
        else:
            owner, usage, create = schema
            table = conn.execute(
                "SELECT pg_get_userbyid(c.relowner),"
                " has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),"
                " has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE')"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s",
                (PROGRESS_SCHEMA, PROGRESS_TABLE),
            ).fetchone()
            lacking = [p for p, ok in (("USAGE", usage), ("CREATE", create)) if not ok]
            if table is not None and "CREATE" in lacking:
                lacking.remove("CREATE")  # the progress table exists: nothing to create there
            if lacking:
                privileges = " and ".join(lacking)
                return error(
                    privileges,
                    f"schema {PROGRESS_SCHEMA} (owned by {owned(owner)}), where walrecover keeps"
                    " its progress",
                    owner,
                    f"GRANT {', '.join(lacking)} ON SCHEMA {PROGRESS_SCHEMA}",
                )
            if table is not None:
                table_owner, *flags = table
                names = ("SELECT", "INSERT", "UPDATE", "DELETE")
                lacking = [p for p, ok in zip(names, flags, strict=True) if not ok]
                if lacking:
                    return error(
                        ", ".join(lacking),
                        f"table {PROGRESS_SCHEMA}.{PROGRESS_TABLE} (owned by"
                        f" {owned(table_owner)}), where walrecover keeps its progress",
                        table_owner,
                        f"GRANT {', '.join(names)} ON {PROGRESS_SCHEMA}.{PROGRESS_TABLE}",
                    )
        target = conn.execute(
            "SELECT pg_get_userbyid(nspowner), has_schema_privilege(oid, 'USAGE'),"
            " has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = %s",
            (self.into.schema,),
        ).fetchone()
        quoted_schema = _quoted(self.into.schema)
        if target is None:
            return PrivilegeError(
                f"the schema {quoted_schema} of --into {self.into} does not exist: create it "
                f"(CREATE SCHEMA {quoted_schema}) or choose another --into",
                table=str(self.into),
            )
        owner, usage, create = target
        lacking = [p for p, ok in (("USAGE", usage), ("CREATE", create)) if not ok]
        if lacking:
            return error(
                " and ".join(lacking),
                f"schema {self.into.schema} (owned by {owned(owner)}), where {self.into} is built",
                owner,
                f"GRANT {', '.join(lacking)} ON SCHEMA {quoted_schema}",
            )
        if force:
            row = conn.execute(
                "SELECT pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE')"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s",
                (self.into.schema, self.into.name),
            ).fetchone()
            if row is not None and not row[1]:
                return PrivilegeError(
                    f"role {role!r} may not drop {self.into} for --force: it is owned by "
                    f"{row[0]}; drop it as {row[0]}, or choose another --into",
                    table=str(self.into),
                    role=role,
                )
        return None

    def read_progress(self) -> Progress | None:
        """The progress row of this target, or None."""
        row = self.conn.execute(
            sql.SQL(
                "SELECT source, last_commit_lsn::text, last_xid, transactions, changes, no_row,"
                " first_lsn::text, audit, position, complete FROM {} WHERE target = %s"
            ).format(self._progress),
            (str(self.into),),
        ).fetchone()
        self.conn.commit()
        if row is None:
            return None
        values = dict(zip(_PROGRESS_COLUMNS, row, strict=True))
        return Progress(
            source=str(values["source"]),
            last_commit_lsn=Lsn.parse(values["last_commit_lsn"])
            if values["last_commit_lsn"]
            else None,
            last_xid=values["last_xid"],
            transactions=int(values["transactions"]),
            changes=int(values["changes"]),
            no_row=int(values["no_row"]),
            first_lsn=Lsn.parse(values["first_lsn"]) if values["first_lsn"] else None,
            audit=values["audit"],
            position=int(values["position"] or 0),
            complete=bool(values["complete"]),
        )

    def write_progress(self, progress: Progress) -> None:
        """Record ``progress`` in the open transaction (it commits with the data)."""
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} AS p (target, source, last_commit_lsn, last_xid, transactions,"
                " changes, no_row, first_lsn, audit, position, complete)"
                " VALUES (%s, %s, %s::pg_lsn, %s, %s, %s, %s, %s::pg_lsn, %s, %s, %s)"
                " ON CONFLICT (target) DO UPDATE SET source = excluded.source,"
                " last_commit_lsn = excluded.last_commit_lsn, last_xid = excluded.last_xid,"
                " transactions = excluded.transactions, changes = excluded.changes,"
                " no_row = excluded.no_row, first_lsn = excluded.first_lsn,"
                " audit = excluded.audit, position = excluded.position,"
                " complete = excluded.complete, updated_at = now()"
            ).format(self._progress),
            (
                str(self.into),
                progress.source,
                None if progress.last_commit_lsn is None else str(progress.last_commit_lsn),
                progress.last_xid,
                progress.transactions,
                progress.changes,
                progress.no_row,
                None if progress.first_lsn is None else str(progress.first_lsn),
                progress.audit,
                progress.position,
                progress.complete,
            ),
        )

    def forget_progress(self) -> None:
        self.conn.execute(
            sql.SQL("DELETE FROM {} WHERE target = %s").format(self._progress), (str(self.into),)
        )

    # -- the table ---------------------------------------------------------------------------

    def exists(self) -> bool:
        (oid,) = self.conn.execute("SELECT to_regclass(%s)::oid", (self.regclass,)).fetchone()
        return oid is not None

    def drop(self) -> None:
        self.conn.execute(sql.SQL("DROP TABLE {}").format(self.ident))

    def create(self, relation: Relation, ddl: str | None, table: TableName) -> None:
        """Create the table from the stream's ``relation`` of ``table``, or run ``ddl``."""
        conn = self.conn
        if ddl is not None:
            try:
                conn.execute(ddl)
            except psycopg.Error as exc:
                raise ReplayError(
                    f"the --ddl file failed: {exc.diag.message_primary or exc}; fix the file",
                    table=str(self.into),
                ) from None
            if not self.exists():
                raise ReplayError(
                    f"the --ddl file did not create {self.into}: it must create the --into table",
                    table=str(self.into),
                )
            return
        if not relation.complete:
            raise ReplayError(
                f"the stream shows only some columns of {table} before its first insert: "
                "give the table's definition with --ddl FILE",
                table=str(table),
            )
        columns = [
            sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(checked_type(c.type_name)))
            for c in relation.columns
        ]
        key = relation.key_columns
        # An "identity" of every column is REPLICA IDENTITY FULL, not a primary key.
        has_key = bool(key) and len(key) < len(relation.columns)
        if has_key:
            columns.append(
                sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key)))
            )
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(self.ident, sql.SQL(", ").join(columns))
        )
        if not has_key:
            # Without it, a publication FOR ALL TABLES in the target refuses updates/deletes.
            conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(self.ident))

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

    def index(self, key: tuple[str, ...]) -> None:
        """Index ``key`` so updates and deletes find their rows (a key learned late)."""
        self.conn.execute(
            sql.SQL("CREATE INDEX ON {} ({})").format(
                self.ident, sql.SQL(", ").join(map(sql.Identifier, key))
            )
        )

    def add_column(self, column: Column) -> None:
        self.conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                self.ident, sql.Identifier(column.name), sql.SQL(checked_type(column.type_name))
            )
        )

    def drop_column(self, name: str) -> None:
        self.conn.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(self.ident, sql.Identifier(name))
        )

    def retype_column(self, name: str, type_name: str) -> None:
        self.conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                self.ident, sql.Identifier(name), sql.SQL(checked_type(type_name))
            )
        )

    def count_rows(self) -> int:
        (count,) = self.conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(self.ident)
        ).fetchone()
        self.conn.commit()
        return int(count)
