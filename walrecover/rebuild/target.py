"""The rebuilt table and its bookkeeping in the target database.

:class:`Target` is everything replay needs to know or change about the table it builds, apart
from applying row changes: the one-writer lock, the progress row that makes a killed run
resumable (``walrecover.progress``, committed in the same transaction as the data it describes,
:mod:`.progress`), the privileges that needs (:mod:`.privileges`), creating the table from the
stream's relation or a ``--ddl`` file, its key and columns as the catalog says (:mod:`.catalog`),
and the ALTER TABLEs that follow the stream's own. It also keeps the build away from logical
replication (:mod:`.publications`: built unlogged where a publication would publish it).
Claiming a target for a recovery (resume or start afresh) is :func:`.claim.claim`.
"""

from __future__ import annotations

import zlib

import psycopg
from psycopg import sql

from ..db import Connection, one
from ..errors import PrivilegeError, ReplayError, TargetBusy
from ..stream.model import Column, Relation, TableName
from .catalog import TableCatalog
from .privileges import missing_privilege
from .progress import (
    PROGRESS_SCHEMA,
    PROGRESS_TABLE,
    Progress,
    create_progress_table,
    files_text,
    persistence,
    read_progress,
    read_retired,
    write_progress,
)
from .publications import (
    UNLOGGED_MARK,
    Publication,
    UnloggedBuild,
    names,
    publications_of,
    refuse_listed,
)

__all__ = [
    "LOCK_CLASS",
    "PROGRESS_SCHEMA",
    "PROGRESS_TABLE",
    "UNLOGGED_MARK",
    "Progress",
    "Publication",
    "Target",
    "checked_type",
    "lock_key",
    "lock_target",
    "publications_of",
    "read_progress",
    "refuse_listed",
]

#: The advisory lock class of walrecover's targets ("WALR"); the key is a hash of the name.
LOCK_CLASS = 0x57414C52

#: Type names printed without their modifier (test_decoding) that would mean the wrong type.
_WITHOUT_MODIFIER = {"character": "bpchar", "bit": "bit varying"}


def lock_key(into: TableName) -> int:
    """The advisory lock key of a target table (a signed 32-bit hash of its name)."""
    return zlib.crc32(str(into).encode()) - (1 << 31)


def lock_target(conn: Connection, into: TableName) -> None:
    """Take the session's advisory lock on ``into`` (one writer per target), or raise
    :class:`TargetBusy` naming the session that holds it. Taking it twice is harmless."""
    (locked,) = one(conn, "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, lock_key(into)))
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


class Target(UnloggedBuild, TableCatalog):
    """The table being rebuilt, on one connection of the target database."""

    def __init__(self, conn: Connection, into: TableName) -> None:
        super().__init__(conn, into)
        self._progress = sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)
        self.unlogged = False
        self.publications = ()
        #: The relation files (database oid, relfilenode) of earlier rebuilt tables of this
        #: name that walrecover dropped (this run, or earlier ones as the progress row keeps
        #: them): walrecover's own, never a re-creation of the source table.
        self.dropped_files: frozenset[tuple[int, int]] = frozenset()

    # -- lock and bookkeeping ----------------------------------------------------------------

    def lock(self) -> None:
        lock_target(self.conn, self.into)

    def ensure_bookkeeping(self) -> None:
        """Create ``walrecover.progress`` if needed, unlogged where a publication would publish
        it or the rebuilt table (an existing logged one is made unlogged: its rows, and the
        resumes of earlier runs, are kept); name the missing privilege if refused."""
        conn = self.conn
        publications = refuse_listed(conn, self.into)
        self.publications = tuple(publications)
        try:
            create_progress_table(conn, unlogged=bool(publications))
        except psycopg.errors.InsufficientPrivilege as exc:
            conn.rollback()
            if publications:
                (user,) = one(conn, "SELECT current_user")
                raise PrivilegeError(
                    f"role {user!r} cannot keep walrecover's progress unpublished in the target "
                    f"database ({exc.diag.message_primary}), where publication "
                    f"{names(publications)} would publish it: run walrecover as the owner of "
                    f"{PROGRESS_SCHEMA}.{PROGRESS_TABLE} (with CREATE on the database), or build"
                    " in another database with --target",
                    table=str(self.into),
                    role=user,
                ) from None
            # Even with IF NOT EXISTS, PostgreSQL checks the privilege to create the schema and
            # the table before it sees that they exist: a role granted what an existing progress
            # table needs (and no more) goes on.
            if not self._progress_exists() or self.missing_privilege(force=False) is not None:
                raise self.privilege_error(exc) from None
        self.unlogged = persistence(conn, self._progress) == "u"
        conn.commit()

    def missing_privilege(self, *, force: bool) -> PrivilegeError | None:
        """The first privilege the role lacks to build this table (see :mod:`.privileges`)."""
        return missing_privilege(self.conn, self.into, force=force)

    def _progress_exists(self) -> bool:
        (exists,) = one(
            self.conn,
            "SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s)",
            (PROGRESS_SCHEMA, PROGRESS_TABLE),
        )
        return bool(exists)

    def check_privileges(self, *, force: bool) -> None:
        """Raise :class:`PrivilegeError` naming the object and the privilege if the role lacks
        one that building ``into`` needs: before any work, since a rerun cannot fix it."""
        missing = self.missing_privilege(force=force)
        self.conn.commit()
        if missing is not None:
            raise missing

    def privilege_error(self, exc: psycopg.Error) -> PrivilegeError:
        """The error for a refused statement: the missing privilege and its object if walrecover
        can tell which, else the server's words; never a rerun (it would be refused again)."""
        try:
            missing = self.missing_privilege(force=False)
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

    def read_progress(self) -> Progress | None:
        """The progress row of this target, or None."""
        progress = read_progress(self.conn, self.into)
        if progress is not None:
            self.dropped_files |= read_retired(self.conn, self.into)
        self.conn.commit()
        return progress

    def store_result(self, result: str) -> None:
        """Keep a finished recovery's result (JSON) with its progress row, and commit."""
        self.conn.execute(
            sql.SQL("UPDATE {} SET result = %s WHERE target = %s AND complete").format(
                self._progress
            ),
            (result, str(self.into)),
        )
        self.conn.commit()

    def write_progress(self, progress: Progress) -> None:
        """Record ``progress`` in the open transaction (it commits with the data)."""
        write_progress(self.conn, self.into, progress, files_text(self.dropped_files))

    def forget_progress(self) -> None:
        self.conn.execute(
            sql.SQL("DELETE FROM {} WHERE target = %s").format(self._progress), (str(self.into),)
        )

    def exists(self) -> bool:
        (oid,) = one(self.conn, "SELECT to_regclass(%s)::oid", (self.regclass,))
        return oid is not None

    def drop(self) -> None:
        """Drop the table (an earlier run's, with --force or after a crash), noting its files."""
        files = self.conn.execute(
            "WITH t AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = %s::regclass),"
            " own(oid) AS (SELECT oid FROM t UNION SELECT reltoastrelid FROM t"
            " UNION SELECT i.indexrelid FROM pg_index i, t"
            " WHERE i.indrelid IN (t.oid, t.reltoastrelid)"
            " UNION SELECT d.objid FROM pg_depend d, t WHERE d.refobjid = t.oid"
            " AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass)"
            " SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::bigint,"
            " c.relfilenode::bigint, c.oid::bigint FROM pg_class c JOIN own ON c.oid = own.oid",
            (self.regclass,),
        ).fetchall()
        # A relation's first file is numbered like its oid: the file it was created with, if a
        # rewrite (its SET LOGGED) replaced it since.
        self.dropped_files |= {(int(db), int(n)) for db, *ns in files for n in ns if n}
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
            self.make_unlogged()
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
        # REPLICA IDENTITY FULL is not a primary key; a key inferred from old images
        # (test_decoding) is a guess, never a constraint.
        has_key = relation.keyed
        if has_key:
            columns.append(
                sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key)))
            )
        conn.execute(
            sql.SQL("CREATE {}TABLE {} ({})").format(
                sql.SQL("UNLOGGED " if self.unlogged else ""),
                self.ident,
                sql.SQL(", ").join(columns),
            )
        )
        if self.unlogged:
            self._set_comment(UNLOGGED_MARK)
        if not has_key:
            # Without it, a publication FOR ALL TABLES in the target refuses updates/deletes.
            conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(self.ident))

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

    def count_rows(self, *, commit: bool = True) -> int:
        """The table's rows; ``commit=False`` inside a transaction replay still builds."""
        (count,) = one(self.conn, sql.SQL("SELECT count(*) FROM {}").format(self.ident))
        if commit:
            self.conn.commit()
        return int(count)
