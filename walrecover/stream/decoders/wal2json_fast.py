"""The fast path for wal2json format-version 2: msgspec parses, values keep their exact text.

wal2json v2 writes one small object per row change, and parsing it with the stdlib (with hooks
that keep numbers as text) was the largest decode cost. msgspec parses into typed Structs in C.
A column's ``value`` is untyped there: strings, ``null`` and booleans come out as themselves, a
JSON float reaches ``float_hook`` as its literal text (``str``), so ``-0.10`` and ``1e400`` stay
what the plugin printed and no float is ever made. A JSON integer comes out as a Python ``int``,
whose ``str`` is its literal text for every JSON integer but ``-0``: a message holding an integer
zero and the text ``-0`` is left to the full path.

This path is deliberately narrow: it handles only well-formed messages of the shapes it knows
(begin, commit, and a change whose table's columns match what the decoder already knows), and
returns ``None`` (before changing any state) for everything else, which the decoder then reads
with its full path, errors included. So both paths give the same events and the same messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

_BYTEA_OID = 17


class Column(msgspec.Struct, gc=False):
    """One entry of ``columns`` or ``identity``."""

    name: str
    value: Any
    type: str = ""
    typeoid: int | None = None


class Message(msgspec.Struct, gc=False):
    """One wal2json v2 message: the fields walrecover reads (others are skipped unparsed)."""

    action: str
    xid: int | None = None
    lsn: str | None = None
    nextlsn: str | None = None
    timestamp: str | None = None
    schema: str | None = None
    table: str | None = None
    columns: list[Column] | None = None
    identity: list[Column] | None = None


DECODER = msgspec.json.Decoder(Message, float_hook=str)

#: What a parse of a message can raise: any of these sends the message to the full path.
PARSE_ERRORS = (msgspec.DecodeError, RecursionError, ValueError)


class Slow(Exception):
    """The message needs the full path (a value the fast path does not carry)."""


def shape(columns: list[Column]) -> list[tuple[str, str, int | None]]:
    """What a relation's fast entry is matched on: each column's name, type and type OID."""
    return [(c.name, c.type, c.typeoid) for c in columns]


def text(value: Any, data: str | bytes) -> str | None:
    """A value that is not a ``str`` as PostgreSQL's text (``data``: the whole message).

    An integer with more digits than ``int``-to-``str`` allows raises ``ValueError``, which
    sends the message to the full path too.
    """
    if value is None:
        return None
    if value is True:
        return "t"
    if value is False:
        return "f"
    if type(value) is int:
        if value == 0 and ("-0" in data if isinstance(data, str) else b"-0" in data):
            raise Slow  # "-0" and "0" both parse to 0: only the full path has the literal
        return str(value)
    raise Slow  # an array or object: the full path refuses it


def image(
    columns: list[Column], known: list[tuple[str, str, int | None]], data: str | bytes
) -> dict[str, str | None] | None:
    """A row image from columns none of which is bytea, or None when the columns' names, types
    and type OIDs are not exactly ``known`` (this is the hot loop: one pass, the shape checked
    column by column as the values are taken).

    A nonzero JSON integer's ``str`` is its literal (JSON has no leading zeros or ``+``);
    anything else that is not a ``str`` goes through :func:`text`.
    """
    if len(columns) != len(known):
        return None
    row: dict[str, str | None] = {}
    for column, (name, type_name, type_oid) in zip(columns, known, strict=True):
        if column.name != name or column.type != type_name or column.typeoid != type_oid:
            return None
        value = column.value
        kind = type(value)
        if kind is str:
            row[name] = value
        elif kind is int and value:
            row[name] = str(value)
        else:
            row[name] = text(value, data)
    return row


def values(columns: list[Column], data: str | bytes) -> dict[str, str | None]:
    """A row image from columns known not to be bytea."""
    row: dict[str, str | None] = {}
    for column in columns:
        value = column.value
        row[column.name] = value if type(value) is str else text(value, data)
    return row


def identity_values(columns: list[Column], data: str | bytes) -> dict[str, str | None]:
    """An old image (``identity``), its columns not matched against a known relation."""
    for column in columns:
        if column.typeoid == _BYTEA_OID or column.type == "bytea":
            raise Slow
    return values(columns, data)


def bytea_columns(key: list[tuple[str, str, int | None]]) -> tuple[bool, ...]:
    """Which columns of a relation shape are bytea (their text values need converting)."""
    return tuple(oid == _BYTEA_OID or type_name == "bytea" for _, type_name, oid in key)


def values_with_bytea(
    columns: list[Column],
    data: str | bytes,
    bytea: tuple[bool, ...],
    convert: Callable[[str, str], str],
) -> dict[str, str | None]:
    """A row image whose bytea columns (``bytea``, by position) go through ``convert``."""
    image: dict[str, str | None] = {}
    for column, is_bytea in zip(columns, bytea, strict=True):
        value = column.value
        if type(value) is str:
            image[column.name] = convert(value, column.name) if is_bytea else value
        else:
            image[column.name] = text(value, data)
    return image
