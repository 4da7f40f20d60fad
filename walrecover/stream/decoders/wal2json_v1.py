"""wal2json format-version 1: one JSON document per transaction.

A document looks like this (``include-xids``, ``include-lsn``, ``include-timestamp``,
``include-type-oids``, ``include-pk`` on; ``pretty-print`` adds tabs and newlines)::

    {"xid":745,"nextlsn":"0/16B3830","timestamp":"2024-03-01 10:00:00.123456+00","change":[
      {"kind":"insert","schema":"public","table":"t","columnnames":["id","note"],
       "columntypes":["integer","text"],"columntypeoids":[23,25],"columnvalues":[1,"a"],
       "pk":{"pknames":["id"],"pktypes":["integer"]}},
      {"kind":"update", ..., "oldkeys":{"keynames":["id"],"keytypes":["integer"],
       "keyvalues":[1]}},
      {"kind":"delete","schema":"public","table":"t","oldkeys":{...}}]}

The decoder emits :class:`Begin`, the row changes and :class:`Commit` for each document. With
``write-in-chunks`` the server sends a document in pieces (the opening, one row per change, the
closing ``]}``), and a ``pg_recvlogical -f`` capture of ``pretty-print`` output has it on many
lines: pieces are joined until a whole document has arrived (a line's newline is whitespace
between tokens, never part of a string, so joining without it is exact for rows, lines and
blocks alike). Only then does anything come out, so memory holds one transaction.

Positions: format 1 has no commit LSN. ``nextlsn`` is the end of the commit record; without it
the row that closes a document (the SQL interface puts it at the end of the commit record) gives
the same position. With ``write-in-chunks`` each change arrives on a row of its own, whose LSN is
that change's; without chunks changes have no LSN.

Values are PostgreSQL's text output: numbers are kept as their literal text (never a float),
booleans become ``t``/``f``, bytea gets back the ``\\x`` wal2json strips. A column missing from an
UPDATE that the table's last whole row had is an unchanged TOASTed value: it is reported in
``Change.unchanged_toast`` so replay keeps the previous value.

The key is ``pk`` when ``include-pk`` sends it, else the columns of ``oldkeys`` (the replica
identity; a table whose ``oldkeys`` change shape is ``REPLICA IDENTITY FULL``, whose old images
skip NULLs: every column is then the key, and old images are completed with NULL).

At about 540 lines it is over the modules' usual 400: one concept, format 1's streaming grammar
(a transaction is one JSON document, read change by change) with its exactness checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...errors import DecodeError, StopPointError, StreamCutShort
from ..lsn import Lsn
from ..model import Begin, Change, Column, Commit, Event, Op, RawMessage, Relation, TableName
from . import wal2json

PLUGIN = "wal2json"

#: What the CLI prints as a warning when a stream is wal2json format-version 1.
LIMITATIONS = (
    "wal2json format-version 1 cannot carry TRUNCATE (the plugin drops it without a trace, so "
    "rows a TRUNCATE removed come back) and holds a whole transaction in one JSON document (on "
    "the server and here); format-version 2 is the one to choose for big transactions. Format 1 "
    "also drops UPDATE and DELETE on tables without a primary key or replica identity (a server "
    "WARNING is all that is left), and prints numeric and float NaN and Infinity as null."
)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Numbers keep their literal text; NaN/Infinity tokens are not JSON and are refused.
_JSON = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=_no_constant)
_OPS = {"insert": Op.INSERT, "update": Op.UPDATE, "delete": Op.DELETE}
#: Structural characters outside and inside JSON strings.
_OUTSIDE = re.compile(r'[{}\[\]"]')
_INSIDE = re.compile(r'["\\]')
_SPACE = re.compile(r"[ \t\n\r]*")
_STRAY_COMMA = re.compile(r'(\{\s*"change"\s*:\s*\[\s*),')


def server_options(tables: Iterable[TableName | str] = ()) -> list[tuple[str, str]]:
    """Options for ``pg_logical_slot_get_changes`` on a wal2json slot read in format 1.

    The same information as walrecover's format-2 options, plus ``write-in-chunks``: without it
    the server builds each transaction as one text value, and a transaction over 1 GB of JSON
    cannot be returned at all.
    """
    options = [
        ("format-version", "1") if name == "format-version" else (name, value)
        for name, value in wal2json.server_options(tables)
        if name != "include-transaction"
    ]
    options.append(("write-in-chunks", "1"))
    return options


@dataclass(slots=True)
class _Table:
    """What the stream has shown of one table so far."""

    schema: str
    name: str
    #: (name, type) of the last whole row, in table order.
    signature: tuple[tuple[str, str], ...]
    oids: tuple[int | None, ...]
    complete: bool
    key: tuple[str, ...] = ()
    #: The key came from ``pk`` (authoritative) rather than from ``oldkeys``.
    key_from_pk: bool = False
    full_identity: bool = False
    relation: Relation | None = None

    def build(self) -> Relation:
        """The current :class:`Relation` (the same object while nothing changed)."""
        if self.relation is None:
            keys = set(self.key)
            self.relation = Relation(
                schema=self.schema,
                name=self.name,
                columns=tuple(
                    Column(name, type_name, oid, None, self.full_identity or name in keys)
                    for (name, type_name), oid in zip(self.signature, self.oids, strict=True)
                ),
                complete=self.complete,
            )
        return self.relation

    def see_part(self, image: _Image) -> None:
        """An old key: add the columns not known yet, without claiming completeness."""
        known = dict(zip(self.signature, self.oids, strict=True))
        if all(column in known for column in image.signature):
            return
        for column, oid in zip(image.signature, image.oids, strict=True):
            known.setdefault(column, oid)
        self.signature, self.oids = tuple(known), tuple(known.values())
        self.complete, self.relation = False, None

    def forget_lost_key(self) -> None:
        """The definition changed: a key learnt from old images that lost a column is unknown.

        (A renamed key column makes the next old image print other names; that is not the
        identity turning FULL.)
        """
        names = {name for name, _ in self.signature}
        if self.key and not self.key_from_pk and not set(self.key) <= names:
            self.key, self.full_identity = (), False

    def learn_key(
        self, pk: Sequence[str] | None, identity: Sequence[tuple[str, str]] | None
    ) -> None:
        """``pk`` names the primary key; ``identity`` the (column, type) an old image printed.

        A printed column of a type without btree equality (json, xml, geometry) cannot be in
        a key or a replica identity index: the identity is FULL (matching it by ``=`` failed
        with "operator does not exist: json = unknown")."""
        if pk is not None:
            if tuple(pk) != self.key or not self.key_from_pk or self.full_identity:
                self.key, self.key_from_pk, self.full_identity = tuple(pk), True, False
                self.relation = None
            return
        if not identity or self.key_from_pk or self.full_identity:
            return
        names = tuple(name for name, _ in identity)
        if not self.key:
            self.key, self.relation = names, None
            self.full_identity = any(_unkeyable(type_name) for _, type_name in identity)
        elif set(names) != set(self.key):
            self.full_identity, self.relation = True, None


#: Types with no btree equality, so in no key or replica identity index (arrays of them too).
_UNKEYABLE = frozenset({"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"})


def _unkeyable(type_name: str) -> bool:
    return type_name.removesuffix("[]") in _UNKEYABLE


@dataclass(slots=True)
class _Document:
    """A document being collected from one or more messages."""

    parts: list[str]
    lsn: Lsn | None
    line: int
    xid: int | None
    #: (line, lsn) of the message in which each entry of ``change`` begins.
    marks: list[tuple[int, Lsn | None]]


class Wal2JsonV1Decoder:
    """Decoder for wal2json ``format-version`` 1, chunked or not, pretty-printed or not."""

    plugin = PLUGIN

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], _Table] = {}
        self._line = 0
        self._doc: _Document | None = None
        self._depth = 0
        self._in_string = False
        self._escaped = False

    # -- the protocol --------------------------------------------------------------------------

    def decode(self, message: RawMessage) -> Sequence[Event]:
        """Take one row (or one piece of a document); return the events of completed documents."""
        self._line += 1
        text = self._text(message)
        events: list[Event] = []
        pos, n = 0, len(text)
        while True:
            if self._doc is None:
                space = _SPACE.match(text, pos)
                pos = space.end() if space is not None else pos
                if pos >= n:
                    break
                if text[pos] != "{":
                    raise DecodeError(
                        f"wal2json row {self._where(message.lsn)} does not start a JSON "
                        f"document (it has {text[pos : pos + 20]!r}): is this wal2json "
                        "format-version 1 output?",
                        plugin=PLUGIN,
                        lsn=message.lsn,
                        line=self._line,
                    )
                self._doc = _Document([], message.lsn, self._line, message.xid, [])
                self._depth, self._in_string, self._escaped = 1, False, False
                start, pos = pos, pos + 1
            else:
                start = pos
            end = self._scan(text, pos, message.lsn)
            if end is None:
                self._doc.parts.append(text[start:])
                break
            self._doc.parts.append(text[start:end])
            doc, self._doc = self._doc, None
            events.extend(self._document(doc, message))
            pos = end
        return events

    def finish(self) -> Sequence[Event]:
        """The stream ended: a document still open means the capture is cut."""
        if self._doc is not None:
            doc = self._doc
            where = f"at LSN {doc.lsn}" if doc.lsn is not None else f"at line {doc.line}"
            raise StreamCutShort(
                f"wal2json stream ends inside a format-version 1 document that begins {where}: "
                "the capture is truncated",
                plugin=PLUGIN,
                lsn=doc.lsn,
                line=doc.line,
                xid=doc.xid,
                what=f"transaction {doc.xid}" if doc.xid is not None else "a transaction",
                begun=where,
            )
        return ()

    # -- framing -------------------------------------------------------------------------------

    def _text(self, message: RawMessage) -> str:
        data = message.data
        if isinstance(data, str):
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"wal2json row {self._where(message.lsn)} is not UTF-8 (byte {exc.start}): "
                "is this wal2json output?",
                plugin=PLUGIN,
                lsn=message.lsn,
                line=self._line,
            ) from None

    def _where(self, lsn: Lsn | None) -> str:
        return f"at LSN {lsn}" if lsn is not None else f"at line {self._line}"

    def _scan(self, text: str, pos: int, lsn: Lsn | None) -> int | None:
        """Follow the open document's nesting through ``text``; where it closes, or None.

        Only brackets outside strings count. A ``{`` opened directly inside the ``change`` array
        (depth 2) starts a change: the message it starts in is noted for the change's LSN.
        """
        assert self._doc is not None
        n = len(text)
        if self._escaped and pos < n:
            pos, self._escaped = pos + 1, False
        while pos < n:
            if self._in_string:
                found = _INSIDE.search(text, pos)
                if found is None:
                    return None
                if found.group() == "\\":
                    pos = found.end() + 1
                    if pos > n:
                        self._escaped = True
                else:
                    pos, self._in_string = found.end(), False
                continue
            found = _OUTSIDE.search(text, pos)
            if found is None:
                return None
            char, pos = found.group(), found.end()
            if char == '"':
                self._in_string = True
            elif char in "{[":
                if char == "{" and self._depth == 2:
                    self._doc.marks.append((self._line, lsn))
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return pos
        return None

    def _document(self, doc: _Document, closing: RawMessage) -> Sequence[Event]:
        """Parse one whole document and turn it into a transaction's events."""
        where = f"at LSN {doc.lsn}" if doc.lsn is not None else f"at line {doc.line}"
        text = "".join(doc.parts)
        try:
            obj, trailing = _parse(text)
        except (ValueError, RecursionError) as exc:
            reason = (
                f"{exc.msg} at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else exc
            )
            raise DecodeError(
                f"wal2json document {where} is not JSON ({reason}): is this wal2json "
                "format-version 1 output?",
                plugin=PLUGIN,
                lsn=doc.lsn,
                line=doc.line,
            ) from None
        if trailing.strip() or not isinstance(obj, dict) or not isinstance(obj.get("change"), list):
            raise DecodeError(
                f"wal2json document {where} has no 'change' list: walrecover reads "
                "format-version 1 documents here (format 2 has 'action')",
                plugin=PLUGIN,
                lsn=doc.lsn,
                line=doc.line,
            )
        try:
            return self._transaction(obj, doc, closing)
        except DecodeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, StopPointError) as exc:
            raise DecodeError(
                f"wal2json document {where} is malformed ({type(exc).__name__}: {exc}): the "
                "stream is damaged or not wal2json format-version 1",
                plugin=PLUGIN,
                lsn=doc.lsn,
                line=doc.line,
            ) from None

    # -- content -------------------------------------------------------------------------------

    def _transaction(
        self, obj: dict[str, Any], doc: _Document, closing: RawMessage
    ) -> Sequence[Event]:
        entries: list[Any] = obj["change"]
        if entries and all(
            isinstance(e, dict) and e.get("kind") == "message" and e.get("transactional") is False
            for e in entries
        ):
            return ()  # a non-transactional message: a document of its own, no transaction
        xid = _whole_number(obj["xid"]) if obj.get("xid") is not None else doc.xid
        end_lsn = Lsn.parse(obj["nextlsn"]) if obj.get("nextlsn") is not None else closing.lsn
        commit_time = _timestamp(obj.get("timestamp"))
        events: list[Event] = [
            Begin(xid=xid, commit_lsn=None, end_lsn=end_lsn, commit_time=commit_time, lsn=doc.lsn)
        ]
        marks = doc.marks if len(doc.marks) == len(entries) else [(0, None)] * len(entries)
        for entry, (line, lsn) in zip(entries, marks, strict=True):
            if not isinstance(entry, dict):
                raise TypeError(f"a change is {type(entry).__name__}, not an object")
            kind = entry.get("kind")
            if kind == "message":
                continue
            op = _OPS.get(kind) if isinstance(kind, str) else None
            if op is None:
                raise ValueError(f"unknown change kind {kind!r}")
            events.append(self._change(entry, op, xid, None if line == self._line else lsn))
        events.append(Commit(xid=xid, commit_lsn=None, end_lsn=end_lsn, commit_time=commit_time))
        return events

    def _change(self, entry: dict[str, Any], op: Op, xid: int | None, lsn: Lsn | None) -> Change:
        schema, table = entry.get("schema"), entry["table"]
        if not isinstance(schema, str) or not isinstance(table, str):
            raise ValueError(
                "a change without schema and table names: walrecover needs include-schemas on"
            )
        new = _image(entry, "columnnames", "columntypes", "columntypeoids", "columnvalues")
        old = _image(entry.get("oldkeys"), "keynames", "keytypes", "keytypeoids", "keyvalues")
        pk = entry.get("pk")
        pk_names = [str(name) for name in pk["pknames"]] if pk is not None else None
        if op is Op.INSERT or op is Op.UPDATE:
            if new is None:
                raise ValueError(f"an {op.value} without columnnames/columnvalues")
        elif new is not None:
            raise ValueError("a delete with columnvalues")
        state, unchanged = self._table(schema, table, op, new, old)
        state.learn_key(pk_names, old.signature if old is not None else None)
        old_values = dict(old.values) if old is not None else None
        if old_values is not None and state.full_identity:
            for name, _ in state.signature:
                old_values.setdefault(name, None)
        return Change(
            op=op,
            relation=state.build(),
            new=dict(new.values) if new is not None else None,
            old=old_values,
            unchanged_toast=unchanged,
            lsn=lsn,
            xid=xid,
        )

    def _table(
        self, schema: str, name: str, op: Op, new: _Image | None, old: _Image | None
    ) -> tuple[_Table, frozenset[str]]:
        """The table's state after this change's rows; the columns it left unchanged (TOAST).

        A delete shows only the old key: of a table not seen whole yet, the relation then has
        just those columns and is marked incomplete.
        """
        state = self._tables.get((schema, name))
        if new is None:
            if state is None:
                state = _Table(schema, name, (), (), complete=False)
                self._tables[(schema, name)] = state
            if old is not None:
                state.see_part(old)
            return state, frozenset()
        if state is not None and state.signature == new.signature:
            return state, frozenset()
        if (
            state is not None
            and op is Op.UPDATE
            and state.complete
            and set(new.signature) < set(state.signature)
        ):
            # Columns the last whole row had and this update lacks kept their TOASTed value.
            sent = {column for column, _ in new.signature}
            return state, frozenset(column for column, _ in state.signature if column not in sent)
        complete = op is Op.INSERT or (
            state is not None and state.complete and set(state.signature) <= set(new.signature)
        )
        if state is None:
            state = _Table(schema, name, new.signature, new.oids, complete)
            self._tables[(schema, name)] = state
        else:
            state.signature, state.oids, state.complete = new.signature, new.oids, complete
            state.relation = None
            state.forget_lost_key()
        return state, frozenset()


@dataclass(frozen=True, slots=True)
class _Image:
    """One row image of a change: names with types and values in canonical text."""

    signature: tuple[tuple[str, str], ...]
    oids: tuple[int | None, ...]
    values: tuple[tuple[str, str | None], ...]


def _parse(text: str) -> tuple[Any, str]:
    """Parse a document (and return what follows it), mending a defect of wal2json 2.5.

    wal2json 2.5 writes a non-transactional message that follows a transaction of two or more
    changes as ``{"change":[,{...}]}``: the comma belongs to the previous transaction's count
    (fixed in later wal2json). Only that comma, right after the array opens, is removed.
    """
    try:
        obj, end = _JSON.raw_decode(text)
    except json.JSONDecodeError:
        stray = _STRAY_COMMA.match(text)
        if stray is None:
            raise
        text = stray.group(1) + text[stray.end() :]
        obj, end = _JSON.raw_decode(text)
    return obj, text[end:]


def _image(
    container: Mapping[str, Any] | None,
    names_key: str,
    types_key: str,
    oids_key: str,
    values_key: str,
) -> _Image | None:
    """The parallel name/type/oid/value arrays of a change (or of its ``oldkeys``) as an image."""
    if container is None:
        return None
    if not isinstance(container, dict):
        raise TypeError(f"expected an object holding {names_key}")
    names = container.get(names_key)
    values = container.get(values_key)
    if names is None and values is None:
        return None
    types = container.get(types_key)
    oids = container.get(oids_key)
    if not isinstance(names, list) or not isinstance(values, list) or len(names) != len(values):
        raise ValueError(f"{names_key} and {values_key} are not lists of the same length")
    if types is None:
        types = [""] * len(names)
    if oids is None:
        oids = [None] * len(names)
    if not isinstance(types, list) or not isinstance(oids, list):
        raise ValueError(f"{types_key} or {oids_key} is not a list")
    if len(types) != len(names) or len(oids) != len(names):
        raise ValueError(f"{types_key} or {oids_key} does not match {names_key}")
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ValueError(f"{names_key} are not distinct strings")
    type_names = [str(t) for t in types]
    type_oids = [_whole_number(oid) if oid is not None else None for oid in oids]
    return _Image(
        signature=tuple(zip(names, type_names, strict=True)),
        oids=tuple(type_oids),
        values=tuple(
            (name, wal2json.value_text(value, oid, type_name, name))
            for name, value, oid, type_name in zip(
                names, values, type_oids, type_names, strict=True
            )
        ),
    )


def _whole_number(value: Any) -> int:
    """An xid or a type oid: a JSON integer (read as its text), nothing else."""
    if not isinstance(value, str) or not value.isdigit():
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def _timestamp(text: Any) -> datetime | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError("timestamp is not a string")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return moment
