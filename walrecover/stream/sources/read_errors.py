"""What a failed read of a slot copy means, and what to do about it (pages and stream alike)."""

from __future__ import annotations

import psycopg

from ...db import Connection, not_utf8
from ...errors import ConfigurationError, SlotError, WalrecoverError, first_line
from ..decoders import PLUGINS
from ..lsn import Lsn


def read_error(
    exc: psycopg.Error, conn: Connection, slot: str, plugin: str, last: Lsn | None
) -> WalrecoverError:
    """What a failed read (a page or the stream) means, and what to do about it."""
    if isinstance(exc, psycopg.errors.UndefinedFile):
        return ConfigurationError(
            f"output plugin {plugin!r} is not installed on the source server "
            f"({exc.diag.message_primary}): install it (Debian: "
            f"postgresql-<major>-{plugin})",
            slot=slot,
        )
    if isinstance(exc, psycopg.OperationalError):
        return SlotError(
            f"lost the source connection while reading slot {slot!r} "
            f"({first_line(exc)}): "
            "rerun the command to resume",
            slot=slot,
        )
    primary = exc.diag.message_primary or str(exc)
    if exc.sqlstate == "22021":  # invalid byte sequence for encoding "UTF8"
        return SlotError(
            f"slot {slot!r} holds text that is not UTF-8 in a change after "
            f"LSN {last} ({primary}): {not_utf8(conn)}, so "
            "those rows cannot be carried"
            + (
                "; if they belong to another table, read the slot with "
                "--via-plugin wal2json, which leaves other tables out"
                if plugin != "wal2json"
                else ""
            ),
            slot=slot,
        )
    if "publication" in primary and "does not exist" in primary:
        others = ", ".join(p for p in PLUGINS if p != "pgoutput")
        return SlotError(
            f"reading slot {slot!r} failed: {primary}. pgoutput looks "
            "publications up as they were when each change was made, so one "
            "created after the changes cannot serve: name an older publication "
            "(-o publication_names=...), or read the slot through another plugin "
            f"with --via-plugin ({others}); the slot itself is left untouched",
            slot=slot,
        )
    if "could not access file" in primary or "could not load library" in primary:
        return ConfigurationError(
            f"output plugin {plugin!r} is not installed on the source server "
            f"({primary}): install it (Debian: postgresql-<major>-{plugin}) "
            "or choose another with --via-plugin",
            slot=slot,
        )
    return SlotError(f"reading slot {slot!r} failed: {primary}", slot=slot)
