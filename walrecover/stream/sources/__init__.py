"""Sources yield a plugin's stream as events; a slot source never moves the user's slot.

- :class:`~.slot.SlotSource` reads a user's slot through a copy it drops afterwards;
- :class:`~.capture.CaptureSource` reads a file ``pg_recvlogical -f`` wrote;
- :class:`~.base.Source` is what both provide: build one, open it, read :meth:`Source.events`.

The catalog checks a slot read needs are in :mod:`.catalog`, the publications a pgoutput read
depends on in :mod:`.publications`.
"""

from __future__ import annotations

from .base import ProgressCallback, Source
from .capture import CaptureSource, CutMessage
from .catalog import (
    SlotInfo,
    check_replication_privilege,
    check_server,
    read_slot,
    sweep_copies,
    wait_for_flush,
)
from .publications import check_publications
from .slot import COPY_PREFIX, SlotSource

__all__ = [
    "COPY_PREFIX",
    "CaptureSource",
    "CutMessage",
    "ProgressCallback",
    "SlotInfo",
    "SlotSource",
    "Source",
    "check_publications",
    "check_replication_privilege",
    "check_server",
    "read_slot",
    "sweep_copies",
    "wait_for_flush",
]
