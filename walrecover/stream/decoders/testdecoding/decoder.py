"""The test_decoding decoder: rows (or a capture's lines) to the canonical events."""

from __future__ import annotations

from collections.abc import Sequence

from ....errors import DecodeError, StreamCutShort
from ...lsn import Lsn
from ...model import Begin, Change, Commit, Event, Op, RawMessage
from ..pgoutput.spill import Pending
from .grammar import (
    _BEGIN,
    _COMMIT,
    _DECIDE,
    _MESSAGE,
    _NEW_TUPLE,
    _OLD_KEY,
    _OPS,
    _STREAMING,
    _TRUNCATE_FLAGS,
    _TWO_PHASE,
    _commit_time,
    _Incomplete,
    _Item,
    _Malformed,
    _new_image,
    _qualified,
    _tuple,
    _Unchanged,
    _utf8_length,
    _where,
    _xid,
)
from .relations import _Table

PLUGIN = "test_decoding"


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
        new, unchanged = _new_image(items, op)
        return (Change(op, state.build(), new, old, unchanged, message.lsn, self._xid),)

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
