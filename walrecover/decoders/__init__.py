"""Decoders turn one output plugin's raw messages into the canonical model, and nothing else.

A decoder is a small stateful object (it remembers relations and the open transaction) with one
method, :meth:`Decoder.decode`, that takes a :class:`RawMessage` and returns the events it
completes. Decoders never touch a database; they raise :class:`~walrecover.errors.DecodeError`
and nothing else on bad input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from ..errors import DecodeError
from ..model import Event, RawMessage
from . import wal2json

__all__ = ["Decoder", "RawMessage", "decode_all", "make_decoder", "plugin_options"]


class Decoder(Protocol):
    """What every plugin decoder provides."""

    #: The output plugin's name as ``pg_replication_slots.plugin`` spells it.
    plugin: str

    def decode(self, message: RawMessage) -> Sequence[Event]:
        """Decode one message; return the events it completes (often one, sometimes none)."""
        ...

    def finish(self) -> Sequence[Event]:
        """The stream ended: return what is left, or raise if a transaction is cut off."""
        ...


#: Plugin options each decoder needs from the server, in the order they are sent.
def plugin_options(plugin: str, tables: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The options walrecover passes to ``pg_logical_slot_get_changes`` for ``plugin``."""
    if plugin == "wal2json":
        return wal2json.server_options(tables)
    raise DecodeError(
        f"output plugin {plugin!r} is not supported yet: walrecover reads wal2json slots",
        plugin=plugin,
    )


def make_decoder(plugin: str, options: Mapping[str, str] | None = None) -> Decoder:
    """A fresh decoder for ``plugin`` with the options the stream was produced with."""
    if plugin == "wal2json":
        version = (options or {}).get("format-version", "2")
        if version != "2":
            raise DecodeError(
                f"wal2json format-version {version} is not supported yet: use format-version 2",
                plugin=plugin,
            )
        return wal2json.Wal2JsonV2Decoder()
    raise DecodeError(
        f"output plugin {plugin!r} is not supported yet: walrecover reads wal2json slots",
        plugin=plugin,
    )


def decode_all(decoder: Decoder, messages: Iterable[RawMessage]) -> Iterator[Event]:
    """Run ``decoder`` over ``messages`` and yield every event, checking the end of stream."""
    for message in messages:
        yield from decoder.decode(message)
    yield from decoder.finish()
