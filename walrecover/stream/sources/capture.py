"""Raw messages of a ``pg_recvlogical -f`` capture file, cut into messages as the plugin wrote
them, read in bounded memory, with where and inside what a cut-short file ends."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ...errors import DecodeError, StreamCutShort
from ..decoders import (
    PLUGINS,
    Decoder,
    decode_all,
    decoder_notes,
    is_binary,
    make_decoder,
    pgoutput,
)
from ..lsn import Lsn
from ..model import Event, RawMessage, TableName
from ..settings import CaptureSettings
from .base import ProgressCallback


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
        tables: Iterable[TableName] = (),
    ) -> None:
        self.path = Path(path)
        #: The tables the reader wants (empty: every table); other tables' rows may be left
        #: undecoded.
        self.tables = tuple(tables)
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
        #: A capture does not say which server wrote it, nor what it could not carry.
        self.server_version: int | None = None
        self.warnings: list[str] = []
        self.unproven: list[str] = []
        #: The decoder of the last :meth:`events` (its notes are :meth:`notes`).
        self.decoder: Decoder | None = None

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

    def events(self) -> Iterator[Event]:
        """The file's events through a fresh decoder for its plugin and options (see
        :meth:`decoded`)."""
        self.decoder = make_decoder(
            self.plugin, dict(self.options), two_phase=self.two_phase, tables=self.tables
        )
        return self.decoded(self.decoder)

    def notes(self) -> list[str]:
        """What the decoder of :meth:`events` learnt that a user should know."""
        return decoder_notes(self.decoder) if self.decoder is not None else []

    def xid_status(self, xid: int) -> str | None:
        """Unknown: a capture is read without its server."""
        return None

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
