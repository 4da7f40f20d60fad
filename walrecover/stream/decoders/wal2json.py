"""wal2json format-version 2: one JSON object per row change, framed by B/C objects.

Numbers are read as their literal text (``parse_int``/``parse_float`` hooks), never as floats:
wal2json 2.5 prints numeric as bare JSON numbers, and ``12345678.12345678`` must survive. wal2json
prints numeric ``NaN`` and float ``Infinity`` as JSON null, which cannot be told from NULL; that is
a limit of the plugin (documented in the README), not something a decoder can undo.

An UPDATE whose TOASTed column did not change omits that column; the decoder reports it in
``Change.unchanged_toast`` so replay keeps the previous value instead of writing NULL.

At about 470 lines it is over the modules' usual 400: one concept, format 2's grammar with its
exactness checks (numbers as literal text, the shapes the fast path in :mod:`.wal2json_fast`
shares), which read wrong apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...errors import DecodeError, StopPointError, StreamCutShort
from ..lsn import Lsn
from ..making import change as new_change
from ..model import Begin, Change, Column, Commit, Event, Op, RawMessage, Relation, TableName
from . import wal2json_fast as fast


#: Numbers keep their literal text: never a float between the WAL and the table.
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_JSON = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=_no_constant)
_OPS = {"I": Op.INSERT, "U": Op.UPDATE, "D": Op.DELETE, "T": Op.TRUNCATE}
_ROW_OPS = frozenset("IUD")
_BYTEA_OID = 17
_NONE: frozenset[str] = frozenset()


def server_options(tables: Iterable[TableName | str] = ()) -> list[tuple[str, str]]:
    """Options for ``pg_logical_slot_get_changes`` on a wal2json slot.

    ``tables`` become ``add-tables`` so the server skips other tables' rows;
    transactions still arrive as B/C pairs, so xids and commit LSNs of the whole stream are seen.
    """
    options = [
        ("format-version", "2"),
        ("include-xids", "1"),
        ("include-timestamp", "1"),
        ("include-lsn", "1"),
        ("include-type-oids", "1"),
        ("include-typmod", "1"),
        ("include-pk", "1"),
        ("include-transaction", "1"),
    ]
    names = [_escape_table(name) for name in tables]
    if names:
        options.append(("add-tables", ",".join(names)))
    return options


def _escape_table(table: TableName | str) -> str:
    """``schema.table`` for add-tables, each part escaped (a dot inside a name included)."""
    name = table if isinstance(table, TableName) else TableName.parse(table)
    return f"{_escape_part(name.schema)}.{_escape_part(name.name)}"


def _escape_part(part: str) -> str:
    return "".join("\\" + ch if ch in " ',.*\\" else ch for ch in part)


def _at(lsn: Lsn | None) -> str:
    """`` at LSN X`` for messages, or nothing when the stream has no LSNs (capture files)."""
    return f" at LSN {lsn}" if lsn is not None else ""


_BARE_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def bytea_text(value: str, column: str) -> str:
    """A bytea value as wal2json prints it (bare hex), as PostgreSQL's ``\\x`` hex output.

    wal2json drops the first two characters of bytea's output, which is right only for
    ``bytea_output = hex`` (the ``\\x``). A capture made under ``escape`` lost two real
    characters of every value (and an empty value prints whatever memory follows it), so
    anything but bare hex is refused: it cannot be carried.
    """
    if _BARE_HEX.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise DecodeError(
            f"wal2json printed bytea column {column!r} as {shown!r}, which is not hex: under "
            "bytea_output escape wal2json cuts the first two characters of every bytea value, "
            "so this capture cannot carry them; capture again with bytea_output hex "
            "(PGOPTIONS='-c bytea_output=hex') or with another plugin",
            column=column,
        )
    return "\\x" + value


def value_text(
    value: Any, type_oid: int | None, type_name: str | None, column: str = ""
) -> str | None:
    """wal2json's JSON value as PostgreSQL's own text output (both formats: format 1's numbers
    arrive as their literal text too)."""
    if isinstance(value, str):
        if type_oid == _BYTEA_OID or type_name == "bytea":
            return bytea_text(value, column)
        return value
    if value is None:
        return None
    if value is True:
        return "t"
    if value is False:
        return "f"
    raise ValueError(f"value {value!r} has no text form")


def _timestamp(text: Any, lsn: Lsn | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        raise DecodeError(
            f"wal2json timestamp {text!r}{_at(lsn)} is not ISO: decode with DateStyle ISO",
            lsn=lsn,
        ) from None


@dataclass(slots=True)
class _Known:
    signature: tuple[tuple[str, str], ...]
    relation: Relation


@dataclass(slots=True)
class _Fast:
    """A relation the fast path may reuse: messages of exactly this shape (names, types, OIDs)
    map to ``known`` while it is still the decoder's current knowledge of the table."""

    shape: list[tuple[str, str, int | None]]
    known: _Known
    bytea: bool


class Wal2JsonV2Decoder:
    """Decoder for wal2json ``format-version`` 2 with xids, timestamps and LSNs included."""

    plugin = "wal2json"

    def __init__(self) -> None:
        self._relations: dict[tuple[str, str], _Known] = {}
        self._fast: dict[tuple[str, str], _Fast] = {}
        self._xid: int | None = None
        self._open = False
        self._begin: tuple[Any, Any, Any, Begin] | None = None
        self._begin_row_lsn: Lsn | None = None
        self._last_lsn: Lsn | None = None

    def decode(self, message: RawMessage) -> Sequence[Event]:
        events = self._decode_fast(message)
        return events if events is not None else self._decode_full(message)

    def _decode_fast(self, message: RawMessage) -> Sequence[Event] | None:
        """Begin, commit and changes of known tables through msgspec; None (and nothing
        changed) for any other message, which :meth:`_decode_full` then reads."""
        try:
            msg = fast.DECODER.decode(message.data)
        except fast.PARSE_ERRORS:
            return None
        xid = msg.xid if msg.xid is not None else message.xid
        action = msg.action
        events: Sequence[Event] | None
        try:
            if action == "B":
                events = self._begin_fast(msg, xid, message)
            elif action == "C":
                events = self._commit_fast(msg, xid, message)
            elif action in _ROW_OPS:
                events = self._change_fast(msg, _OPS[action], xid, message)
            else:
                return None
        except (fast.Slow, ValueError, StopPointError, DecodeError):
            return None
        if events is not None and message.lsn is not None:
            self._last_lsn = message.lsn
        return events

    def _begin_fast(
        self, msg: fast.Message, xid: int | None, message: RawMessage
    ) -> list[Event] | None:
        if self._open:
            return None
        begin = Begin(
            xid=xid,
            commit_lsn=Lsn.parse(msg.lsn) if msg.lsn else None,
            end_lsn=Lsn.parse(msg.nextlsn) if msg.nextlsn else None,
            commit_time=(
                datetime.fromisoformat(msg.timestamp) if msg.timestamp is not None else None
            ),
            lsn=message.lsn,
        )
        self._open, self._xid, self._begin_row_lsn = True, xid, message.lsn
        self._begin = (msg.lsn, msg.nextlsn, msg.timestamp, begin)
        return [begin]

    def _commit_fast(
        self, msg: fast.Message, xid: int | None, message: RawMessage
    ) -> list[Event] | None:
        if not self._open:
            return None
        seen = self._begin
        if seen is not None and msg.lsn and seen[:3] == (msg.lsn, msg.nextlsn, msg.timestamp):
            begin = seen[3]
            commit = Commit(xid, begin.commit_lsn, begin.end_lsn, begin.commit_time)
        else:
            commit = Commit(
                xid=xid,
                commit_lsn=Lsn.parse(msg.lsn) if msg.lsn else None,
                end_lsn=Lsn.parse(msg.nextlsn) if msg.nextlsn else message.lsn,
                commit_time=(
                    datetime.fromisoformat(msg.timestamp) if msg.timestamp is not None else None
                ),
            )
        self._open, self._begin = False, None
        return [commit]

    def _change_fast(
        self, msg: fast.Message, op: Op, xid: int | None, message: RawMessage
    ) -> tuple[Change] | None:
        if not self._open or msg.schema is None or msg.table is None:
            return None
        lsn = Lsn.parse(msg.lsn) if msg.lsn else message.lsn
        known = self._relations.get((msg.schema, msg.table))
        if known is None or (msg.identity and not known.relation.key_columns):
            return None
        columns, identity, data = msg.columns, msg.identity, message.data
        new = None
        if columns is not None:
            entry = self._fast.get((msg.schema, msg.table))
            if entry is not None and entry.known is known and not entry.bytea:
                new = fast.image(columns, entry.shape, data)
            if new is None:
                new = self._image_slow(msg.schema, msg.table, known, columns, data)
                if new is None:
                    return None
        old = fast.identity_values(identity, data) if identity is not None else None
        return (new_change(op, known.relation, new, old, _NONE, lsn, xid),)

    def _image_slow(
        self, schema: str, table: str, known: _Known, columns: list[fast.Column], data: str | bytes
    ) -> dict[str, str | None] | None:
        """The row image when the fast entry does not match: a new entry if the columns match
        the known relation (by name and type), else None."""
        shape = fast.shape(columns)
        if known.signature != tuple([(name, type_name) for name, type_name, _ in shape]):
            return None
        bytea = fast.bytea_columns(shape)
        self._fast[(schema, table)] = _Fast(shape, known, any(bytea))
        if any(bytea):
            return fast.values_with_bytea(columns, data, bytea, bytea_text)
        return fast.values(columns, data)

    def _decode_full(self, message: RawMessage) -> Sequence[Event]:
        """Any message, with the stdlib parser: every error and rare shape is handled here."""
        data = message.data
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(
                    f"wal2json message{_at(message.lsn)} is not UTF-8: is this wal2json output?",
                    lsn=message.lsn,
                ) from None
        try:
            obj = _JSON.decode(data)
        except RecursionError:
            raise DecodeError(
                f"wal2json message{_at(message.lsn)} nests too deeply to be wal2json output: "
                "the stream is damaged",
                lsn=message.lsn,
            ) from None
        except json.JSONDecodeError as exc:
            raise DecodeError(
                f"wal2json message{_at(message.lsn)} is not JSON ({exc.msg} at char "
                f"{exc.pos}): is this wal2json format-version 2 output?",
                lsn=message.lsn,
            ) from None
        except ValueError as exc:
            raise DecodeError(
                f"wal2json message{_at(message.lsn)} is not JSON ({exc}): "
                "is this wal2json format-version 2 output?",
                lsn=message.lsn,
            ) from None
        if not isinstance(obj, dict) or "action" not in obj:
            raise DecodeError(
                f"wal2json message{_at(message.lsn)} has no 'action': "
                "walrecover needs format-version 2",
                lsn=message.lsn,
            )
        try:
            return self._decode(obj, message)
        except (KeyError, TypeError, ValueError, AttributeError, StopPointError) as exc:
            raise DecodeError(
                f"wal2json message{_at(message.lsn)} is malformed ({type(exc).__name__}: "
                f"{exc}): the stream is damaged or not wal2json format-version 2",
                lsn=message.lsn,
            ) from None

    def finish(self) -> Sequence[Event]:
        # Slots stop at transaction boundaries: only a capture cut short ends inside one.
        if self._open:
            begun = f"at LSN {self._begin_row_lsn}" if self._begin_row_lsn is not None else ""
            raise StreamCutShort(
                f"the stream ends inside transaction {self._xid}"
                + (
                    f" (begun at LSN {self._begin_row_lsn}, last message at LSN {self._last_lsn})"
                    if self._last_lsn is not None
                    else ""
                )
                + ": the capture is truncated",
                xid=self._xid,
                lsn=self._last_lsn,
                what=f"transaction {self._xid}",
                begun=begun,
            )
        return ()

    def _decode(self, obj: dict[str, Any], message: RawMessage) -> Sequence[Event]:
        action = obj["action"]
        xid = int(obj["xid"]) if obj.get("xid") is not None else message.xid
        if message.lsn is not None:
            self._last_lsn = message.lsn
        if action == "B":
            return self._on_begin(obj, xid, message)
        if action == "C":
            return self._on_commit(obj, xid, message)
        lsn_text = obj.get("lsn")
        lsn = Lsn.parse(lsn_text) if lsn_text else message.lsn
        if action == "M":
            return ()
        op = _OPS.get(action)
        if op is None:
            raise DecodeError(f"wal2json action {action!r}{_at(lsn)} is unknown", lsn=lsn)
        if not self._open:
            raise DecodeError(
                f"wal2json change{_at(lsn)} outside a transaction: "
                "walrecover needs include-transaction on",
                lsn=lsn,
            )
        relation, unchanged = self._relation(obj, op)
        columns = obj.get("columns")
        new = (
            {c["name"]: value_text(c["value"], _oid(c), c.get("type"), c["name"]) for c in columns}
            if columns is not None
            else None
        )
        identity = obj.get("identity")
        old = (
            {c["name"]: value_text(c["value"], _oid(c), c.get("type"), c["name"]) for c in identity}
            if identity is not None
            else None
        )
        return (Change(op, relation, new, old, unchanged, lsn, xid),)

    def _on_begin(self, obj: dict[str, Any], xid: int | None, message: RawMessage) -> list[Event]:
        # B's lsn/nextlsn are the commit record's start and end (decoding happens at commit).
        lsn_text = obj.get("lsn")
        commit_lsn = Lsn.parse(lsn_text) if lsn_text else None
        if self._open:
            raise DecodeError(
                f"wal2json BEGIN of xid {xid}{_at(message.lsn)} inside transaction {self._xid}",
                lsn=message.lsn,
            )
        self._open, self._xid, self._begin_row_lsn = True, xid, message.lsn
        begin = Begin(
            xid=xid,
            commit_lsn=commit_lsn,
            end_lsn=Lsn.parse(obj["nextlsn"]) if obj.get("nextlsn") else None,
            commit_time=_timestamp(obj.get("timestamp"), message.lsn),
            lsn=message.lsn,
        )
        self._begin = (lsn_text, obj.get("nextlsn"), obj.get("timestamp"), begin)
        return [begin]

    def _on_commit(self, obj: dict[str, Any], xid: int | None, message: RawMessage) -> list[Event]:
        if not self._open:
            raise DecodeError(f"wal2json COMMIT{_at(message.lsn)} without BEGIN", lsn=message.lsn)
        self._open = False
        lsn_text = obj.get("lsn")
        seen, self._begin = self._begin, None
        key = (lsn_text, obj.get("nextlsn"), obj.get("timestamp"))
        if seen is not None and lsn_text and seen[:3] == key:
            begin = seen[3]  # the commit repeats its begin: reuse what was parsed
            return [Commit(xid, begin.commit_lsn, begin.end_lsn, begin.commit_time)]
        return [
            Commit(
                xid=xid,
                commit_lsn=Lsn.parse(lsn_text) if lsn_text else None,
                # Through SQL, the C row's own position is the end of the commit record.
                end_lsn=Lsn.parse(obj["nextlsn"]) if obj.get("nextlsn") else message.lsn,
                commit_time=_timestamp(obj.get("timestamp"), message.lsn),
            )
        ]

    def _relation(self, obj: dict[str, Any], op: Op) -> tuple[Relation, frozenset[str]]:
        schema, table = obj["schema"], obj["table"]
        known = self._relations.get((schema, table))
        columns = obj.get("columns")
        if columns is None:
            if known is not None:
                return known.relation, frozenset()
            identity = obj.get("identity") or []
            pk = {c["name"] for c in obj.get("pk") or []}
            relation = Relation(
                schema=schema,
                name=table,
                columns=tuple(
                    Column(c["name"], c.get("type", ""), _oid(c), None, c["name"] in pk or not pk)
                    for c in identity
                ),
                complete=False,
            )
            return relation, frozenset()
        signature = tuple((c["name"], c.get("type", "")) for c in columns)
        if (
            known is not None
            and known.signature == signature
            and (known.relation.key_columns or not obj.get("identity"))
        ):
            return known.relation, frozenset()
        if (
            known is not None
            and op is Op.UPDATE
            and known.relation.complete
            and set(signature) < set(known.signature)
        ):
            sent = {name for name, _ in signature}
            return known.relation, frozenset(
                name for name, _ in known.signature if name not in sent
            )
        keys = self._key_names(obj, known)
        relation = Relation(
            schema=schema,
            name=table,
            columns=tuple(
                Column(c["name"], c.get("type", ""), _oid(c), None, c["name"] in keys)
                for c in columns
            ),
            complete=op is Op.INSERT
            or (
                known is not None
                and known.relation.complete
                and set(known.signature) <= set(signature)
            ),
        )
        self._relations[(schema, table)] = _Known(signature, relation)
        return relation, frozenset()

    @staticmethod
    def _key_names(obj: dict[str, Any], known: _Known | None) -> set[str]:
        """Primary key columns; else a replica identity index's columns; else what was known.

        An identity that covers every column is REPLICA IDENTITY FULL, not a key.
        """
        pk = obj.get("pk")
        if pk:
            return {c["name"] for c in pk}
        identity = obj.get("identity")
        columns = obj.get("columns")
        if identity and columns is not None and len(identity) < len(columns):
            return {c["name"] for c in identity}
        return set(known.relation.key_columns) if known else set()


def _oid(column: dict[str, Any]) -> int | None:
    oid = column.get("typeoid")
    return int(oid) if oid is not None else None
