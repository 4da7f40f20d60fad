"""What every source of a plugin's stream provides: :class:`Source`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Protocol, Self

from ...errors import DecodeError
from ..lsn import Lsn
from ..model import Event

#: Called as ``progress(stage, done, total)``; the CLI draws it with tqdm.
ProgressCallback = Callable[[str, int, int | None], None]


class Source(Protocol):
    """A plugin's stream, read once, as canonical events: a slot (through a copy) or a capture.

    Built once by the caller, opened as a context manager; :meth:`events` reads the stream
    through a fresh decoder for the plugin and the options it was produced with.
    """

    #: Where the stream starts and ends, as far as the source knows (None for a capture).
    start_lsn: Lsn | None
    end_lsn: Lsn | None
    #: Copies of crashed runs dropped while reading (a slot source only).
    swept: list[str]
    #: The source server's ``server_version_num``; None when unknown (a capture).
    server_version: int | None
    #: What the user should know about this read (active slot, options not used, ...).
    warnings: list[str]
    #: Why a table rebuilt from this read may differ from the truth (publication limits).
    unproven: list[str]

    @property
    def plugin(self) -> str:
        """The output plugin the stream is read through."""
        ...

    @property
    def options(self) -> list[tuple[str, str]]:
        """The plugin options the stream was produced with."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def events(self) -> Iterator[Event]:
        """The stream's events, decoded; raises at the end if the stream is cut short."""
        ...

    def notes(self) -> list[str]:
        """What the decoder learnt while reading that a user should know."""
        ...

    def describe(self) -> str:
        """The source for messages and audit metadata, without any password."""
        ...

    def locate(self, exc: DecodeError) -> None:
        """Say in a decoder's error where the source stopped (a capture's file and line)."""
        ...

    def xid_status(self, xid: int) -> str | None:
        """``committed``, ``aborted`` or ``in progress`` on the source; None if unknown."""
        ...
