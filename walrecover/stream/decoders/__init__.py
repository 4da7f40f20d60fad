"""Decoders turn one output plugin's raw messages into the canonical model, and nothing else.

A decoder is a small stateful object (it remembers relations and the open transaction) with one
method, :meth:`Decoder.decode`, that takes a :class:`RawMessage` and returns the events it
completes. Decoders never touch a database; they raise :class:`~walrecover.errors.DecodeError`
and nothing else on bad input.

This module is the registry: which plugins exist, which options walrecover asks the server for,
and which decoder reads a stream produced with given options (``pg_recvlogical -o`` names).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from ...errors import DecodeError
from ..model import Event, RawMessage, TableName
from . import pgoutput, testdecoding, wal2json, wal2json_v1

__all__ = [
    "PLUGINS",
    "Decoder",
    "RawMessage",
    "column_limits",
    "decode_all",
    "decoder_notes",
    "is_binary",
    "make_decoder",
    "plugin_options",
    "warnings_for",
    "without_streaming",
]

#: The output plugins walrecover reads.
PLUGINS = ("wal2json", "pgoutput", "test_decoding")


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


def _check(plugin: str) -> None:
    if plugin not in PLUGINS:
        raise DecodeError(
            f"output plugin {plugin!r} is not supported: walrecover reads "
            f"{', '.join(PLUGINS)} (read the slot through one of them with --via-plugin)",
            plugin=plugin,
        )


def is_binary(plugin: str) -> bool:
    """True for plugins whose messages are bytes (read with the ``_binary_`` SQL functions)."""
    return plugin == "pgoutput"


def _wal2json_version(options: Mapping[str, str]) -> str:
    version = options.get("format-version", "2")
    if version not in ("1", "2"):
        raise DecodeError(f"wal2json format-version {version!r} does not exist: give 1 or 2")
    return version


def plugin_options(
    plugin: str, tables: Iterable[TableName | str] = (), user: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """The options walrecover passes to the server for ``plugin``, merged with the user's.

    ``tables`` (TableName, or ``schema.table`` text) let plugins that can filter do it on the
    server. The user's
    ``-o NAME=VALUE`` options win over walrecover's defaults.
    """
    _check(plugin)
    user = dict(user or {})
    if plugin == "wal2json":
        base = (
            wal2json_v1.server_options(tables)
            if _wal2json_version(user) == "1"
            else wal2json.server_options(tables)
        )
    elif plugin == "test_decoding":
        base = testdecoding.server_options(tables)
    else:
        publications = [p for p in user.pop("publication_names", "").split(",") if p.strip()]
        if not publications:
            raise DecodeError(
                "a pgoutput slot is read through a publication: give -o publication_names=NAME "
                "(a publication that existed before the changes), or --via-plugin test_decoding",
                plugin=plugin,
            )
        base = pgoutput.server_options(
            [p.strip() for p in publications], int(user.pop("proto_version", "1"))
        )
    merged = dict(base)
    merged.update(user)
    return list(merged.items())


#: The option that makes each plugin send a transaction in parts before it commits.
STREAMING_OPTIONS = {"pgoutput": "streaming", "test_decoding": "stream-changes"}

_OFF = ("off", "false", "0", "no", "f", "n")


def without_streaming(
    plugin: str, options: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], str | None]:
    """``options`` without the one that streams open transactions, and that option as
    ``NAME=VALUE`` if it asked for streaming (None otherwise).

    A slot is read in pages, one ``pg_logical_slot_get_changes`` call each, and every call is a
    new decoding session: a transaction still open at a page's end would be streamed again from
    its first part by the next page. Without streaming the server holds such a transaction
    (spilling it to disk past ``logical_decoding_work_mem``) and sends it whole at its commit,
    which decodes to the same changes.
    """
    name = STREAMING_OPTIONS.get(plugin)
    kept = [(k, v) for k, v in options if k != name]
    asked = [f"{k}={v}" for k, v in options if k == name and v.strip().lower() not in _OFF]
    return kept, (asked[0] if asked else None)


def column_limits(plugin: str, server_version: int | None) -> list[str]:
    """What kinds of column ``plugin`` cannot carry on a server of ``server_version``
    (``server_version_num``; None: unknown, a capture), for a table rebuilt from the stream."""
    if plugin != "pgoutput" or (server_version is not None and server_version >= 180000):
        return []
    server = (
        f"PostgreSQL {server_version // 10000}"
        if server_version is not None
        else "a server before PostgreSQL 18"
    )
    return [
        f"pgoutput on {server} does not send GENERATED ALWAYS ... STORED columns, and sends a "
        "domain column as its base type: if the table had such a column, the rebuilt table "
        "lacks it (or has the base type); give --ddl FILE with the table's definition (a "
        "generated column is then computed by the server), or read the slot with --via-plugin "
        "test_decoding or wal2json, which carry the generated values"
    ]


class Wal2JsonAnyFormat:
    """wal2json output whose format-version was not given (``pg_recvlogical -P wal2json``
    without ``-o format-version``, which writes wal2json's default, format 1): the first message
    tells. Format 2 writes one object per line, each with an ``action``; format 1 writes one
    document per transaction, which starts with ``{"xid"``, ``{"change"``, ``{"timestamp"`` or,
    pretty-printed or written in chunks, with a line that is not a whole object.

    ``stated`` is the format-version the user gave, if any: content of the other format is a
    contradiction, refused on its first message.
    """

    plugin = "wal2json"

    def __init__(self, stated: str | None = None) -> None:
        self.stated = stated
        self.version: str | None = None
        self._inner: Decoder | None = None
        self.notes: list[str] = []

    def decode(self, message: RawMessage) -> Sequence[Event]:
        if self._inner is None:
            self.version = _wal2json_format(message.data)
            if self.stated is not None and self.stated != self.version:
                at = f" at LSN {message.lsn}" if message.lsn is not None else ""
                raise DecodeError(
                    f"the wal2json output{at} is format-version {self.version} (its first message "
                    f"begins {_head(message.data)!r}), not format-version {self.stated} as "
                    f"-o format-version={self.stated} says: give the options pg_recvlogical "
                    "used (without -o format-version, wal2json writes format 1)",
                    plugin="wal2json",
                    lsn=message.lsn,
                )
            if self.version == "1":
                self._inner = wal2json_v1.Wal2JsonV1Decoder()
                if self.stated is None:
                    self.notes.append(
                        "the capture is wal2json format-version 1 (no -o format-version was "
                        "given: wal2json's default). " + wal2json_v1.LIMITATIONS
                    )
            else:
                self._inner = wal2json.Wal2JsonV2Decoder()
        return self._inner.decode(message)

    def finish(self) -> Sequence[Event]:
        return self._inner.finish() if self._inner is not None else ()


def _head(data: str | bytes) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return text[:30]


def _wal2json_format(data: str | bytes) -> str:
    """``"2"`` when ``data`` is a whole JSON object with an ``action``, else ``"1"``."""
    text = (data if isinstance(data, str) else data.decode("utf-8", "replace")).lstrip()
    if text.startswith('{"action"'):
        return "2"
    if text.startswith("{") and '"action"' in text[:200]:
        try:
            obj = json.loads(text)
        except ValueError:
            return "1"
        return "2" if isinstance(obj, dict) and "action" in obj else "1"
    return "1"


def decoder_notes(decoder: Decoder) -> list[str]:
    """What a decoder learnt while reading that a user should know (a prepared transaction
    left undecided, the wal2json format it found)."""
    notes = getattr(decoder, "notes", None)
    return list(notes) if notes else []


def make_decoder(
    plugin: str, options: Mapping[str, str] | None = None, *, two_phase: bool = False
) -> Decoder:
    """A fresh decoder for ``plugin`` with the options the stream was produced with.

    wal2json without ``format-version`` (a capture made with pg_recvlogical's defaults) is
    read in the format its content shows; ``two_phase``: test_decoding output that holds
    ``PREPARE TRANSACTION`` rows (see :mod:`.testdecoding`)."""
    _check(plugin)
    options = options or {}
    if plugin == "wal2json":
        if "format-version" not in options:
            return Wal2JsonAnyFormat()
        return Wal2JsonAnyFormat(_wal2json_version(options))
    if plugin == "test_decoding":
        return testdecoding.TestDecodingDecoder(two_phase=two_phase)
    try:
        version = int(options.get("proto_version", "1"))
    except ValueError:
        raise DecodeError(
            f"proto_version {options.get('proto_version')!r} is not a number: give 1 to "
            f"{pgoutput.MAX_PROTO_VERSION}"
        ) from None
    return pgoutput.PgoutputDecoder(version)


def warnings_for(plugin: str, options: Mapping[str, str] | None = None) -> list[str]:
    """What a user should know about reading this plugin with these options."""
    options = options or {}
    found = []
    if plugin == "wal2json" and _wal2json_version(options) == "1":
        found.append(wal2json_v1.LIMITATIONS)
    return found


def decode_all(decoder: Decoder, messages: Iterable[RawMessage]) -> Iterator[Event]:
    """Run ``decoder`` over ``messages`` and yield every event, checking the end of stream."""
    for message in messages:
        yield from decoder.decode(message)
    yield from decoder.finish()
