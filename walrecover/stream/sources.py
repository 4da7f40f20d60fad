"""Sources yield a plugin's raw messages; a slot source never moves the user's slot.

:class:`SlotSource` copies the user's slot into a permanent ``walrecover_<pid>_<token>`` slot with
``pg_copy_logical_replication_slot`` and consumes the *copy* in pages with
``pg_logical_slot_get_changes``. Consuming (not peeking) the copy is what keeps the work linear:
each page starts where the previous one ended, while repeated peeks would re-decode from the
start every time. Rows of a page are fetched through a server-side cursor, so client memory stays
bounded even for one enormous transaction. The copy is permanent because a temporary slot vanishes
on any error in its session; it is dropped when done, and a copy left by a crashed run (its
backend pid, part of its name, no longer alive) is swept at the next start.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from ..db import connect, not_utf8, one, safe_dsn
from ..errors import (
    ConfigurationError,
    DecodeError,
    PrivilegeError,
    SlotError,
    StreamCutShort,
    WalrecoverError,
    first_line,
)
from .decoders import (
    PLUGINS,
    Decoder,
    decode_all,
    is_binary,
    pgoutput,
    plugin_options,
    without_streaming,
)
from .lsn import Lsn
from .model import Event, RawMessage, TableName
from .notices import NoticeLog
from .settings import CaptureSettings

COPY_PREFIX = "walrecover_"

#: Called as ``progress(stage, done, total)``; the CLI draws it with tqdm.
ProgressCallback = Callable[[str, int, int | None], None]


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """A logical replication slot as ``pg_replication_slots`` shows it."""

    name: str
    plugin: str
    database: str
    restart_lsn: Lsn | None
    confirmed_flush_lsn: Lsn | None
    active: bool
    temporary: bool
    #: The backend consuming the slot while it is active.
    active_pid: int | None = None


def read_slot(conn: Any, name: str) -> SlotInfo:
    """The slot ``name``; raise :class:`SlotError` naming the slots that exist if it does not."""
    row = conn.execute(
        "SELECT slot_name::text, plugin::text, slot_type, database::text, restart_lsn::text,"
        " confirmed_flush_lsn::text, active, temporary, active_pid"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (name,),
    ).fetchone()
    if row is None:
        others = [
            r[0]
            for r in conn.execute(
                "SELECT slot_name::text FROM pg_replication_slots"
                " WHERE slot_type = 'logical' AND slot_name NOT LIKE 'walrecover\\_%'"
                " ORDER BY 1"
            )
        ]
        hint = f"logical slots here: {', '.join(others)}" if others else "no logical slot exists"
        raise SlotError(
            f"replication slot {name!r} does not exist ({hint}): check --slot and the database",
            slot=name,
        )
    slot_name, plugin, slot_type, database, restart, confirmed, active, temporary, pid = row
    if slot_type != "logical":
        raise SlotError(
            f"slot {name!r} is a physical slot: walrecover needs a logical replication slot",
            slot=name,
        )
    return SlotInfo(
        name=slot_name,
        plugin=plugin,
        database=database,
        restart_lsn=Lsn.parse(restart) if restart else None,
        confirmed_flush_lsn=Lsn.parse(confirmed) if confirmed else None,
        active=bool(active),
        temporary=bool(temporary),
        active_pid=pid,
    )


def sweep_copies(conn: Any) -> list[str]:
    """Drop copy slots left by crashed walrecover runs; return their names.

    A copy is ``walrecover_<backend pid>_<token>``; it is an orphan when it is inactive and no
    backend with that pid is alive.
    """
    rows = conn.execute(
        "SELECT slot_name::text FROM pg_replication_slots"
        " WHERE slot_name LIKE 'walrecover\\_%' AND NOT active"
        " AND database = current_database()"
        " AND split_part(slot_name, '_', 2) !~ '[^0-9]'"
        " AND NOT EXISTS (SELECT 1 FROM pg_stat_activity"
        "   WHERE pid::text = split_part(slot_name, '_', 2))"
    ).fetchall()
    dropped = []
    for (name,) in rows:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            dropped.append(name)
        except psycopg.Error:
            continue  # it became active, or another run swept it first
    return dropped


def wait_for_flush(conn: Any, timeout: float = 30.0) -> Lsn:
    """The WAL insert position now, once it is flushed (decoding only reads flushed WAL).

    ``pg_current_wal_lsn()`` is the *write* position: with asynchronous commits it can lag
    commits that already happened, which would silently leave them out.
    """
    (insert,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    end = Lsn.parse(insert)
    deadline = time.monotonic() + timeout
    while True:
        (flushed,) = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        if Lsn.parse(flushed) >= end:
            return end
        if time.monotonic() > deadline:
            raise SlotError(
                f"the source's WAL flush did not reach {end} within {timeout:.0f}s: "
                "the server is overloaded or stuck; retry when it has caught up"
            )
        time.sleep(0.05)


def check_server(conn: Any) -> None:
    """Raise :class:`ConfigurationError` unless the server can do logical decoding."""
    (level,) = conn.execute("SHOW wal_level").fetchone()
    if level != "logical":
        raise ConfigurationError(
            f"wal_level is {level!r} on the source: logical decoding needs wal_level = logical"
            " (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )


def check_replication_privilege(conn: Any, slot: str) -> None:
    """Raise :class:`PrivilegeError` unless the role may copy and read replication slots."""
    row = conn.execute(
        "SELECT rolname::text, rolsuper OR rolreplication FROM pg_roles"
        " WHERE rolname = current_user"
    ).fetchone()
    if row is not None and not row[1]:
        raise PrivilegeError(
            f"role {row[0]!r} may not read replication slots: it needs the REPLICATION attribute"
            f" (ALTER ROLE {row[0]} REPLICATION) or superuser",
            slot=slot,
            role=row[0],
        )


def _publication_names(options: Mapping[str, str]) -> list[str]:
    """The publications a pgoutput read uses (``publication_names``, as walrecover sends it)."""
    return [p.strip() for p in options.get("publication_names", "").split(",") if p.strip()]


_ACTIONS = ("update", "delete", "truncate")

#: Whether a publication lists a table, with its column list and row filter (PostgreSQL 15+).
_LISTED = (
    "SELECT 1, prattrs IS NOT NULL, pg_get_expr(prqual, prrelid) FROM pg_publication_rel"
    " WHERE prpubid = %s AND prrelid = %s"
)
_LISTED_OLD = "SELECT 1 FROM pg_publication_rel WHERE prpubid = %s AND prrelid = %s"


def check_publications(
    conn: Any, names: list[str], tables: Iterable[TableName], server_version: int | None
) -> tuple[list[str], list[str]]:
    """(reasons a rebuilt table is not proven exact, warnings) from the publications a pgoutput
    read uses: pgoutput silently leaves out what a publication does not publish.

    Looked at: the publish flags (``publish = 'insert'`` drops every UPDATE, DELETE, TRUNCATE),
    and, where the table still exists, a column list or row filter for it
    (``pg_publication_rel.prattrs``/``prqual``, PostgreSQL 15+). A dropped table's
    ``pg_publication_rel`` rows went with it: for a publication that lists tables one by one,
    that cannot be checked, which is a warning. The catalog shows the publications as they are
    now; pgoutput read them as they were at each change.
    """
    rows = conn.execute(
        "SELECT oid, pubname::text, puballtables, pubupdate, pubdelete, pubtruncate"
        " FROM pg_publication WHERE pubname = ANY(%s) ORDER BY pubname",
        (names,),
    ).fetchall()
    unproven: list[str] = []
    warnings: list[str] = []
    remedy = (
        "read the slot with --via-plugin test_decoding (or wal2json), which reads every change,"
        " and --force to rebuild"
    )
    tables = list(tables)
    if not tables:  # walrecover decode of every table: the flags alone
        for _, name, _, *flags in rows:
            missing = [a.upper() for a, on in zip(_ACTIONS, flags, strict=True) if not on]
            if missing:
                warnings.append(
                    f"publication {name} does not publish {', '.join(missing)}: pgoutput leaves "
                    "every such change out of the stream; --via-plugin test_decoding shows them"
                )
        return unproven, warnings
    modern = server_version is None or server_version >= 150000
    for table in tables:
        ident = sql.Identifier(table.schema, table.name).as_string(conn)
        (oid,) = conn.execute("SELECT to_regclass(%s)::oid", (ident,)).fetchone()
        covering: list[tuple[str, tuple[bool, ...]]] = []
        listing: list[str] = []
        for pub_oid, name, alltables, *flags in rows:
            in_schema = modern and bool(
                conn.execute(
                    "SELECT 1 FROM pg_publication_namespace pn"
                    " JOIN pg_namespace n ON n.oid = pn.pnnspid"
                    " WHERE pn.pnpubid = %s AND n.nspname = %s",
                    (pub_oid, table.schema),
                ).fetchone()
            )
            if alltables or in_schema:
                covering.append((name, tuple(flags)))
                continue
            if oid is None:  # dropped: it may have been listed
                covering.append((name, tuple(flags)))
                listing.append(name)
                continue
            listed = conn.execute(_LISTED if modern else _LISTED_OLD, (pub_oid, oid)).fetchone()
            if listed is None:
                continue
            covering.append((name, tuple(flags)))
            if modern and listed[1]:
                unproven.append(
                    f"publication {name} publishes only some columns of {table} (a column "
                    "list): pgoutput left the others out of the stream, so the rebuilt table "
                    f"lacks them; {remedy}"
                )
            if modern and listed[2] is not None:
                unproven.append(
                    f"publication {name} publishes only the rows of {table} WHERE {listed[2]}: "
                    "pgoutput left the other rows out of the stream (and sent updates that "
                    f"cross the filter as inserts or deletes); {remedy}"
                )
        if covering:
            missing = [
                a.upper()
                for i, a in enumerate(_ACTIONS)
                if not any(flags[i] for _, flags in covering)
            ]
            if missing:
                pubs = ", ".join(name for name, _ in covering)
                unproven.append(
                    f"publication {pubs} does not publish {', '.join(missing)}: pgoutput left "
                    f"every such change of {table} out of the stream, so the rebuilt table may "
                    f"still hold rows that were later changed or removed; {remedy}"
                )
        if listing and modern:
            warnings.append(
                f"publication {', '.join(listing)} lists its tables one by one and {table} no "
                "longer exists, so a column list or row filter it had for the table cannot be "
                "checked: if it had one, pgoutput left those columns or rows out "
                "(--via-plugin test_decoding reads every column and row)"
            )
    return unproven, warnings


def _active_warning(conn: Any, info: SlotInfo, copied_at: Lsn | None) -> str:
    """Slot ``info`` is in use by another consumer: say who, and what that means."""
    who = ""
    if info.active_pid is not None:
        row = conn.execute(
            "SELECT coalesce(application_name, ''), coalesce(client_addr::text, 'local')"
            " FROM pg_stat_activity WHERE pid = %s",
            (info.active_pid,),
        ).fetchone()
        detail = f" ({row[0] or 'no application_name'}, {row[1]})" if row else ""
        who = f" by backend pid {info.active_pid}{detail}"
    return (
        f"slot {info.name!r} is active: it is being consumed{who}, so its position may move "
        f"during the incident; walrecover read a copy taken at {copied_at}, but a later run "
        "reads the slot from wherever its consumer has moved it (and a resume is refused if "
        "that is past what was applied): keep the history with your own copy now, "
        f"SELECT pg_copy_logical_replication_slot('{info.name}', '{info.name}_incident'), and "
        "read that one"
    )


class SlotSource:
    """Raw messages of a user's slot, read through a copy that is dropped afterwards.

    Use as a context manager; :meth:`messages` yields :class:`RawMessage` in stream order.
    """

    def __init__(
        self,
        dsn: str | None,
        slot: str,
        *,
        tables: Iterable[TableName] = (),
        options: Mapping[str, str] | None = None,
        via_plugin: str | None = None,
        page_size: int = 20_000,
        fetch_size: int = 5_000,
        progress: ProgressCallback | None = None,
        stop_lsn: Lsn | None = None,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.tables = tuple(tables)
        self.user_options = dict(options or {})
        self.via_plugin = via_plugin
        self.page_size = page_size
        self.fetch_size = fetch_size
        self.progress = progress
        #: A page never reaches past this LSN (the stop point), so no page holds transactions
        #: on both sides of it.
        self.stop_lsn = stop_lsn
        #: Further LSNs no page reaches past (a baseline's point: the transactions on each
        #: side of it are then in different pages, whose notices tell them apart).
        self.split_lsns: tuple[Lsn, ...] = ()
        self.info: SlotInfo | None = None
        self.copy_name: str | None = None
        self.start_lsn: Lsn | None = None
        self.end_lsn: Lsn | None = None
        self.swept: list[str] = []
        #: The source server's ``server_version_num`` and its database's encoding.
        self.server_version: int | None = None
        self.server_encoding: str | None = None
        #: What the user should know about this read (active slot, options not used, ...).
        self.warnings: list[str] = []
        #: Why a table rebuilt from this read may differ from the truth (publication limits).
        self.unproven: list[str] = []
        #: Every notice and warning the server sent while the copy was read.
        self.notices = NoticeLog()
        self._conn: Any = None

    @property
    def plugin(self) -> str:
        """The plugin the copy is read through: ``--via-plugin``, else the slot's own."""
        assert self.info is not None, "open the source first"
        return self.via_plugin or self.info.plugin

    @property
    def options(self) -> list[tuple[str, str]]:
        """The options sent to the server (walrecover's defaults, then the user's), without
        streaming, which a read in pages cannot use (:func:`without_streaming`)."""
        options, _ = without_streaming(
            self.plugin, plugin_options(self.plugin, self.tables, self.user_options)
        )
        return options

    def __enter__(self) -> SlotSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Check the slot and the server, sweep orphans, and make the copy."""
        conn = connect(self.dsn, autocommit=True, role="source")
        self._conn = conn
        conn.add_notice_handler(self.notices.handler)
        try:
            check_server(conn)
            self.server_version = int(conn.info.server_version)
            self.server_encoding = conn.info.parameter_status("server_encoding")
            info = read_slot(conn, self.slot)
            (database,) = one(conn, "SELECT current_database()::text")
            if info.database != database:
                raise SlotError(
                    f"slot {self.slot!r} belongs to database {info.database!r}, not "
                    f"{database!r}: connect with dbname={info.database}",
                    slot=self.slot,
                )
            plugin = self.via_plugin or info.plugin
            if plugin not in PLUGINS:
                raise SlotError(
                    f"slot {self.slot!r} uses output plugin {plugin!r}, which walrecover cannot"
                    f" decode: read it through another plugin with --via-plugin "
                    f"({', '.join(PLUGINS)})",
                    slot=self.slot,
                    plugin=plugin,
                )
            self.info = info
            if plugin == "pgoutput" and "publication_names" not in self.user_options:
                names = [r[0] for r in conn.execute("SELECT pubname::text FROM pg_publication")]
                if names:
                    self.user_options["publication_names"] = ",".join(names)
            # Refuse bad options early.
            _, streaming = without_streaming(
                plugin, plugin_options(plugin, self.tables, self.user_options)
            )
            if streaming is not None:
                self.warnings.append(
                    f"-o {streaming} is not used: walrecover reads the slot in pages, each a new "
                    "decoding session, and the server would stream a transaction still open at a "
                    "page's end again from its start; without streaming it sends each "
                    "transaction whole at its commit, which decodes to the same changes"
                )
            if plugin == "pgoutput":
                unproven, warnings = check_publications(
                    conn,
                    _publication_names(self.user_options),
                    self.tables,
                    self.server_version,
                )
                self.unproven.extend(unproven)
                self.warnings.extend(warnings)
            check_replication_privilege(conn, self.slot)
            self.swept = sweep_copies(conn)
            (pid,) = one(conn, "SELECT pg_backend_pid()")
            name = f"{COPY_PREFIX}{pid}_{secrets.token_hex(4)}"
            try:
                conn.execute(
                    "SELECT pg_copy_logical_replication_slot(%s, %s, false, %s)",
                    (self.slot, name, plugin),
                )
            except psycopg.errors.UndefinedFile as exc:
                raise ConfigurationError(
                    f"output plugin {plugin!r} of slot {self.slot!r} is not installed on the "
                    f"source server ({exc.diag.message_primary}): install it (Debian: "
                    f"postgresql-<major>-{plugin}) or read the slot through another plugin "
                    "with --via-plugin",
                    slot=self.slot,
                ) from None
            except psycopg.errors.InsufficientPrivilege as exc:
                raise PrivilegeError(
                    f"cannot copy slot {self.slot!r}: {exc.diag.message_primary}; grant the "
                    "REPLICATION attribute to this role",
                    slot=self.slot,
                ) from None
            except psycopg.Error as exc:
                raise SlotError(
                    f"cannot copy slot {self.slot!r}: {exc.diag.message_primary or exc}; "
                    "check max_replication_slots and that the slot is not invalidated",
                    slot=self.slot,
                ) from None
            self.copy_name = name
            # The copy's own position: the user's slot may have moved since it was read.
            copied = read_slot(conn, name)
            self.start_lsn = copied.confirmed_flush_lsn or copied.restart_lsn
            if info.active:
                self.warnings.append(_active_warning(conn, info, self.start_lsn))
            self.end_lsn = wait_for_flush(conn)
            conn.autocommit = False
        except BaseException:
            self.close()
            raise

    def messages(self) -> Iterator[RawMessage]:
        """Every message up to the WAL position seen at open, page by page.

        With a stop LSN inside the stream, pages first run up to it and then on to the end, so
        the transactions of a page lie all before the stop point or all after it (the server
        ends a call after the WAL record that reaches its ``upto_lsn``: a commit that starts
        before the stop point is in, one that starts at it is not). Each page's notices are
        kept in :attr:`notices`.
        """
        conn, copy = self._conn, self.copy_name
        if conn is None or copy is None:
            raise WalrecoverError("the slot source is not open: use it in a with block")
        flat = [item for pair in self.options for item in pair]
        start = int(self.start_lsn or 0)
        total = max(int(self.end_lsn or 0) - start, 0)
        function = (
            "pg_logical_slot_get_binary_changes"
            if is_binary(self.plugin)
            else "pg_logical_slot_get_changes"
        )
        cuts = {*self.split_lsns, *([self.stop_lsn] if self.stop_lsn is not None else [])}
        inside = sorted(c for c in cuts if start < c < int(self.end_lsn or 0))
        bounds: list[Lsn | None] = [*inside, self.end_lsn]
        done = 0
        last: Lsn | None = self.start_lsn
        for upto in bounds:
            query = sql.SQL(
                "SELECT (lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint, data"
                " FROM {}("
                "{}, {}::pg_lsn, {}, VARIADIC {}::text[])"
            ).format(
                sql.Identifier(function),
                sql.Literal(copy),
                sql.Literal(str(upto)),
                self.page_size,
                sql.Literal(flat),
            )
            rows = self.page_size
            while rows >= self.page_size:
                rows = 0
                self.notices.start_page(last)
                try:
                    with conn.transaction(), conn.cursor(name="walrecover_page") as cur:
                        cur.itersize = self.fetch_size
                        cur.execute(query)
                        for position, xid, data in cur:
                            rows += 1
                            lsn = last = Lsn(position)
                            if self.progress is not None and rows % 2000 == 0:
                                done = min(max(int(lsn) - start, done), total)
                                self.progress("read", done, total)
                            yield RawMessage(data, lsn, xid)
                    self.notices.end_page(last)
                except psycopg.errors.UndefinedFile as exc:
                    raise ConfigurationError(
                        f"output plugin {self.plugin!r} is not installed on the source server "
                        f"({exc.diag.message_primary}): install it (Debian: "
                        f"postgresql-<major>-{self.plugin})",
                        slot=self.slot,
                    ) from None
                except psycopg.OperationalError as exc:
                    raise SlotError(
                        f"lost the source connection while reading slot {self.slot!r} "
                        f"({first_line(exc)}): "
                        "rerun the command to resume",
                        slot=self.slot,
                    ) from None
                except psycopg.Error as exc:
                    primary = exc.diag.message_primary or str(exc)
                    if exc.sqlstate == "22021":  # invalid byte sequence for encoding "UTF8"
                        raise SlotError(
                            f"slot {self.slot!r} holds text that is not UTF-8 in a change after "
                            f"LSN {last} ({primary}): {not_utf8(conn)}, so "
                            "those rows cannot be carried"
                            + (
                                "; if they belong to another table, read the slot with "
                                "--via-plugin wal2json, which leaves other tables out"
                                if self.plugin != "wal2json"
                                else ""
                            ),
                            slot=self.slot,
                        ) from None
                    if "publication" in primary and "does not exist" in primary:
                        others = ", ".join(p for p in PLUGINS if p != "pgoutput")
                        raise SlotError(
                            f"reading slot {self.slot!r} failed: {primary}. pgoutput looks "
                            "publications up as they were when each change was made, so one "
                            "created after the changes cannot serve: name an older publication "
                            "(-o publication_names=...), or read the slot through another plugin "
                            f"with --via-plugin ({others}); the slot itself is left untouched",
                            slot=self.slot,
                        ) from None
                    if "could not access file" in primary or "could not load library" in primary:
                        raise ConfigurationError(
                            f"output plugin {self.plugin!r} is not installed on the source server "
                            f"({primary}): install it (Debian: postgresql-<major>-{self.plugin}) "
                            "or choose another with --via-plugin",
                            slot=self.slot,
                        ) from None
                    raise SlotError(
                        f"reading slot {self.slot!r} failed: {primary}", slot=self.slot
                    ) from None
        if self.progress is not None:
            self.progress("read", total, total)

    def widen_xid(self, xid: int) -> int | None:
        """The xid8 (epoch and xid) the server means by the 32-bit ``xid`` now; None if unknown.

        Widened with the current epoch from the snapshot (so no xid is assigned): the xid
        nearest before the next one to be assigned.
        """
        conn = self._conn
        if conn is None:
            return None
        try:
            with conn.transaction():
                (xmax,) = conn.execute(
                    "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
                ).fetchone()
        except psycopg.Error:
            return None
        full = (xmax >> 32 << 32) | (xid & 0xFFFFFFFF)
        if full >= xmax:
            full -= 1 << 32
        return full if full >= 0 else None

    def xid_status(self, xid: int) -> str | None:
        """``committed``, ``aborted`` or ``in progress``; None if unknown.

        ``xid`` is an xid8 when it is above 32 bits, else widened with :meth:`widen_xid`.
        """
        conn = self._conn
        full = xid if xid > 0xFFFFFFFF else self.widen_xid(xid)
        if conn is None or full is None:
            return None
        try:
            with conn.transaction():
                (status,) = conn.execute(
                    "SELECT pg_xact_status(%s::text::xid8)", (str(full),)
                ).fetchone()
        except psycopg.Error:
            return None  # too old for the commit log, in the future, or an older server
        return str(status) if status is not None else None

    def close(self) -> None:
        """Drop the copy (on a fresh connection if this one died) and disconnect."""
        conn, self._conn = self._conn, None
        name, self.copy_name = self.copy_name, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
                conn.autocommit = True
        if name is not None:
            try:
                if conn is None or conn.closed or conn.broken:
                    raise psycopg.OperationalError("connection gone")
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                # A copy of a run killed just before this one may only now be orphaned.
                self.swept.extend(sweep_copies(conn))
            except psycopg.Error:
                with (
                    contextlib.suppress(WalrecoverError, psycopg.Error),
                    connect(self.dsn, autocommit=True, role="source") as other,
                ):
                    other.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                        " WHERE slot_name = %s AND NOT active",
                        (name,),
                    )
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def describe(self) -> str:
        """The source for messages and audit metadata, without any password."""
        return f"slot {self.slot} on {safe_dsn(self.dsn)}"


@dataclass(frozen=True, slots=True)
class CutMessage:
    """The unfinished last line of a text capture: where it starts and how long it is."""

    offset: int
    length: int


def _cut_message(path: Path, size: int, chunk: int = 1 << 20) -> CutMessage | None:
    """The text capture's last line if it has no newline, found from the end in bounded reads."""
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        end = size
        while end > 0:
            start = max(0, end - chunk)
            handle.seek(start)
            block = handle.read(end - start)
            found = block.rfind(b"\n")
            if found != -1:
                return CutMessage(start + found + 1, size - (start + found + 1))
            end = start
    return CutMessage(0, size)


#: How test_decoding begins a two-phase row (a value that happens to begin a line so only costs
#: holding each transaction until its end).
_PREPARE = b"PREPARE TRANSACTION '"


def _holds_line(path: Path, start: bytes, chunk: int = 1 << 20) -> bool:
    """Whether a line of the file begins with ``start``, read in bounded blocks."""
    needle = b"\n" + start
    with open(path, "rb") as handle:
        tail = b"\n"  # the file's start is a line's start
        while block := handle.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False


class CaptureSource:
    """Raw messages of a file that ``pg_recvlogical --start -f PATH`` wrote.

    pg_recvlogical writes each message followed by a newline, with no LSN, xid or length. Text
    plugins are read line by line (their decoders join the lines of a message that itself holds
    newlines); pgoutput's binary messages are cut by their structure
    (:func:`walrecover.stream.decoders.pgoutput.split_capture`), from an ``mmap`` of the file, so a
    large capture is never read into memory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        plugin: str,
        *,
        options: Mapping[str, str] | None = None,
        progress: ProgressCallback | None = None,
        settings: CaptureSettings | None = None,
    ) -> None:
        self.path = Path(path)
        #: The output settings pg_recvlogical's session printed the values with.
        self.settings = settings if settings is not None else CaptureSettings()
        if plugin not in PLUGINS:
            raise DecodeError(
                f"--plugin {plugin!r} is not one walrecover reads ({', '.join(PLUGINS)})",
                plugin=plugin,
            )
        self._plugin = plugin
        self.user_options = dict(options or {})
        self.progress = progress
        self.start_lsn: Lsn | None = None
        self.end_lsn: Lsn | None = None
        self.swept: list[str] = []
        #: 1-based line (text plugins) or byte offset (pgoutput) of the last message read.
        self.position = 0
        #: The last message when pg_recvlogical was stopped before its newline (text: found at
        #: open from the file's end, never read; pgoutput: found when reached), else None.
        self.cut: CutMessage | None = None
        #: A test_decoding capture of a two-phase slot (it holds ``PREPARE TRANSACTION`` rows):
        #: its transactions are held until they commit or are prepared, then decided.
        self.two_phase = False

    @property
    def plugin(self) -> str:
        return self._plugin

    @property
    def options(self) -> list[tuple[str, str]]:
        """The options the capture was made with, as given (``-o NAME=VALUE``)."""
        return list(self.user_options.items())

    def __enter__(self) -> CaptureSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def open(self) -> None:
        """Check the file exists, is a file and is not empty."""
        if not self.path.exists():
            raise DecodeError(f"capture file {self.path} does not exist: check --from-file")
        if not self.path.is_file():
            raise DecodeError(f"capture file {self.path} is not a regular file")
        size = self.path.stat().st_size
        if size == 0:
            raise DecodeError(
                f"capture file {self.path} is empty: pg_recvlogical wrote nothing (was the slot "
                "already consumed, or --start not given?)"
            )
        if not is_binary(self.plugin):
            self.cut = _cut_message(self.path, size)
        if self.plugin == "test_decoding":
            self.two_phase = _holds_line(self.path, _PREPARE)

    def decoded(self, decoder: Decoder) -> Iterator[Event]:
        """``decoder``'s events for the whole file; a file that ends inside a transaction
        (pg_recvlogical stopped with ``--endpos`` or killed while writing it) or inside a
        message raises :class:`StreamCutShort` after the last committed transaction, with a
        message that says where (damage before the end is a :class:`DecodeError` as always)."""
        try:
            yield from decode_all(decoder, self.messages())
        except StreamCutShort as exc:
            raise self._cut_short(exc) from None
        if self.cut is not None:
            raise self._cut_short(None)

    def _cut_short(self, exc: StreamCutShort | None) -> StreamCutShort:
        """Where and inside what the file ends, as one warning."""
        binary = is_binary(self.plugin)
        unit = "byte" if binary else "line"
        what = exc.facts.get("what") if exc is not None else None
        begun = exc.facts.get("begun") if exc is not None else None
        xid = exc.facts.get("xid") if exc is not None else None
        if self.cut is not None:
            where = self.cut.offset if binary else self.position
            detail = (
                f"; its last {self.cut.length} bytes, from {unit} {where}, are a message "
                "pg_recvlogical was stopped in the middle of writing"
            )
            what = what or "a transaction whose first message is cut"
        else:
            where = self.path.stat().st_size if binary else self.position
            detail = ""
        inside = f"{what} (begun {begun})" if begun else str(what)
        return StreamCutShort(
            f"{self.path} ends inside {inside} at {unit} {where}{detail}: pg_recvlogical was "
            "stopped (--endpos, or killed) before it was written whole, so it was left out; "
            "every transaction that committed in the file was read",
            xid=xid,
            what=what,
            begun=begun,
            line=None if binary else where,
            offset=where if binary else None,
        )

    def messages(self) -> Iterator[RawMessage]:
        if is_binary(self.plugin):
            yield from self._binary()
        else:
            yield from self._lines()

    def _binary(self) -> Iterator[RawMessage]:
        version = int(self.user_options.get("proto_version", "1"))
        with (
            open(self.path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            total = len(data)
            try:
                for count, message in enumerate(pgoutput.split_capture(data, version)):  # type: ignore[arg-type]
                    self.position += len(message) + 1
                    if self.progress is not None and count % 2000 == 0:
                        self.progress("read", self.position, total)
                    yield RawMessage(message)
            except pgoutput.CaptureEndsMidMessage as exc:
                offset = int(exc.facts["offset"])
                self.cut = CutMessage(offset, total - offset)
        if self.progress is not None:
            self.progress("read", total, total)

    def _lines(self) -> Iterator[RawMessage]:
        """Complete lines, one message each; a cut last line is never read (see :attr:`cut`).

        Reading stops at the end of the last complete line found at open, so a line that has
        no end (a 2 GB message pg_recvlogical never finished) costs no memory, and a file still
        growing is read as it was when opened.
        """
        total = self.path.stat().st_size
        end = self.cut.offset if self.cut is not None else total
        done = 0
        number = 0
        with open(self.path, "rb") as handle:
            while done < end:
                raw = handle.readline()
                if not raw.endswith(b"\n"):  # the file shrank since it was opened
                    break
                number += 1
                self.position = number
                done += len(raw)
                try:
                    text = raw[:-1].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DecodeError(
                        f"{self.path}:{number}: byte {exc.start + 1} (0x{raw[exc.start]:02x}) is "
                        "not UTF-8: pg_recvlogical writes the database's bytes as they are, and "
                        "a SQL_ASCII database stores text in any encoding; walrecover reads "
                        "UTF-8 text only, so this capture cannot be carried (for pgoutput's "
                        "binary output give --plugin pgoutput)",
                    ) from None
                if self.progress is not None and number % 2000 == 0:
                    self.progress("read", done, total)
                yield RawMessage(text)
        if self.cut is not None:
            self.position = number + 1  # the cut line: :meth:`decoded` says it was left out
        if self.progress is not None:
            self.progress("read", total, total)

    def describe(self) -> str:
        """The capture for messages and the progress row: its path, plugin and the settings
        stated for it (a rerun with other settings is another source, not a resume)."""
        stated = self.settings.describe()
        return f"capture {self.path} ({self.plugin}{', ' + stated if stated else ''})"

    def locate(self, exc: DecodeError) -> None:
        """Prefix a decoder's error with the file and line (or byte) it stopped at."""
        if str(self.path) not in exc.message:
            exc.message = f"{self.where()}: {exc.message}"
            exc.args = (exc.message,)

    def where(self) -> str:
        """Where reading stopped, for error messages."""
        unit = "byte" if is_binary(self.plugin) else "line"
        return f"{self.path} ({unit} {self.position})"
