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

from .db import connect, safe_dsn
from .decoders import PLUGINS, is_binary, pgoutput, plugin_options
from .errors import (
    ConfigurationError,
    DecodeError,
    PrivilegeError,
    SlotError,
    WalrecoverError,
    first_line,
)
from .lsn import Lsn
from .model import RawMessage, TableName

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


def read_slot(conn: Any, name: str) -> SlotInfo:
    """The slot ``name``; raise :class:`SlotError` naming the slots that exist if it does not."""
    row = conn.execute(
        "SELECT slot_name::text, plugin::text, slot_type, database::text, restart_lsn::text,"
        " confirmed_flush_lsn::text, active, temporary"
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
    slot_name, plugin, slot_type, database, restart, confirmed, active, temporary = row
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
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.tables = tuple(tables)
        self.user_options = dict(options or {})
        self.via_plugin = via_plugin
        self.page_size = page_size
        self.fetch_size = fetch_size
        self.progress = progress
        self.info: SlotInfo | None = None
        self.copy_name: str | None = None
        self.start_lsn: Lsn | None = None
        self.end_lsn: Lsn | None = None
        self.swept: list[str] = []
        self._conn: Any = None

    @property
    def plugin(self) -> str:
        """The plugin the copy is read through: ``--via-plugin``, else the slot's own."""
        assert self.info is not None, "open the source first"
        return self.via_plugin or self.info.plugin

    @property
    def options(self) -> list[tuple[str, str]]:
        """The options sent to the server (walrecover's defaults, then the user's)."""
        return plugin_options(self.plugin, self.tables, self.user_options)

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
        try:
            check_server(conn)
            info = read_slot(conn, self.slot)
            (database,) = conn.execute("SELECT current_database()::text").fetchone()
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
            plugin_options(plugin, self.tables, self.user_options)  # refuse bad options early
            check_replication_privilege(conn, self.slot)
            self.swept = sweep_copies(conn)
            (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
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
            self.start_lsn = info.confirmed_flush_lsn or info.restart_lsn
            self.end_lsn = wait_for_flush(conn)
            conn.autocommit = False
        except BaseException:
            self.close()
            raise

    def messages(self) -> Iterator[RawMessage]:
        """Every message up to the WAL position seen at open, page by page."""
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
        query = sql.SQL(
            "SELECT (lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint, data"
            " FROM {}("
            "{}, {}::pg_lsn, {}, VARIADIC {}::text[])"
        ).format(
            sql.Identifier(function),
            sql.Literal(copy),
            sql.Literal(str(self.end_lsn)),
            self.page_size,
            sql.Literal(flat),
        )
        done = 0
        while True:
            rows = 0
            try:
                with conn.transaction(), conn.cursor(name="walrecover_page") as cur:
                    cur.itersize = self.fetch_size
                    cur.execute(query)
                    for position, xid, data in cur:
                        rows += 1
                        lsn = Lsn(position)
                        if self.progress is not None and rows % 2000 == 0:
                            done = min(max(int(lsn) - start, done), total)
                            self.progress("read", done, total)
                        yield RawMessage(data, lsn, xid)
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
            if rows < self.page_size:
                if self.progress is not None:
                    self.progress("read", total, total)
                return

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


class CaptureSource:
    """Raw messages of a file that ``pg_recvlogical --start -f PATH`` wrote.

    pg_recvlogical writes each message followed by a newline, with no LSN, xid or length. Text
    plugins are read line by line (their decoders join the lines of a message that itself holds
    newlines); pgoutput's binary messages are cut by their structure
    (:func:`walrecover.decoders.pgoutput.split_capture`), from an ``mmap`` of the file, so a
    large capture is never read into memory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        plugin: str,
        *,
        options: Mapping[str, str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.path = Path(path)
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
        if self.path.stat().st_size == 0:
            raise DecodeError(
                f"capture file {self.path} is empty: pg_recvlogical wrote nothing (was the slot "
                "already consumed, or --start not given?)"
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
            for count, message in enumerate(pgoutput.split_capture(data, version)):  # type: ignore[arg-type]
                self.position += len(message) + 1
                if self.progress is not None and count % 2000 == 0:
                    self.progress("read", self.position, total)
                yield RawMessage(message)
        if self.progress is not None:
            self.progress("read", total, total)

    def _lines(self) -> Iterator[RawMessage]:
        total = self.path.stat().st_size
        done = 0
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                self.position = number
                done += len(raw)
                if not raw.endswith(b"\n"):
                    raise DecodeError(
                        f"{self.path}:{number}: the last message has no final newline: the "
                        "capture is truncated (pg_recvlogical was stopped mid-write?)",
                    )
                try:
                    text = raw[:-1].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DecodeError(
                        f"{self.path}:{number}: byte {exc.start + 1} is not UTF-8: this is not "
                        f"{self.plugin} text output (for pgoutput give --plugin pgoutput)",
                    ) from None
                if self.progress is not None and number % 2000 == 0:
                    self.progress("read", done, total)
                yield RawMessage(text)
        if self.progress is not None:
            self.progress("read", total, total)

    def describe(self) -> str:
        return f"capture {self.path} ({self.plugin})"

    def locate(self, exc: DecodeError) -> None:
        """Prefix a decoder's error with the file and line (or byte) it stopped at."""
        if str(self.path) not in exc.message:
            exc.message = f"{self.where()}: {exc.message}"
            exc.args = (exc.message,)

    def where(self) -> str:
        """Where reading stopped, for error messages."""
        unit = "byte" if is_binary(self.plugin) else "line"
        return f"{self.path} ({unit} {self.position})"
