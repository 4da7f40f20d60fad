"""The rebuilt table and its bookkeeping in the target database.

:class:`Target` is everything replay needs to know or change about the table it builds, apart
from applying row changes: the one-writer lock, the progress row that makes a killed run
resumable (``walrecover.progress``, committed in the same transaction as the data it describes),
creating the table from the stream's relation or a ``--ddl`` file, its key and columns, and the
ALTER TABLEs that follow the stream's own.
"""

from __future__ import annotations

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
    #: Where the slot copy of the first run started (None for a capture).
    stream_start_lsn: Lsn | None = None
    #: The latest position a new copy of the slot may start at for a resume to miss nothing:
    #: the end of the last transaction this recovery has read and committed (the stream's
    #: start before any). Decoding skips a transaction whose commit record starts before the
    #: copy's start, and the next unread one starts at or after this end.
    resume_lsn: Lsn | None = None


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
    "stream_start_lsn",
    "resume_lsn",
)

#: Columns later versions added to ``walrecover.progress`` (a table an older walrecover made
#: lacks them until :meth:`Target.ensure_bookkeeping` adds them).
_ADDED_COLUMNS = {"stream_start_lsn": "pg_lsn", "resume_lsn": "pg_lsn"}


def _lsn_or_none(text: str | None) -> Lsn | None:
    return Lsn.parse(text) if text else None


def _lsn_text(lsn: Lsn | None) -> str | None:
    return None if lsn is None else str(lsn)


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
                    " updated_at timestamptz NOT NULL DEFAULT now(),"
                    " stream_start_lsn pg_lsn, resume_lsn pg_lsn)"
                ).format(schema=sql.Identifier(PROGRESS_SCHEMA), table=self._progress)
            )
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
            (user, database) = conn.execute("SELECT current_user, current_database()").fetchone()
            raise PrivilegeError(
                f"role {user!r} cannot keep walrecover's progress in the target database "
                f"({exc.diag.message_primary}): GRANT CREATE ON DATABASE {database} TO {user} "
                "(walrecover creates the schema walrecover there), or build with another role",
                table=str(self.into),
                role=user,
            ) from None

    def read_progress(self) -> Progress | None:
        """The progress row of this target, or None."""
        row = self.conn.execute(
            sql.SQL(
                "SELECT source, last_commit_lsn::text, last_xid, transactions, changes, no_row,"
                " first_lsn::text, audit, position, complete, stream_start_lsn::text,"
                " resume_lsn::text FROM {} WHERE target = %s"
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
            stream_start_lsn=_lsn_or_none(values["stream_start_lsn"]),
            resume_lsn=_lsn_or_none(values["resume_lsn"]),
        )

    def write_progress(self, progress: Progress) -> None:
        """Record ``progress`` in the open transaction (it commits with the data)."""
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} AS p (target, source, last_commit_lsn, last_xid, transactions,"
                " changes, no_row, first_lsn, audit, position, complete, stream_start_lsn,"
                " resume_lsn)"
                " VALUES (%s, %s, %s::pg_lsn, %s, %s, %s, %s, %s::pg_lsn, %s, %s, %s,"
                " %s::pg_lsn, %s::pg_lsn)"
                " ON CONFLICT (target) DO UPDATE SET source = excluded.source,"
                " last_commit_lsn = excluded.last_commit_lsn, last_xid = excluded.last_xid,"
                " transactions = excluded.transactions, changes = excluded.changes,"
                " no_row = excluded.no_row, first_lsn = excluded.first_lsn,"
                " audit = excluded.audit, position = excluded.position,"
                " complete = excluded.complete, stream_start_lsn = excluded.stream_start_lsn,"
                " resume_lsn = excluded.resume_lsn, updated_at = now()"
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
                _lsn_text(progress.stream_start_lsn),
                _lsn_text(progress.resume_lsn),
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

    def generated_columns(self) -> frozenset[str]:
        """Columns the server computes (GENERATED ALWAYS ... STORED): COPY and UPDATE refuse
        values for them."""
        rows = self.conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped AND attgenerated <> ''",
            (self.regclass,),
        ).fetchall()
        return frozenset(r[0] for r in rows)

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
