"""Decoders turn one output plugin's raw messages into the canonical model, and nothing else.

A decoder is a small stateful object (it remembers relations and the open transaction) with one
method, :meth:`Decoder.decode`, that takes a :class:`RawMessage` and returns the events it
completes. Decoders never touch a database; they raise :class:`~walrecover.errors.DecodeError`
and nothing else on bad input.

This module is the registry: one :class:`PluginSpec` per output plugin in :data:`SPECS` says
which options walrecover asks the server for, which decoder reads a stream produced with given
options (``pg_recvlogical -o`` names), and what the plugin's stream can carry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ...errors import DecodeError
from ..model import Event, RawMessage, TableName
from . import pgoutput, testdecoding, wal2json, wal2json_v1
from .wal2json_auto import Wal2JsonAnyFormat

__all__ = [
    "PLUGINS",
    "SPECS",
    "Decoder",
    "PluginSpec",
    "RawMessage",
    "Wal2JsonAnyFormat",
    "column_limits",
    "decode_all",
    "decoder_notes",
    "is_binary",
    "make_decoder",
    "plugin_options",
    "spec",
    "warnings_for",
    "without_streaming",
]


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


@dataclass(frozen=True, slots=True)
class DecoderSetup:
    """What a decoder is built from besides the stream's options.

    ``two_phase``: test_decoding output that holds ``PREPARE TRANSACTION`` rows (see
    :mod:`.testdecoding`); ``tables``: the only tables whose rows the reader wants (empty:
    every table), so a plugin that cannot filter on the server may skip the others' rows.
    """

    two_phase: bool = False
    tables: tuple[TableName, ...] = ()


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One output plugin walrecover reads: how to ask for it, how to decode it, what it carries."""

    #: The plugin's name as ``pg_replication_slots.plugin`` spells it.
    name: str
    #: ``server_options(tables, user)``: walrecover's options for the server; it takes out of
    #: ``user`` the options it consumed (pgoutput's publication names and protocol version).
    server_options: Callable[[Iterable[TableName | str], dict[str, str]], list[tuple[str, str]]]
    #: ``decoder(options, setup)``: a fresh decoder for a stream produced with ``options``.
    decoder: Callable[[Mapping[str, str], DecoderSetup], Decoder]
    #: Messages are bytes (read with the ``_binary_`` SQL functions), not text.
    binary: bool = False
    #: The option that makes the plugin send a transaction in parts before it commits.
    streaming_option: str | None = None
    #: Changes carry the relation id (the table's oid), so replay can tell a re-created table.
    relation_ids: bool = False
    #: The Begin carries the commit LSN and time, so a stop point is decided before applying.
    commit_at_begin: bool = True
    #: The server can leave other tables' rows out (walrecover asks it to).
    filters_tables: bool = False
    #: ``warnings(options)``: what a user should know about reading it with these options.
    warnings: Callable[[Mapping[str, str]], list[str]] = lambda options: []
    #: ``column_limits(server_version)``: kinds of column it cannot carry from that server.
    column_limits: Callable[[int | None], list[str]] = lambda server_version: []


def _wal2json_version(options: Mapping[str, str]) -> str:
    version = options.get("format-version", "2")
    if version not in ("1", "2"):
        raise DecodeError(f"wal2json format-version {version!r} does not exist: give 1 or 2")
    return version


def _wal2json_options(
    tables: Iterable[TableName | str], user: dict[str, str]
) -> list[tuple[str, str]]:
    if _wal2json_version(user) == "1":
        return wal2json_v1.server_options(tables)
    return wal2json.server_options(tables)


def _wal2json_decoder(options: Mapping[str, str], setup: DecoderSetup) -> Decoder:
    """wal2json without ``format-version`` (a capture made with pg_recvlogical's defaults) is
    read in the format its content shows."""
    if "format-version" not in options:
        return Wal2JsonAnyFormat()
    return Wal2JsonAnyFormat(_wal2json_version(options))


def _wal2json_warnings(options: Mapping[str, str]) -> list[str]:
    return [wal2json_v1.LIMITATIONS] if _wal2json_version(options) == "1" else []


def _pgoutput_options(
    tables: Iterable[TableName | str], user: dict[str, str]
) -> list[tuple[str, str]]:
    publications = [p.strip() for p in user.pop("publication_names", "").split(",") if p.strip()]
    if not publications:
        raise DecodeError(
            "a pgoutput slot is read through a publication: give -o publication_names=NAME "
            "(a publication that existed before the changes), or --via-plugin test_decoding",
            plugin="pgoutput",
        )
    return pgoutput.server_options(publications, int(user.pop("proto_version", "1")))


def _pgoutput_decoder(options: Mapping[str, str], setup: DecoderSetup) -> Decoder:
    try:
        version = int(options.get("proto_version", "1"))
    except ValueError:
        raise DecodeError(
            f"proto_version {options.get('proto_version')!r} is not a number: give 1 to "
            f"{pgoutput.MAX_PROTO_VERSION}"
        ) from None
    return pgoutput.PgoutputDecoder(version, tables=setup.tables)


def _pgoutput_column_limits(server_version: int | None) -> list[str]:
    if server_version is not None and server_version >= 180000:
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


#: The output plugins walrecover reads, by name.
SPECS: dict[str, PluginSpec] = {
    spec.name: spec
    for spec in (
        PluginSpec(
            name="wal2json",
            server_options=_wal2json_options,
            decoder=_wal2json_decoder,
            filters_tables=True,
            warnings=_wal2json_warnings,
        ),
        PluginSpec(
            name="pgoutput",
            server_options=_pgoutput_options,
            decoder=_pgoutput_decoder,
            binary=True,
            streaming_option="streaming",
            relation_ids=True,
            column_limits=_pgoutput_column_limits,
        ),
        PluginSpec(
            name="test_decoding",
            server_options=lambda tables, user: testdecoding.server_options(tables),
            decoder=lambda options, setup: testdecoding.TestDecodingDecoder(
                two_phase=setup.two_phase
            ),
            streaming_option="stream-changes",
            commit_at_begin=False,
        ),
    )
}

#: The output plugins walrecover reads.
PLUGINS = tuple(SPECS)


def spec(plugin: str) -> PluginSpec:
    """The spec of ``plugin``; raise :class:`DecodeError` for a plugin walrecover cannot read."""
    found = SPECS.get(plugin)
    if found is None:
        raise DecodeError(
            f"output plugin {plugin!r} is not supported: walrecover reads "
            f"{', '.join(PLUGINS)} (read the slot through one of them with --via-plugin)",
            plugin=plugin,
        )
    return found


def is_binary(plugin: str) -> bool:
    """True for plugins whose messages are bytes (read with the ``_binary_`` SQL functions)."""
    found = SPECS.get(plugin)
    return found is not None and found.binary


def plugin_options(
    plugin: str, tables: Iterable[TableName | str] = (), user: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """The options walrecover passes to the server for ``plugin``, merged with the user's.

    ``tables`` (TableName, or ``schema.table`` text) let plugins that can filter do it on the
    server. The user's ``-o NAME=VALUE`` options win over walrecover's defaults.
    """
    found = spec(plugin)
    user = dict(user or {})
    merged = dict(found.server_options(tables, user))
    merged.update(user)
    return list(merged.items())


#: The option that makes each plugin send a transaction in parts before it commits.
STREAMING_OPTIONS = {s.name: s.streaming_option for s in SPECS.values() if s.streaming_option}

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
    found = SPECS.get(plugin)
    return found.column_limits(server_version) if found is not None else []


def decoder_notes(decoder: Decoder) -> list[str]:
    """What a decoder learnt while reading that a user should know (a prepared transaction
    left undecided, the wal2json format it found)."""
    notes = getattr(decoder, "notes", None)
    return list(notes) if notes else []


def make_decoder(
    plugin: str,
    options: Mapping[str, str] | None = None,
    *,
    two_phase: bool = False,
    tables: Iterable[TableName] = (),
) -> Decoder:
    """A fresh decoder for ``plugin`` with the options the stream was produced with.

    wal2json without ``format-version`` (a capture made with pg_recvlogical's defaults) is
    read in the format its content shows; ``two_phase``: test_decoding output that holds
    ``PREPARE TRANSACTION`` rows (see :mod:`.testdecoding`); ``tables``: the only tables whose
    rows are wanted (a decoder may leave the others' rows undecoded; empty: every table)."""
    found = spec(plugin)
    return found.decoder(options or {}, DecoderSetup(two_phase, tuple(tables)))


def warnings_for(plugin: str, options: Mapping[str, str] | None = None) -> list[str]:
    """What a user should know about reading this plugin with these options."""
    found = SPECS.get(plugin)
    return found.warnings(options or {}) if found is not None else []


def decode_all(decoder: Decoder, messages: Iterable[RawMessage]) -> Iterator[Event]:
    """Run ``decoder`` over ``messages`` and yield every event, checking the end of stream."""
    for message in messages:
        yield from decoder.decode(message)
    yield from decoder.finish()
