"""The rebuilt table and its bookkeeping in the target database.

:class:`Target` is everything replay needs to know or change about the table it builds, apart
from applying row changes: the one-writer lock, the progress row that makes a killed run
resumable (``walrecover.progress``, committed in the same transaction as the data it describes),
creating the table from the stream's relation or a ``--ddl`` file, its key and columns, and the
ALTER TABLEs that follow the stream's own.

It also keeps the build away from logical replication. In a database where a publication would
publish the rebuilt table or the progress table (``FOR ALL TABLES``, ``FOR TABLES IN SCHEMA``),
a subscriber that lacks them stops applying *every* table at the first row walrecover writes.
There both are built ``UNLOGGED`` (PostgreSQL never publishes unlogged tables), a server crash
empties them together (a rerun recognises its own emptied table by :data:`UNLOGGED_MARK` and
starts again), and the finished table becomes logged in the final commit (a table rewrite,
which logical decoding does not turn into row changes). A table a publication lists by name
(``FOR TABLE``) is refused.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..db import connection_lost
from ..errors import PrivilegeError, PublishedTarget, ReplayError, TargetBusy
from ..stream.model import Column, Relation, TableName
from .progress import (
    _ADDED_COLUMNS,
    PROGRESS_SCHEMA,
    PROGRESS_TABLE,
    Progress,
    read_progress,
    write_progress,
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

#: Nodes of a stored expression that evaluate to the same value every time (given immutable
#: functions), and the function references in one (``pg_node_tree`` text).
_CONSTANT_NODES = frozenset({"CONST", "FUNCEXPR", "OPEXPR", "RELABELTYPE"})
_NODE = re.compile(r"\{([A-Z_]+)")
_FUNCTION = re.compile(r":(?:funcid|opfuncid) (\d+)")

#: The comment on a table walrecover builds unlogged (any comment of a --ddl follows it on the
#: next line). It survives a server crash, which empties the table: a rerun that finds its own
#: marked, unlogged, empty table and no progress row knows the crash reset it.
UNLOGGED_MARK = "walrecover: unfinished recovery, unlogged (unpublished) until it is complete"

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


@dataclass(frozen=True, slots=True)
class Publication:
    """A publication of the target database and how it reaches a table."""

    name: str
    #: ``FOR ALL TABLES``, ``FOR TABLES IN SCHEMA s`` or ``FOR TABLE``.
    how: str

    def __str__(self) -> str:
        return f"{self.name} ({self.how})"


def publications_of(conn: Any, table: TableName) -> list[Publication]:
    """The publications that publish ``table``, or would once it exists as a permanent table:
    ``FOR ALL TABLES``, ``FOR TABLES IN SCHEMA`` of its schema, and ``FOR TABLE`` naming it."""
    queries = [
        "SELECT pubname::text, 'FOR ALL TABLES' FROM pg_publication WHERE puballtables",
        "SELECT p.pubname::text, 'FOR TABLE' FROM pg_publication p"
        " JOIN pg_publication_rel r ON r.prpubid = p.oid WHERE r.prrelid = to_regclass(%(t)s)",
    ]
    if conn.info.server_version >= 150000:  # TABLES IN SCHEMA is new in PostgreSQL 15
        queries.append(
            "SELECT p.pubname::text, 'FOR TABLES IN SCHEMA ' || quote_ident(n.nspname)"
            " FROM pg_publication p JOIN pg_publication_namespace s ON s.pnpubid = p.oid"
            " JOIN pg_namespace n ON n.oid = s.pnnspid WHERE n.nspname = %(s)s"
        )
    rows = conn.execute(
        " UNION ALL ".join(queries) + " ORDER BY 1, 2",
        {"t": sql.Identifier(table.schema, table.name).as_string(conn), "s": table.schema},
    ).fetchall()
    return [Publication(str(name), str(how)) for name, how in rows]


def refuse_listed(conn: Any, into: TableName) -> list[Publication]:
    """The publications that would publish ``into`` or walrecover's progress table; raise
    :class:`PublishedTarget` if one lists either by name (``FOR TABLE``): such a table cannot
    be kept out of it (PostgreSQL refuses to make a listed table unlogged)."""
    progress = TableName(PROGRESS_SCHEMA, PROGRESS_TABLE)
    found: list[Publication] = []
    for table in (into, progress):
        publications = publications_of(conn, table)
        listed = [p.name for p in publications if p.how == "FOR TABLE"]
        if listed and table == into:
            raise PublishedTarget(
                f"--into {into} is listed in publication {', '.join(listed)} (FOR TABLE): its "
                "subscribers would receive every row walrecover writes, and stop applying if "
                f"they lack the table; choose another --into (or --target another database), "
                f"or take it out of the publication yourself (ALTER PUBLICATION {listed[0]} "
                f"DROP TABLE {into})",
                table=str(into),
                publications=listed,
            )
        if listed:
            raise PublishedTarget(
                f"{progress} (walrecover's progress table) is listed in publication "
                f"{', '.join(listed)} (FOR TABLE): its subscribers would receive walrecover's "
                f"bookkeeping and stop applying; ALTER PUBLICATION {listed[0]} DROP TABLE "
                f"{progress}, or build in another database with --target",
                table=str(progress),
                publications=listed,
            )
        found += [p for p in publications if p not in found]
    return found


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


class Target:
    """The table being rebuilt, on one connection of the target database."""

    def __init__(self, conn: Any, into: TableName) -> None:
        self.conn = conn
        self.into = into
        self.ident = sql.Identifier(into.schema, into.name)
        self._progress = sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)
        #: Build unlogged: the progress table is unlogged (a publication would publish it or
        #: the rebuilt table), so the table it describes must be too (a crash resets both).
        self.unlogged = False
        #: The publications that would publish the rebuilt or the progress table.
        self.publications: tuple[Publication, ...] = ()

    @property
    def regclass(self) -> str:
        """The quoted name, as ``::regclass`` takes it."""
        return self.ident.as_string(self.conn)

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
        unlogged = sql.SQL("UNLOGGED ") if publications else sql.SQL("")
        try:
            conn.execute(
                sql.SQL(
                    "CREATE SCHEMA IF NOT EXISTS {schema};"
                    " CREATE {unlogged}TABLE IF NOT EXISTS {table} ("
                    " target text PRIMARY KEY, source text NOT NULL, last_commit_lsn pg_lsn,"
                    " last_xid bigint, transactions bigint NOT NULL, changes bigint NOT NULL,"
                    " no_row bigint NOT NULL DEFAULT 0, first_lsn pg_lsn,"
                    " audit text, position bigint, complete boolean NOT NULL,"
                    " updated_at timestamptz NOT NULL DEFAULT now(),"
                    " stream_start_lsn pg_lsn, resume_lsn pg_lsn, command text, result text)"
                ).format(
                    schema=sql.Identifier(PROGRESS_SCHEMA), table=self._progress, unlogged=unlogged
                )
            )
            if publications and self._persistence(self._progress) == "p":
                conn.execute(sql.SQL("ALTER TABLE {} SET UNLOGGED").format(self._progress))
            conn.commit()
            # Only when missing: ALTER TABLE would queue behind other runs' open batches.
            present = {
                r[0]
                for r in conn.execute(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
                    " AND NOT attisdropped",
                    (self._progress.as_string(conn),),
                )
            }
            missing = [name for name in _ADDED_COLUMNS if name not in present]
            if missing:
                conn.execute(
                    sql.SQL("ALTER TABLE {} {}").format(
                        self._progress,
                        sql.SQL(", ").join(
                            sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                                sql.Identifier(name), sql.SQL(_ADDED_COLUMNS[name])
                            )
                            for name in missing
                        ),
                    )
                )
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as exc:
            conn.rollback()
            (user,) = conn.execute("SELECT current_user").fetchone()
            if publications:
                raise PrivilegeError(
                    f"role {user!r} cannot keep walrecover's progress unpublished in the target "
                    f"database ({exc.diag.message_primary}), where publication "
                    f"{_names(publications)} would publish it: run walrecover as the owner of "
                    f"{PROGRESS_SCHEMA}.{PROGRESS_TABLE} (with CREATE on the database), or build"
                    " in another database with --target",
                    table=str(self.into),
                    role=user,
                ) from None
            # Even with IF NOT EXISTS, PostgreSQL checks the privilege to create the schema and
            # the table before it sees that they exist: a role granted what an existing progress
            # table needs (and no more) goes on.
            if self._progress_exists() and self.missing_privilege(force=False) is None:
                self.unlogged = self._persistence(self._progress) == "u"
                conn.commit()
                return
            raise self.privilege_error(exc) from None

        self.unlogged = self._persistence(self._progress) == "u"
        conn.commit()

    def _persistence(self, table: sql.Identifier) -> str | None:
        """``p`` (logged), ``u`` (unlogged), or None if the table does not exist."""
        row = self.conn.execute(
            "SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass(%s)",
            (table.as_string(self.conn),),
        ).fetchone()
        return None if row is None else str(row[0])

    def check_unpublished(self) -> None:
        """Raise :class:`PublishedTarget` if a publication now reaches the logged table being
        built or the progress table (created or altered during the run). Checked in each
        batch's transaction after its last write, before it commits: the rows of a batch that
        fails the check are rolled back, and those of a batch that passes precede, in the WAL,
        any publication the check did not see, so logical decoding does not publish them."""
        if self.unlogged:
            return
        publications = refuse_listed(self.conn, self.into)
        if publications:
            raise PublishedTarget(
                f"publication {_names(publications)} began publishing {self.into} or "
                f"{PROGRESS_SCHEMA}.{PROGRESS_TABLE} during the recovery; walrecover stopped "
                "before committing more, so no subscriber received rows of the rebuild: rerun "
                f"the same command to resume, building {self.into} unlogged (unpublished)",
                table=str(self.into),
                publications=[p.name for p in publications],
            )

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

    def missing_privilege(self, *, force: bool) -> PrivilegeError | None:
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
        progress = read_progress(self.conn, self.into)
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
        write_progress(self.conn, self.into, progress)

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

    # -- unlogged builds -----------------------------------------------------------------------

    def _comment(self) -> str | None:
        row = self.conn.execute(
            "SELECT obj_description(%s::regclass, 'pg_class')", (self.regclass,)
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _set_comment(self, comment: str | None) -> None:
        self.conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                self.ident, sql.SQL("NULL") if comment is None else sql.Literal(comment)
            )
        )

    def make_unlogged(self) -> None:
        """Make the existing logged table unlogged and mark it, in the open transaction (a
        rewrite: logical decoding sees no rows). A table that is unlogged already is left as it
        is (a --ddl that asked for it), unmarked, and stays unlogged when the build finishes."""
        if not self.unlogged or self._persistence(self.ident) != "p":
            return
        try:
            self.conn.execute(sql.SQL("ALTER TABLE {} SET UNLOGGED").format(self.ident))
        except psycopg.Error as exc:
            raise PublishedTarget(
                f"{self._why_unlogged(self.into)}, so walrecover builds {self.into} unlogged,"
                f" but PostgreSQL refuses: "
                f"{exc.diag.message_primary or exc}; drop that from the --ddl file (a foreign "
                "key to a logged table, say), or build with --target another database or "
                "--into a schema no publication publishes",
                table=str(self.into),
                publications=[p.name for p in self.publications],
            ) from None
        comment = self._comment()
        self._set_comment(UNLOGGED_MARK if comment is None else f"{UNLOGGED_MARK}\n{comment}")

    def _why_unlogged(self, subject: str | TableName = "it") -> str:
        if self.publications:
            return f"publication {_names(self.publications)} would publish {subject}"
        return (
            f"{PROGRESS_SCHEMA}.{PROGRESS_TABLE} is unlogged in this database (a publication "
            "reached it once), and a table must be built like its progress"
        )

    def reset_by_crash(self) -> bool:
        """True if the table is walrecover's own unlogged build, emptied by a server crash (its
        progress row went with it): it can only be built again from the start."""
        if self._persistence(self.ident) != "u" or not (self._comment() or "").startswith(
            UNLOGGED_MARK
        ):
            return False
        (empty,) = self.conn.execute(
            sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(self.ident)
        ).fetchone()
        return bool(empty)

    def finish(self) -> None:
        """Make a marked unlogged build logged (so the finished table survives a crash) and
        give back the --ddl's comment, in the open transaction: the build's last commit."""
        if self._persistence(self.ident) != "u":
            return
        comment = self._comment() or ""
        if not comment.startswith(UNLOGGED_MARK):
            return
        try:
            self.conn.execute(sql.SQL("ALTER TABLE {} SET LOGGED").format(self.ident))
        except psycopg.Error as exc:
            raise ReplayError(
                f"{self.into} is rebuilt but cannot become logged (built unlogged because "
                f"{self._why_unlogged()}): "
                f"{exc.diag.message_primary or exc}; fix that (a foreign key of the --ddl to an "
                "unlogged table, say), then rerun the same command to finish",
                table=str(self.into),
            ) from None
        self._set_comment(comment[len(UNLOGGED_MARK) + 1 :] or None)

    def published_by(self) -> list[Publication]:
        """The publications that publish the table as it is now (never an unlogged one)."""
        rows = self.conn.execute(
            "SELECT pubname::text FROM pg_publication_tables"
            " WHERE schemaname = %s AND tablename = %s",
            (self.into.schema, self.into.name),
        ).fetchall()
        names = {str(r[0]) for r in rows}
        return [p for p in publications_of(self.conn, self.into) if p.name in names]

    def publication_warnings(self, table: TableName) -> list[str]:
        """The warning that a publication now publishes the finished table (built unlogged,
        so no subscriber received it; ``table`` is the table it replaces), or nothing."""
        if not self.unlogged:
            return []
        publications = self.published_by()
        self.conn.commit()
        if not publications:
            return []
        into = self.into
        return [
            f"{into} was built unlogged, so no subscriber received its rows; now complete "
            f"and logged, it is published by {_names(publications)}: do not write to it until "
            f"you swap it in for {table}, since subscribers have no {into} (a write would stop "
            f"them), and create {into} on a subscriber before its REFRESH PUBLICATION or a new "
            "CREATE SUBSCRIPTION"
        ]

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

    def column_types(self) -> dict[str, tuple[str, int]]:
        """Each column's type as SQL (``format_type``, modifier included) and its ``typlen``
        (positive for fixed-length types, whose values always fit in an index entry)."""
        rows = self.conn.execute(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typlen"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (self.regclass,),
        ).fetchall()
        return {str(r[0]): (str(r[1]), int(r[2])) for r in rows}

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
            (mutable,) = self.conn.execute(
                "SELECT count(*) FROM pg_proc WHERE oid = ANY(%s) AND provolatile <> 'i'",
                (functions,),
            ).fetchone()
            if mutable:
                return None
        return shown

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
        (count,) = self.conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(self.ident)
        ).fetchone()
        if commit:
            self.conn.commit()
        return int(count)


def _names(publications: tuple[Publication, ...] | list[Publication]) -> str:
    return ", ".join(str(p) for p in publications)
