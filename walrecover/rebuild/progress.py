"""How far a recovery got: the counts a replay keeps, and the progress row that carries them.

:class:`Counts` is the one value that travels from the replay loop to the progress row
(``walrecover.progress``, committed with the data it describes), to
:class:`~walrecover.rebuild.replay.ReplayResult` and to
:class:`~walrecover.rebuild.recover.RecoveryResult`; a resumed run starts from the counts its
progress row holds. :class:`Progress` is that row: the counts, plus what makes a run resumable
(the source, the stream positions, the command's identity).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from psycopg import sql

from ..db import Connection, one
from ..stream.lsn import Lsn
from ..stream.model import TableName

PROGRESS_SCHEMA = "walrecover"
PROGRESS_TABLE = "progress"


@dataclass(frozen=True, slots=True)
class Counts:
    """What a recovery applied so far: transactions, row changes, and where they commit."""

    #: Source transactions that changed the table (each counted once, at its commit).
    transactions: int = 0
    #: Row changes of the table replay took in (a transaction left out by the stop point
    #: after its changes were taken counts them too).
    changes: int = 0
    #: Updates and deletes that found no row to change.
    no_row: int = 0
    #: The first and last applied transaction's commit LSN (its end LSN when the plugin
    #: gives only that), and the last one's xid.
    first_lsn: Lsn | None = None
    last_lsn: Lsn | None = None
    last_xid: int | None = None

    def committed(self, changes: int, lsn: Lsn | None, xid: int | None) -> Counts:
        """These counts after one more applied transaction of ``changes`` changes."""
        return replace(
            self,
            transactions=self.transactions + 1,
            changes=self.changes + changes,
            first_lsn=lsn if self.first_lsn is None else self.first_lsn,
            last_lsn=lsn,
            last_xid=xid,
        )

    def plus(self, *, changes: int = 0, no_row: int = 0) -> Counts:
        """These counts with more changes taken in, or more that found no row."""
        if not changes and not no_row:
            return self
        return replace(self, changes=self.changes + changes, no_row=self.no_row + no_row)


class Counted:
    """The counts of a result, readable as its own attributes (``result.transactions``)."""

    __slots__ = ()
    counts: Counts

    @property
    def transactions(self) -> int:
        return self.counts.transactions

    @property
    def changes(self) -> int:
        return self.counts.changes

    @property
    def no_row(self) -> int:
        return self.counts.no_row

    @property
    def first_lsn(self) -> Lsn | None:
        return self.counts.first_lsn

    @property
    def last_lsn(self) -> Lsn | None:
        return self.counts.last_lsn


@dataclass(frozen=True, slots=True)
class Progress(Counted):
    """A recovery's progress row: how far it got, from which source, and whether it finished."""

    #: The source and stop point (a run resumes only the same recovery).
    source: str
    counts: Counts
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
    #: The command's identity (JSON: the options that decide the rows), so a rerun can tell
    #: the same command from another one and name the option that differs.
    command: str | None = None
    #: The finished recovery's result (JSON), for the "already complete" answer of a rerun.
    result: str | None = None

    @property
    def last_commit_lsn(self) -> Lsn | None:
        """The last applied commit LSN: where a resume goes on from."""
        return self.counts.last_lsn


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
    "command",
    "result",
)

#: Columns later versions added to ``walrecover.progress`` (a table an older walrecover made
#: lacks them until :meth:`Target.ensure_bookkeeping` adds them).
_ADDED_COLUMNS = {
    "stream_start_lsn": "pg_lsn",
    "resume_lsn": "pg_lsn",
    "command": "text",
    "result": "text",
    "retired": "text",
}


def _lsn_or_none(text: str | None) -> Lsn | None:
    return Lsn.parse(text) if text else None


def _lsn_text(lsn: Lsn | None) -> str | None:
    return None if lsn is None else str(lsn)


def read_progress(conn: Connection, into: TableName) -> Progress | None:
    """The progress row of ``into``, or None (also when there is no progress table yet).

    Read as one JSON object, so a progress table an older walrecover made (lacking columns
    this version adds) reads too: a missing column is None. Leaves the transaction open.
    """
    progress = sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)
    (exists,) = one(conn, "SELECT to_regclass(%s) IS NOT NULL", (progress.as_string(conn),))
    if not exists:
        return None
    row = conn.execute(
        sql.SQL("SELECT to_jsonb(p) FROM {} p WHERE target = %s").format(progress),
        (str(into),),
    ).fetchone()
    if row is None:
        return None
    values = {name: row[0].get(name) for name in _PROGRESS_COLUMNS}
    counts = Counts(
        transactions=int(values["transactions"]),
        changes=int(values["changes"]),
        no_row=int(values["no_row"] or 0),
        first_lsn=_lsn_or_none(values["first_lsn"]),
        last_lsn=_lsn_or_none(values["last_commit_lsn"]),
        last_xid=values["last_xid"],
    )
    return Progress(
        source=str(values["source"]),
        counts=counts,
        audit=values["audit"],
        position=int(values["position"] or 0),
        complete=bool(values["complete"]),
        stream_start_lsn=_lsn_or_none(values["stream_start_lsn"]),
        resume_lsn=_lsn_or_none(values["resume_lsn"]),
        command=values["command"],
        result=values["result"],
    )


def write_progress(
    conn: Connection, into: TableName, progress: Progress, retired: str | None = None
) -> None:
    """Record ``progress`` of ``into`` in the open transaction (it commits with the data);
    ``retired``: the files of earlier tables of that name walrecover dropped (kept if None)."""
    counts = progress.counts
    conn.execute(
        sql.SQL(
            "INSERT INTO {} AS p (target, source, last_commit_lsn, last_xid, transactions,"
            " changes, no_row, first_lsn, audit, position, complete, stream_start_lsn,"
            " resume_lsn, command, retired)"
            " VALUES (%s, %s, %s::pg_lsn, %s, %s, %s, %s, %s::pg_lsn, %s, %s, %s,"
            " %s::pg_lsn, %s::pg_lsn, %s, %s)"
            " ON CONFLICT (target) DO UPDATE SET source = excluded.source,"
            " last_commit_lsn = excluded.last_commit_lsn, last_xid = excluded.last_xid,"
            " transactions = excluded.transactions, changes = excluded.changes,"
            " no_row = excluded.no_row, first_lsn = excluded.first_lsn,"
            " audit = excluded.audit, position = excluded.position,"
            " complete = excluded.complete, stream_start_lsn = excluded.stream_start_lsn,"
            " resume_lsn = excluded.resume_lsn, command = excluded.command,"
            " retired = coalesce(excluded.retired, p.retired), updated_at = now()"
        ).format(sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)),
        (
            str(into),
            progress.source,
            _lsn_text(counts.last_lsn),
            counts.last_xid,
            counts.transactions,
            counts.changes,
            counts.no_row,
            _lsn_text(counts.first_lsn),
            progress.audit,
            progress.position,
            progress.complete,
            _lsn_text(progress.stream_start_lsn),
            _lsn_text(progress.resume_lsn),
            progress.command,
            retired,
        ),
    )


def read_retired(conn: Connection, into: TableName) -> frozenset[tuple[int, int]]:
    """The files (database oid, relfilenode) of earlier tables named ``into`` that walrecover
    dropped (rebuilt again with --force, or emptied by a crash), as its progress row keeps
    them; empty without a row. Leaves the transaction open."""
    row = conn.execute(
        sql.SQL("SELECT to_jsonb(p) ->> 'retired' FROM {} p WHERE target = %s").format(
            sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)
        ),
        (str(into),),
    ).fetchone()
    return parse_files(row[0] if row else None)


def files_text(files: frozenset[tuple[int, int]]) -> str | None:
    """``database:relfilenode`` pairs, comma-separated (None for none): the retired column."""
    return ",".join(f"{db}:{node}" for db, node in sorted(files)) or None


def parse_files(text: str | None) -> frozenset[tuple[int, int]]:
    """The pairs :func:`files_text` wrote."""
    pairs = (item.split(":") for item in (text or "").split(",") if item)
    return frozenset((int(db), int(node)) for db, node in pairs)


def persistence(conn: Connection, table: sql.Identifier) -> str | None:
    """``p`` (logged), ``u`` (unlogged), or None if the table does not exist."""
    row = conn.execute(
        "SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass(%s)",
        (table.as_string(conn),),
    ).fetchone()
    return None if row is None else str(row[0])


def create_progress_table(conn: Connection, *, unlogged: bool) -> None:
    """Create ``walrecover.progress`` if needed (``unlogged``: unlogged, and an existing logged
    one made unlogged, keeping its rows and so the resumes of earlier runs), and add the
    columns later versions added; commit."""
    progress = sql.Identifier(PROGRESS_SCHEMA, PROGRESS_TABLE)
    conn.execute(
        sql.SQL(
            "CREATE SCHEMA IF NOT EXISTS {schema};"
            " CREATE {unlogged}TABLE IF NOT EXISTS {table} ("
            " target text PRIMARY KEY, source text NOT NULL, last_commit_lsn pg_lsn,"
            " last_xid bigint, transactions bigint NOT NULL, changes bigint NOT NULL,"
            " no_row bigint NOT NULL DEFAULT 0, first_lsn pg_lsn,"
            " audit text, position bigint, complete boolean NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now(),"
            " stream_start_lsn pg_lsn, resume_lsn pg_lsn, command text, result text,"
            " retired text)"
        ).format(
            schema=sql.Identifier(PROGRESS_SCHEMA),
            table=progress,
            unlogged=sql.SQL("UNLOGGED " if unlogged else ""),
        )
    )
    if unlogged and persistence(conn, progress) == "p":
        conn.execute(sql.SQL("ALTER TABLE {} SET UNLOGGED").format(progress))
    conn.commit()
    # Only when missing: ALTER TABLE would queue behind other runs' open batches.
    present = {
        r[0]
        for r in conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND NOT attisdropped",
            (progress.as_string(conn),),
        )
    }
    missing = [name for name in _ADDED_COLUMNS if name not in present]
    if missing:
        conn.execute(
            sql.SQL("ALTER TABLE {} {}").format(
                progress,
                sql.SQL(", ").join(
                    sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                        sql.Identifier(name), sql.SQL(_ADDED_COLUMNS[name])
                    )
                    for name in missing
                ),
            )
        )
    conn.commit()
