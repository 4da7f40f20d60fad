"""Sources yield a plugin's raw messages; a slot source never moves the user's slot.

:class:`SlotSource` copies the user's slot into a permanent ``walrecover_<pid>_<token>`` slot with
``pg_copy_logical_replication_slot`` and consumes the *copy*: streamed by a walsender on a
``replication=database`` connection (:mod:`.replication`, the default: half the server's CPU of
SQL pages, and the server decodes while the client applies), or in SQL pages with
``pg_logical_slot_get_changes`` (:mod:`.pages`) where a replication connection is refused
(``pg_hba.conf`` has no ``replication`` line) or ``read="pages"`` asks for it. Both yield the
same messages. The copy is permanent because a temporary slot vanishes on any error in its
session; it is dropped when done, and a copy left by a crashed run (its backend pid, part of its
name, no longer alive) is swept at the next start.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from ...db import Connection, connect, one, safe_dsn
from ...errors import (
    ConfigurationError,
    DecodeError,
    PrivilegeError,
    SlotError,
    WalrecoverError,
)
from ..decoders import (
    PLUGINS,
    Decoder,
    decode_all,
    decoder_notes,
    is_binary,
    make_decoder,
    plugin_options,
    without_streaming,
)
from ..lsn import Lsn
from ..model import Event, RawMessage, TableName
from ..notices import NoticeLog
from .base import ProgressCallback
from .catalog import (
    SlotInfo,
    active_warning,
    check_replication_privilege,
    check_server,
    read_slot,
    sweep_copies,
    wait_for_flush,
    wait_released,
    widen_xid,
    xid_status,
)
from .pages import read_pages
from .publications import check_publications, publication_names
from .read_errors import read_error
from .reader_process import ProcessStream, use_process
from .replication import ReplicationStream, streamable

COPY_PREFIX = "walrecover_"
#: How the copy is read: streamed through a replication connection, or in SQL pages.
READ_MODES = ("stream", "pages")


class SlotSource:
    """Raw messages of a user's slot, read through a copy that is dropped afterwards.

    Use as a context manager; :meth:`messages` yields :class:`RawMessage` in stream order.
    ``read``: ``stream`` (the default; falls back to pages when the server refuses a
    replication connection or the options cannot be streamed) or ``pages``.
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
        read: str = "stream",
        thin_others: bool = False,
    ) -> None:
        if read not in READ_MODES:
            raise ValueError(f"read must be one of {READ_MODES}, not {read!r}")
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
        self._conn: Connection | None = None
        #: How the copy is asked to be read, and how it is read (known once open).
        self.read = read
        self.reading: str | None = None
        #: Why a stream was asked for but the copy is read in pages (None: it was not).
        self.stream_refused: str | None = None
        self._replication: Connection | None = None
        self._process: ProcessStream | None = None
        self._streamed = False
        #: Only the first row change of another table in each transaction is wanted (replay's
        #: need; see :mod:`..decoders.pgoutput.others`): a pgoutput read in a child process
        #: drops the rest there. (In one process the filter costs what it saves: measured.)
        self.thin_others = thin_others
        self._block_size = 8192
        #: The decoder of the last :meth:`events` (its notes are :meth:`notes`).
        self.decoder: Decoder | None = None

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
            plugin = self._check_slot(conn, info)
            self._check_options(conn, plugin)
            check_replication_privilege(conn, self.slot)
            self.swept = sweep_copies(conn)
            self.copy_name = self._copy(conn, plugin)
            # The copy's own position: the user's slot may have moved since it was read.
            copied = read_slot(conn, self.copy_name)
            self.start_lsn = copied.confirmed_flush_lsn or copied.restart_lsn
            if info.active:
                self.warnings.append(active_warning(conn, info, self.start_lsn))
            self.end_lsn = wait_for_flush(conn)
            self._open_stream(conn, plugin)
            conn.autocommit = False
        except BaseException:
            self.close()
            raise

    def _open_stream(self, conn: Connection, plugin: str) -> None:
        """Open the replication connection the copy is streamed on; read in pages if the
        server refuses it or the read cannot be streamed exactly."""
        self.reading = "pages"
        if self.read != "stream":
            return
        if not streamable(plugin, self.options):
            self.stream_refused = f"{plugin} with these options is read in pages"
            return
        if not is_binary(plugin) and self.server_encoding != "UTF8":
            self.stream_refused = f"the database encoding is {self.server_encoding}"
            return
        (block,) = one(conn, "SELECT current_setting('wal_block_size')::int")
        self._block_size = int(block)
        try:
            self._replication = self._connect_replication()
        except WalrecoverError as exc:
            self.stream_refused = str(exc)
            return
        self.reading = "stream"

    def _connect_replication(self) -> Connection:
        return connect(
            make_conninfo(self.dsn or "", replication="database"), autocommit=True, role="source"
        )

    def _check_slot(self, conn: Connection, info: SlotInfo) -> str:
        """Refuse a slot of another database or a plugin walrecover cannot decode; the plugin
        the copy is read through."""
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
        return plugin

    def _check_options(self, conn: Connection, plugin: str) -> None:
        """Refuse bad options early; say what streaming and the publications mean for the read."""
        if plugin == "pgoutput" and "publication_names" not in self.user_options:
            names = [r[0] for r in conn.execute("SELECT pubname::text FROM pg_publication")]
            if names:
                self.user_options["publication_names"] = ",".join(names)
        _, streaming = without_streaming(
            plugin, plugin_options(plugin, self.tables, self.user_options)
        )
        if streaming is not None:
            self.warnings.append(
                f"-o {streaming} is not used: walrecover reads each transaction whole, once "
                "its commit says on which side of the read's end it falls (and a read in pages "
                "would stream a transaction open at a page's end again from its start); "
                "without streaming the server sends each transaction whole at its commit, "
                "which decodes to the same changes"
            )
        if plugin == "pgoutput":
            unproven, warnings = check_publications(
                conn, publication_names(self.user_options), self.tables, self.server_version
            )
            self.unproven.extend(unproven)
            self.warnings.extend(warnings)

    def _copy(self, conn: Connection, plugin: str) -> str:
        """Copy the user's slot into ``walrecover_<pid>_<token>``, read through ``plugin``."""
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
        return name

    def messages(self) -> Iterator[RawMessage]:
        """Every message up to the WAL position seen at open: streamed through the replication
        connection when it could be opened, else read in SQL pages (:mod:`.pages`)."""
        conn, copy = self._conn, self.copy_name
        if conn is None or copy is None:
            raise WalrecoverError("the slot source is not open: use it in a with block")
        if self._replication is None:
            yield from read_pages(self, conn, copy)
            return
        stream = self._stream(self._replication, copy)
        last: Lsn | None = self.start_lsn
        reading = stream.messages()
        self.notices.complete = lambda: self._settle(reading, conn)
        try:
            for message in reading:
                last = message.lsn
                yield message
        except psycopg.Error as exc:
            raise self.read_error(exc, conn, last) from None
        except UnicodeDecodeError as exc:
            raise SlotError(
                f"slot {self.slot!r} holds text that is not UTF-8 in a change after LSN "
                f"{last} ({exc.reason}): those rows cannot be carried",
                slot=self.slot,
            ) from None

    def _wanted(self) -> list[tuple[str, str]] | None:
        """The tables whose row changes all matter, if the others' can be thinned (in a child
        process)."""
        if not self.thin_others or self.plugin != "pgoutput" or not self.tables:
            return None
        return [(t.schema, t.name) for t in self.tables]

    def _stream(self, replication: Connection, copy: str) -> ReplicationStream | ProcessStream:
        """The stream of the copy: in a child process for a long read (:mod:`.reader_process`),
        else on the replication connection opened with the source."""
        arguments: dict[str, Any] = {
            "plugin": self.plugin,
            "options": self.options,
            "start": self.start_lsn or Lsn(0),
            "end": self.end_lsn or Lsn(0),
            "notices": self.notices,
            "binary": is_binary(self.plugin),
            "block_size": self._block_size,
            "cuts": [*self.split_lsns, *([self.stop_lsn] if self.stop_lsn is not None else [])],
            "page_size": self.page_size,
            "progress": self.progress,
        }
        if use_process(self.start_lsn, self.end_lsn):
            # The child opens its own walsender: this one, which proved that the server
            # accepts a replication connection, is let go (closed, not forgotten, so that
            # close() waits for the copy's release).
            with contextlib.suppress(psycopg.Error, OSError):
                replication.close()
            self._process = ProcessStream(self.dsn or "", copy, thin=self._wanted(), **arguments)
            return self._process
        if self._streamed:
            # A walsender serves one logical START_REPLICATION: a second read needs a new one.
            with contextlib.suppress(psycopg.Error):
                replication.close()
            self._replication = replication = self._connect_replication()
        self._streamed = True
        return ReplicationStream(replication, copy, **arguments)

    def _settle(self, reading: Iterator[RawMessage], conn: Connection) -> None:
        """Read the stream on to the end of the current page of notices (its messages are not
        wanted: the reader stopped early), so the page's notices are complete."""
        page = self.notices.current.number
        last: Lsn | None = None
        try:
            for message in reading:
                last = message.lsn
                if self.notices.current.number != page:
                    break
        except psycopg.Error as exc:
            raise self.read_error(exc, conn, last) from None

    def read_error(self, exc: psycopg.Error, conn: Connection, last: Lsn | None) -> WalrecoverError:
        """What a failed read (a page or the stream) means, and what to do about it."""
        return read_error(exc, conn, self.slot, self.plugin, last)

    def events(self) -> Iterator[Event]:
        """:meth:`messages` decoded by a fresh decoder for the read's plugin and options (the
        decoder may leave the rows of tables other than :attr:`tables` undecoded)."""
        self.decoder = make_decoder(self.plugin, dict(self.options), tables=self.tables)
        return decode_all(self.decoder, self.messages())

    def notes(self) -> list[str]:
        """What the decoder of :meth:`events` learnt that a user should know."""
        return decoder_notes(self.decoder) if self.decoder is not None else []

    def locate(self, exc: DecodeError) -> None:
        """A slot's messages carry their LSN, which the decoder's errors already name."""

    def widen_xid(self, xid: int) -> int | None:
        """The xid8 (epoch and xid) the server means by the 32-bit ``xid`` now; None if unknown
        (see :func:`.catalog.widen_xid`)."""
        return widen_xid(self._conn, xid) if self._conn is not None else None

    def xid_status(self, xid: int) -> str | None:
        """``committed``, ``aborted`` or ``in progress``; None if unknown (see
        :func:`.catalog.xid_status`)."""
        return xid_status(self._conn, xid) if self._conn is not None else None

    def close(self) -> None:
        """Drop the copy (on a fresh connection if this one died) and disconnect."""
        conn, self._conn = self._conn, None
        name, self.copy_name = self.copy_name, None
        replication, self._replication = self._replication, None
        process, self._process = self._process, None
        if process is not None:
            process.close()
        if replication is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                replication.close()
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
                conn.autocommit = True
        if name is not None:
            try:
                if conn is None or conn.closed or conn.broken:
                    raise psycopg.OperationalError("connection gone")
                if replication is not None:
                    wait_released(conn, name)
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
