"""test_decoding: PostgreSQL's own example output plugin, one line of text per event.

test_decoding ships with every PostgreSQL (``contrib``), so it is often the only plugin a server
has. Its rows look like this (``include-xids`` and ``include-timestamp`` on)::

    BEGIN 745
    table public.accounts: INSERT: id[bigint]:1 owner[text]:'O''Brien' active[boolean]:true
    table public.accounts: UPDATE: old-key: id[bigint]:1 new-tuple: id[bigint]:20 ...
    table public.accounts: DELETE: id[bigint]:20
    table public.staging, public.scratch: TRUNCATE: restart_seqs
    COMMIT 745 (at 2024-03-01 10:00:00.123456+00)

The grammar, as ``contrib/test_decoding/test_decoding.c`` writes it:

- Table and column names go through ``quote_identifier``: bare when they are lower-case ASCII
  letters, digits and ``_`` (and not a reserved word), else double-quoted with ``"`` doubled.
- ``name[type]:value``: the type is ``format_type_be`` (no modifier: ``numeric``, ``character
  varying[]``, ``timestamp with time zone``, ``"My Type"``; ``char(5)`` prints as ``character``,
  which in DDL means ``char(1)``; types not on the reading session's search_path are
  schema-qualified, and ``pg_recvlogical`` empties it, so a capture file says ``public.mood``
  where the SQL interface says ``mood``). The value is ``null``,
  ``unchanged-toast-datum``, or the type's output text: bare for integers, oid, floats and
  numeric; ``true``/``false`` for boolean; ``B'101'`` for bit strings; otherwise single-quoted
  with ``'`` doubled (backslashes and newlines are left as they are).
- Old images (``old-key:`` of an UPDATE, the tuple of a DELETE) skip NULL columns.

Values come out as PostgreSQL's text form, the same text every decoder yields: booleans ``t`` /
``f``, bit strings without ``B'...'``, quoted literals unquoted and un-doubled, numbers as
printed. Nothing is converted to a float.

What test_decoding does not say, and what the decoder does about it:

- **Which columns are the key.** The columns an old image prints are the replica identity, so
  the key is learnt from a relation's first DELETE or UPDATE ``old-key:``, and relations carry
  ``Column.is_key`` from then on, marked ``Relation.key_inferred``: an old image of a
  ``REPLICA IDENTITY FULL`` row skips its NULL columns too, so the guess may not be a key.
  Before that point a relation's key is unknown (no column is marked): a consumer that needs
  it earlier must take it from the table's definition. When a
  later old image prints a different set of columns, the identity cannot be a key (a key's
  columns are never NULL, so always printed): it is ``REPLICA IDENTITY FULL``, whose old images
  skip NULL columns. From then on every column is the key and old images are completed with
  NULL for the columns they skip. A definition change that loses a key column (a rename, a
  drop) makes the key unknown again until the next old image.
- **Positions.** test_decoding prints no LSN. Through the SQL interface each row has one: the
  change rows carry their record's position, and the COMMIT row sits at the *end* of the commit
  record, so it becomes :attr:`Commit.end_lsn`; the start of the commit record
  (:attr:`Commit.commit_lsn`) is never known. A ``pg_recvlogical -f`` capture has no positions.
- **Commit time** is printed only at COMMIT (``include-timestamp``), so :class:`Begin` has none.
- **A DELETE from a table without replica identity** prints ``(no-tuple-data)``: the change is
  passed on with ``old=None`` (a row went away, nobody can say which); a consumer rebuilding that
  table must refuse it.

Refused with :class:`DecodeError`, because the stream does not hold the data:
``stream-changes`` output (test_decoding prints "streaming change for transaction" instead of the
rows). Two-phase output (``PREPARE TRANSACTION 'gid'`` / ``COMMIT PREPARED`` / ``ROLLBACK
PREPARED``, a slot made with ``pg_recvlogical --two-phase``) is read with ``two_phase=True``:
a transaction's end (COMMIT or PREPARE) is only known at its last row, so every transaction is
held until then (in memory up to ``spill_threshold`` changes, the rest in a temporary file, as
pgoutput's are); a prepared one is held until COMMIT PREPARED, where it comes out in that
commit's order, or dropped at ROLLBACK PREPARED. One still undecided at the end of the stream is
left out and named in :attr:`TestDecodingDecoder.notes`. Without ``two_phase`` such rows are
refused (the changes before them were already passed on as committed).

Capture files: ``pg_recvlogical -f`` writes each row followed by a newline, and a row may itself
contain newlines (inside a quoted value or identifier, or a message's content). Given one line at
a time *without LSN*, the decoder joins a line that ends inside a quote with the following lines
until the quote closes (a message's content is joined until it holds its ``sz`` bytes). A row that
comes with an LSN is a whole row from the SQL interface; an open quote there is damage. Lines
must be split at ``\n`` only and given without it (a value may hold a lone carriage return).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ...errors import DecodeError, StreamCutShort
from ..lsn import Lsn
from ..model import Begin, Change, Column, Commit, Event, Op, RawMessage, Relation, TableName
from .pgoutput.spill import Pending

PLUGIN = "test_decoding"

#: Types whose values test_decoding prints bare (``print_literal``), by ``format_type_be`` name.
_NUMBER_TYPES = frozenset(
    {"smallint", "integer", "bigint", "oid", "real", "double precision", "numeric"}
)
_BIT_TYPES = frozenset({"bit", "bit varying"})
_BARE_TYPES = _NUMBER_TYPES | _BIT_TYPES | {"boolean"}

#: What an integer, float or numeric output function can print.
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|NaN|-?Infinity")
_BITS = re.compile(r"[01]*")
#: ``quote_identifier`` leaves exactly these bare.
_BARE_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
_BEGIN = re.compile(r"BEGIN(?: (\d+))?")
_COMMIT = re.compile(r"COMMIT(?: (\d+))?(?: \(at (.+)\))?")
_MESSAGE = re.compile(r"message: transactional: [01] prefix: .*?, sz: (\d+) content:", re.DOTALL)
_OPS = {"INSERT": Op.INSERT, "UPDATE": Op.UPDATE, "DELETE": Op.DELETE, "TRUNCATE": Op.TRUNCATE}
_TRUNCATE_FLAGS = {"(no-flags)", "restart_seqs", "cascade", "restart_seqs cascade"}
_STREAMING = (
    "opening a streamed block",
    "closing a streamed block",
    "streaming change",
    "streaming truncate",
    "streaming message",
    "committing streamed transaction",
    "aborting streamed",
    "preparing streamed transaction",
)
_TWO_PHASE = ("PREPARE TRANSACTION ", "COMMIT PREPARED ", "ROLLBACK PREPARED ")
#: ``PREPARE TRANSACTION 'gid'``, ``COMMIT PREPARED``, ``ROLLBACK PREPARED``: the gid through
#: ``quote_literal_cstr`` (``E'...'`` when it holds a backslash), then ``, txid N``, `` (at T)``.
_DECIDE = re.compile(
    r"(PREPARE TRANSACTION|COMMIT PREPARED|ROLLBACK PREPARED) (E?)'((?:[^']|'')*)'"
    r"(?:, txid (\d+))?(?: \(at (.+)\))?",
    re.DOTALL,
)
_NO_TUPLE = " (no-tuple-data)"
_NEW_TUPLE = " new-tuple:"
_OLD_KEY = " old-key:"


class _Unchanged:
    """The ``unchanged-toast-datum`` marker: the column kept its (TOASTed) value."""

    def __repr__(self) -> str:
        return "unchanged-toast-datum"


_UNCHANGED = _Unchanged()

#: One printed column: name, type name, canonical text (or None, or the unchanged marker).
_Item = tuple[str, str, str | _Unchanged | None]


class _Malformed(Exception):
    """The row does not follow test_decoding's grammar (the reason is the message)."""


class _Incomplete(Exception):
    """The row ends inside a quote: in a capture file, the rest is on the next lines."""

    def __init__(self, quote: str) -> None:
        super().__init__(f"the row ends inside a {quote}-quoted text")
        self.quote = quote


def server_options(tables: Iterable[TableName | str] = ()) -> list[tuple[str, str]]:
    """Options for ``pg_logical_slot_get_changes`` on a test_decoding slot.

    xids and commit times are needed for stop points; empty transactions are kept because a
    DDL-only transaction (the ``DROP TABLE`` that caused the incident) shows up only as an empty
    BEGIN/COMMIT pair, and its xid and time are what a user stops before. test_decoding cannot
    filter tables on the server: ``tables`` is accepted for symmetry and ignored.
    """
    del tables
    return [("include-xids", "1"), ("include-timestamp", "1"), ("skip-empty-xacts", "0")]


# -- the grammar -------------------------------------------------------------------------------


def _identifier(text: str, pos: int) -> tuple[str, int]:
    """One ``quote_identifier`` output starting at ``pos``: (name, position after it)."""
    if pos < len(text) and text[pos] == '"':
        parts: list[str] = []
        start = pos + 1
        while True:
            end = text.find('"', start)
            if end < 0:
                raise _Incomplete('"')
            if text.startswith('""', end):
                parts.append(text[start : end + 1])
                start = end + 2
                continue
            parts.append(text[start:end])
            name = "".join(parts)
            if not name:
                raise _Malformed(f"an empty quoted identifier at character {pos}")
            return name, end + 1
    match = _BARE_IDENT.match(text, pos)
    if match is None:
        raise _Malformed(f"an identifier was expected at character {pos}")
    return match.group(), match.end()


def _qualified(text: str, pos: int) -> tuple[tuple[str, str], int]:
    """``schema.table`` as ``quote_qualified_identifier`` prints it."""
    schema, pos = _identifier(text, pos)
    if not text.startswith(".", pos):
        raise _Malformed(f"'.' between schema and table was expected at character {pos}")
    name, pos = _identifier(text, pos + 1)
    return (schema, name), pos


def _type_name(text: str, pos: int) -> tuple[str, int]:
    """The type between ``[`` and ``]:`` (it may hold brackets and quoted parts)."""
    i, n = pos, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = i + 1
            while True:
                end = text.find('"', end)
                if end < 0:
                    raise _Incomplete('"')
                if text.startswith('""', end):
                    end += 2
                    continue
                break
            i = end + 1
        elif ch == "]" and text.startswith("]:", i):
            if i == pos:
                raise _Malformed(f"an empty type name at character {pos}")
            return text[pos:i], i + 2
        elif ch == "\n":
            break
        else:
            i += 1
    raise _Malformed(f"the type name starting at character {pos} is not closed by ']:'")


def _literal(text: str, pos: int) -> tuple[str, int]:
    """A single-quoted literal at ``pos`` (``''`` stands for one quote): (content, end)."""
    parts: list[str] = []
    start = pos + 1
    while True:
        end = text.find("'", start)
        if end < 0:
            raise _Incomplete("'")
        if text.startswith("''", end):
            parts.append(text[start : end + 1])
            start = end + 2
            continue
        parts.append(text[start:end])
        return "".join(parts), end + 1


def _value(text: str, pos: int, type_name: str) -> tuple[str | _Unchanged | None, int]:
    """One printed value, as canonical text; checked against what its type can print."""
    if text.startswith("'", pos):
        if type_name in _BARE_TYPES:
            raise _Malformed(f"a quoted value for type {type_name} at character {pos}")
        return _literal(text, pos)
    if text.startswith("B'", pos):
        end = text.find("'", pos + 2)
        if end < 0 or not _BITS.fullmatch(text, pos + 2, end):
            raise _Malformed(f"a malformed bit string at character {pos}")
        if type_name not in _BIT_TYPES:
            raise _Malformed(f"a bit string for type {type_name} at character {pos}")
        return text[pos + 2 : end], end + 1
    end = text.find(" ", pos)
    end = len(text) if end < 0 else end
    token = text[pos:end]
    if token == "null":
        return None, end
    if token == "unchanged-toast-datum":
        return _UNCHANGED, end
    if token in ("true", "false"):
        if type_name != "boolean":
            raise _Malformed(f"{token} for type {type_name} at character {pos}")
        return ("t" if token == "true" else "f"), end
    if _NUMBER.fullmatch(token):
        if type_name not in _NUMBER_TYPES:
            raise _Malformed(f"a bare number for type {type_name} at character {pos}")
        return token, end
    raise _Malformed(f"no value at character {pos}")


def _tuple(text: str, pos: int, *, before_new_tuple: bool) -> tuple[list[_Item] | None, int]:
    """The columns printed from ``pos``; None for ``(no-tuple-data)``.

    With ``before_new_tuple`` (an UPDATE's old key) the tuple ends at `` new-tuple:``; otherwise
    it runs to the end of the row.
    """
    if text.startswith(_NO_TUPLE, pos) and (
        pos + len(_NO_TUPLE) == len(text)
        or (before_new_tuple and text.startswith(_NEW_TUPLE, pos + len(_NO_TUPLE)))
    ):
        return None, pos + len(_NO_TUPLE)
    items: list[_Item] = []
    seen: set[str] = set()
    n = len(text)
    while pos < n:
        if before_new_tuple and text.startswith(_NEW_TUPLE, pos):
            return items, pos
        if text[pos] != " ":
            raise _Malformed(f"a space before the next column was expected at character {pos}")
        name, pos = _identifier(text, pos + 1)
        if not text.startswith("[", pos):
            raise _Malformed(f"'[' after column {name!r} was expected at character {pos}")
        type_name, pos = _type_name(text, pos + 1)
        value, pos = _value(text, pos, type_name)
        if name in seen:
            raise _Malformed(f"column {name!r} is printed twice")
        seen.add(name)
        items.append((name, type_name, value))
    if before_new_tuple:
        raise _Malformed("the old key is not followed by 'new-tuple:'")
    return items, pos


# -- relations ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Table:
    """What the stream has shown of one table so far."""

    schema: str
    name: str
    #: (name, type) in table order, as far as seen.
    columns: tuple[tuple[str, str], ...]
    #: True once a whole row (INSERT, UPDATE's new tuple) listed every column.
    complete: bool
    #: The replica identity's columns, once an old image showed them.
    key: tuple[str, ...] | None = None
    #: The identity is REPLICA IDENTITY FULL (old images differed): every column is the key.
    full_identity: bool = False
    relation: Relation | None = None

    def build(self) -> Relation:
        """The current :class:`Relation` (the same object while nothing changed)."""
        if self.relation is None:
            keys = set(self.key or ())
            self.relation = Relation(
                schema=self.schema,
                name=self.name,
                columns=tuple(
                    Column(name, type_name, None, None, self.full_identity or name in keys)
                    for name, type_name in self.columns
                ),
                complete=self.complete,
                key_inferred=bool(self.key) or self.full_identity,
            )
        return self.relation

    def see_row(self, items: Sequence[_Item]) -> None:
        """A whole row: it lists every column of the table as it is now."""
        columns = tuple((name, type_name) for name, type_name, _ in items)
        if columns != self.columns or not self.complete:
            self.columns, self.complete, self.relation = columns, True, None
            # A key column renamed or dropped: the key must be learnt again (the next old image
            # printing other names is not the identity turning FULL).
            if self.key is not None and not set(self.key) <= {name for name, _ in columns}:
                self.key, self.full_identity = None, False

    def see_part(self, items: Sequence[_Item]) -> None:
        """Some columns (an old image): add what is new, without claiming completeness."""
        known = dict(self.columns)
        if all(known.get(name) == type_name for name, type_name, _ in items):
            return
        known.update((name, type_name) for name, type_name, _ in items)
        self.columns = tuple(known.items())
        self.complete, self.relation = False, None

    def see_identity(self, names: tuple[str, ...]) -> None:
        """An old image printed ``names``: learn (or correct) the replica identity."""
        if not names or self.full_identity:
            return
        if self.key is None:
            self.key, self.relation = names, None
        elif set(names) != set(self.key):
            self.full_identity, self.relation = True, None


class TestDecodingDecoder:
    """Decoder for test_decoding's text rows (any of its options; see the module docstring)."""

    # Not a pytest test class, whatever its name says.
    __test__ = False

    plugin = PLUGIN

    def __init__(
        self,
        *,
        two_phase: bool = False,
        spill_dir: str | None = None,
        spill_threshold: int = 10_000,
    ) -> None:
        #: Hold each transaction until it commits or is prepared (two-phase output).
        self.two_phase = two_phase
        self._spill_dir, self._spill_threshold = spill_dir, spill_threshold
        #: The transaction being held (two-phase), with its Begin.
        self._held: tuple[Begin, Pending] | None = None
        #: Prepared transactions by gid, waiting for COMMIT or ROLLBACK PREPARED.
        self._prepared: dict[str, tuple[Begin, Pending]] = {}
        #: What a reader should know once the stream was read (prepared transactions left out).
        self.notes: list[str] = []
        self._tables: dict[tuple[str, str], _Table] = {}
        self._open = False
        self._xid: int | None = None
        self._begin_where = ""
        self._last_lsn: Lsn | None = None
        self._line = 0
        # A capture-file row cut by newlines: its lines so far, where it started, what closes it.
        self._pending: list[str] | None = None
        self._pending_line = 0
        self._pending_quote = ""
        self._pending_bytes = 0

    # -- the protocol --------------------------------------------------------------------------

    def decode(self, message: RawMessage) -> Sequence[Event]:
        """Decode one row (SQL interface) or one line (capture file, no LSN)."""
        self._line += 1
        text = self._text(message)
        if message.lsn is not None:
            self._last_lsn = message.lsn
        events = (
            self._continue(text, message)
            if self._pending is not None
            else self._row(text, message, self._line)
        )
        if not self.two_phase or not events:
            return events
        out: list[Event] = []
        for event in events:
            if isinstance(event, Begin):
                pending = Pending(
                    event.xid or 0, event.lsn, True, self._spill_threshold, self._spill_dir
                )
                self._held = (event, pending)
            elif isinstance(event, Change):
                assert self._held is not None
                self._held[1].add(0, event)
            else:
                assert self._held is not None
                (begin, pending), self._held = self._held, None
                out.extend(pending.events(begin, event))
        return out

    def _decide(self, text: str, message: RawMessage, line: int) -> Sequence[Event]:
        """A two-phase row: hold the open transaction as prepared, or let one out or drop it."""
        lsn = message.lsn
        match = _DECIDE.fullmatch(text)
        if match is None:
            raise _Malformed("a two-phase row without a quoted transaction identifier")
        verb, escaped, quoted, xid_text, at = match.groups()
        gid = quoted.replace("''", "'")
        if escaped:
            gid = gid.replace("\\\\", "\\")
        if not self.two_phase:
            raise DecodeError(
                f"test_decoding row {_where(lsn, line)} is two-phase output ({verb} "
                f"'{gid}'): a slot's two-phase output is not read; read a copy of the slot made "
                "without two-phase decoding, or capture it with pg_recvlogical",
                plugin=PLUGIN,
                lsn=lsn,
                line=line,
            )
        if verb == "PREPARE TRANSACTION":
            if not self._open or self._held is None:
                raise _Malformed(f"PREPARE TRANSACTION '{gid}' outside a transaction")
            if gid in self._prepared:
                raise _Malformed(f"transaction '{gid}' is prepared twice")
            self._open = False
            self._prepared[gid], self._held = self._held, None
            return ()
        if self._open:
            raise _Malformed(f"{verb} '{gid}' inside transaction {self._xid}")
        held = self._prepared.pop(gid, None)
        if verb == "ROLLBACK PREPARED":
            if held is not None:
                held[1].discard()
            return ()
        if held is None:
            raise DecodeError(
                f"test_decoding row {_where(lsn, line)} commits prepared transaction '{gid}', "
                "whose PREPARE TRANSACTION is not in the stream: its changes are missing; "
                "capture from a point before it was prepared",
                plugin=PLUGIN,
                lsn=lsn,
                line=line,
            )
        begin, pending = held
        xid = _xid(xid_text, message.xid)
        xid = xid if xid is not None else begin.xid
        commit_time = _commit_time(at) if at is not None else None
        return pending.events(
            Begin(xid=xid, commit_time=commit_time, lsn=begin.lsn),
            Commit(xid=xid, commit_lsn=None, end_lsn=lsn, commit_time=commit_time),
        )

    def finish(self) -> Sequence[Event]:
        """The stream ended: a row or a transaction left open means the capture is cut;
        a prepared transaction still undecided is left out (named in :attr:`notes`)."""
        for gid, (begin, pending) in self._prepared.items():
            pending.discard()
            self.notes.append(
                f"prepared transaction '{gid}' (xid {begin.xid}) is neither committed nor "
                "rolled back in the stream, so its changes were left out: if it was committed "
                "later (COMMIT PREPARED), they are missing"
            )
        self._prepared.clear()
        if self._pending is not None and not self._open:
            raise StreamCutShort(
                f"test_decoding stream ends inside a row that starts at line "
                f"{self._pending_line} (an unclosed quote or a short message): the capture is "
                "truncated",
                plugin=PLUGIN,
                line=self._pending_line,
                xid=None,
                what="a row outside any transaction",
                begun=f"at line {self._pending_line}",
            )
        if self._open:
            where = f", last at LSN {self._last_lsn}" if self._last_lsn is not None else ""
            if self._pending is not None:
                where += f", in a row that starts at line {self._pending_line}"
            raise StreamCutShort(
                f"test_decoding stream ends inside transaction {self._xid} (begun "
                f"{self._begin_where}{where}): the capture is truncated",
                plugin=PLUGIN,
                xid=self._xid,
                lsn=self._last_lsn,
                what=f"transaction {self._xid}" if self._xid is not None else "a transaction",
                begun=self._begin_where + where,
            )
        return ()

    # -- rows ----------------------------------------------------------------------------------

    def _text(self, message: RawMessage) -> str:
        data = message.data
        if isinstance(data, str):
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"test_decoding row {_where(message.lsn, self._line)} is not UTF-8 (byte "
                f"{exc.start}): is this test_decoding output?",
                plugin=PLUGIN,
                lsn=message.lsn,
                line=self._line,
            ) from None

    def _error(self, reason: str, lsn: Lsn | None, line: int) -> DecodeError:
        return DecodeError(
            f"test_decoding row {_where(lsn, line)} is malformed: {reason}",
            plugin=PLUGIN,
            lsn=lsn,
            line=line,
        )

    def _continue(self, text: str, message: RawMessage) -> Sequence[Event]:
        """Add one more line to a row a capture file split at its newlines."""
        assert self._pending is not None
        self._pending.append(text)
        if self._pending_bytes:
            self._pending_bytes -= _utf8_length(text) + 1
            if self._pending_bytes > 0:
                return ()
            if self._pending_bytes < 0:
                line = self._pending_line
                self._pending = None
                raise self._error("a message's content is longer than its sz", None, line)
            self._pending, self._pending_bytes = None, 0
            return ()
        if self._pending_quote not in text:
            return ()  # the quote is still open: nothing to parse yet
        whole, line = "\n".join(self._pending), self._pending_line
        self._pending = None
        return self._row(whole, message, line, continued=True)

    def _row(
        self, text: str, message: RawMessage, line: int, *, continued: bool = False
    ) -> Sequence[Event]:
        lsn = message.lsn
        try:
            if text.startswith("table "):
                return self._change(text, message, line)
            if text.startswith("message: "):
                self._message(text, lsn, line)
                return ()
            if text.startswith("BEGIN"):
                return self._begin(text, message, line)
            if text.startswith(_TWO_PHASE):
                return self._decide(text, message, line)
            if text.startswith("COMMIT"):
                return self._commit(text, message, line)
            if text.startswith(_STREAMING):
                raise DecodeError(
                    f"test_decoding row {_where(lsn, line)} is stream-changes output, which "
                    "prints no row data: read the slot with stream-changes off",
                    plugin=PLUGIN,
                    lsn=lsn,
                    line=line,
                )
            raise _Malformed(f"it starts with {text[:40]!r}, which test_decoding never prints")
        except _Incomplete as exc:
            if lsn is not None and not continued:
                raise self._error(str(exc), lsn, line) from None
            self._hold(text, exc.quote, 0, line)
            return ()
        except _Malformed as exc:
            raise self._error(str(exc), lsn, line) from None

    def _hold(self, text: str, quote: str, missing_bytes: int, line: int) -> None:
        """Keep a row that a capture file's newlines cut, until its next lines arrive."""
        self._pending = [text]
        self._pending_quote = quote
        self._pending_bytes = missing_bytes
        self._pending_line = line

    def _message(self, text: str, lsn: Lsn | None, line: int) -> None:
        """``pg_logical_emit_message`` output: not row data, only its length matters here."""
        match = _MESSAGE.match(text)
        if match is None:
            raise _Malformed("a message without 'prefix: ..., sz: N content:'")
        size = int(match.group(1))
        content = _utf8_length(text[match.end() :])
        if content > size:
            raise _Malformed(f"the message content is {content} bytes, longer than sz {size}")
        if content < size:
            if lsn is not None:
                raise _Malformed(f"the message content is {content} bytes, shorter than sz {size}")
            self._hold(text, "", size - content, line)

    def _begin(self, text: str, message: RawMessage, line: int) -> Sequence[Event]:
        match = _BEGIN.fullmatch(text)
        if match is None:
            raise _Malformed("BEGIN is followed by something other than an xid")
        xid = _xid(match.group(1), message.xid)
        if self._open:
            raise _Malformed(f"{text} inside transaction {self._xid} (no COMMIT before it)")
        self._open, self._xid = True, xid
        self._begin_where = _where(message.lsn, line)
        return (Begin(xid=xid, lsn=message.lsn),)

    def _commit(self, text: str, message: RawMessage, line: int) -> Sequence[Event]:
        match = _COMMIT.fullmatch(text)
        if match is None:
            raise _Malformed("COMMIT is followed by something other than an xid and '(at ...)'")
        xid = _xid(match.group(1), message.xid)
        if not self._open:
            raise _Malformed("COMMIT without BEGIN")
        if xid is not None and self._xid is not None and xid != self._xid:
            raise _Malformed(f"COMMIT {xid} closes transaction {self._xid}")
        commit_time = _commit_time(match.group(2)) if match.group(2) is not None else None
        self._open = False
        xid = xid if xid is not None else self._xid
        return (Commit(xid=xid, commit_lsn=None, end_lsn=message.lsn, commit_time=commit_time),)

    def _change(self, text: str, message: RawMessage, line: int) -> Sequence[Event]:
        names = []
        name, pos = _qualified(text, len("table "))
        names.append(name)
        while text.startswith(", ", pos):
            name, pos = _qualified(text, pos + 2)
            names.append(name)
        if not text.startswith(": ", pos):
            raise _Malformed(f"': ' after the table name was expected at character {pos}")
        op_end = text.find(":", pos + 2)
        op = _OPS.get(text[pos + 2 : op_end]) if op_end > 0 else None
        if op is None:
            raise _Malformed(f"INSERT, UPDATE, DELETE or TRUNCATE was expected at character {pos}")
        pos = op_end + 1
        if not self._open:
            raise _Malformed(
                f"a change outside a transaction (no BEGIN before it): {text[: op_end + 1]}"
            )
        if op is Op.TRUNCATE:
            flags = text[pos:]
            if not flags.startswith(" ") or flags[1:] not in _TRUNCATE_FLAGS:
                raise _Malformed(f"unknown TRUNCATE flags {flags.strip()!r}")
            return tuple(
                Change(
                    op=Op.TRUNCATE,
                    relation=self._table(schema, table, None).build(),
                    lsn=message.lsn,
                    xid=self._xid,
                )
                for schema, table in names
            )
        if len(names) != 1:
            raise _Malformed(f"{op.name} names {len(names)} tables")
        schema, table = names[0]
        old_items: list[_Item] | None = None
        if op is Op.UPDATE and text.startswith(_OLD_KEY, pos):
            old_items, pos = _tuple(text, pos + len(_OLD_KEY), before_new_tuple=True)
            if old_items is None:
                raise _Malformed("an old key without data")
            pos += len(_NEW_TUPLE)
        items, pos = _tuple(text, pos, before_new_tuple=False)
        if op is Op.DELETE:
            old_items, items = items, None
        elif items is None:
            raise _Malformed(f"{op.name} without tuple data: the new row is not in the stream")
        state = self._table(schema, table, items)
        old = self._old_image(state, old_items, op)
        new: dict[str, str | None] | None = None
        unchanged: set[str] = set()
        if items is not None:
            new = {}
            for column, _, value in items:
                if isinstance(value, _Unchanged):
                    if op is not Op.UPDATE:
                        raise _Malformed(f"{op.name} with an unchanged-toast-datum in {column!r}")
                    unchanged.add(column)
                else:
                    new[column] = value
        return (
            Change(
                op=op,
                relation=state.build(),
                new=new,
                old=old,
                unchanged_toast=frozenset(unchanged),
                lsn=message.lsn,
                xid=self._xid,
            ),
        )

    def _table(self, schema: str, name: str, row: Sequence[_Item] | None) -> _Table:
        """The table's state, updated with a whole row if one is given."""
        state = self._tables.get((schema, name))
        if state is None:
            state = _Table(schema, name, (), complete=False)
            self._tables[(schema, name)] = state
        if row is not None:
            state.see_row(row)
        return state

    @staticmethod
    def _old_image(
        state: _Table, items: Sequence[_Item] | None, op: Op
    ) -> dict[str, str | None] | None:
        """An old image as values; it also teaches the table's replica identity."""
        if items is None:
            return None
        old: dict[str, str | None] = {}
        for column, _, value in items:
            if isinstance(value, _Unchanged):
                raise _Malformed(f"{op.name} old image with an unchanged-toast-datum in {column!r}")
            old[column] = value
        state.see_part(items)
        state.see_identity(tuple(old))
        if state.full_identity:
            # REPLICA IDENTITY FULL prints the whole old row but skips NULLs.
            for column, _ in state.columns:
                old.setdefault(column, None)
        return old


def _xid(text: str | None, row_xid: int | None) -> int | None:
    """The printed xid (include-xids), else the one the SQL interface gave with the row."""
    return int(text) if text is not None else row_xid


def _commit_time(text: str) -> datetime:
    """``timestamptz_to_str`` output (always ISO, in the decoding session's time zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Malformed(f"commit time {text!r} is not an ISO timestamp") from None
    if moment.tzinfo is None:
        raise _Malformed(f"commit time {text!r} has no time zone")
    return moment


def _utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a message's ``sz`` counts bytes), whatever it holds."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


def _where(lsn: Lsn | None, line: int | None) -> str:
    if lsn is not None:
        return f"at LSN {lsn}"
    return f"at line {line}" if line is not None else "without LSN"
