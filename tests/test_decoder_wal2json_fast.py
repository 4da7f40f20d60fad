"""The wal2json v2 fast path (msgspec) gives exactly what the full path (stdlib) gives.

Numbers must come out as the literal text the plugin printed, never through a float: numeric
values wider than a double, ``-0.10``, exponents beyond a double's range and ``-0`` included.
The strongest check records real wal2json output of such values and compares the decoded text
with PostgreSQL's own text output of the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest
from helpers import Database

from walrecover.db import connect
from walrecover.stream.decoders.wal2json import Wal2JsonV2Decoder, server_options
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Begin, Change, Commit, Event, RawMessage

#: JSON number literals as a plugin could print them, each to be carried as its own text.
LITERALS = (
    "12345678901234567890.123456789012",
    "-0.10",
    "1e400",
    "-1E-400",
    "1E+2",
    "-0",
    "0",
    "-0.0",
    "123456789012345678901234567890123456789",
    "-9223372036854775809",
    "18446744073709551616",
    "7",
)


class _Counting(Wal2JsonV2Decoder):
    """Counts the messages the full path read."""

    def __init__(self) -> None:
        super().__init__()
        self.full = 0

    def _decode_full(self, message: RawMessage) -> Sequence[Event]:
        self.full += 1
        return super()._decode_full(message)


class _FullOnly(Wal2JsonV2Decoder):
    """The decoder as it was: every message through the stdlib parser."""

    def _decode_fast(self, message: RawMessage) -> Sequence[Event] | None:
        return None


def _run(decoder: Wal2JsonV2Decoder, messages: Iterable[RawMessage]) -> list[Event]:
    events = [event for message in messages for event in decoder.decode(message)]
    return events + list(decoder.finish())


def _stream(literal: str, *, as_bytes: bool = False) -> list[RawMessage]:
    frame = '"xid":7,"lsn":"0/1000","nextlsn":"0/1030","timestamp":"2026-12-06 10:00:00+00"'
    texts = [
        f'{{"action":"B",{frame}}}',
        *(
            f'{{"action":"I","xid":7,"lsn":"0/F{i:02X}","schema":"public","table":"t",'
            f'"columns":[{{"name":"id","type":"integer","typeoid":23,"value":{i}}},'
            f'{{"name":"v","type":"numeric","typeoid":1700,"value":{value}}}],'
            '"pk":[{"name":"id","type":"integer","typeoid":23}]}'
            for i, value in enumerate(("1", literal, literal), start=1)
        ),
        f'{{"action":"C",{frame}}}',
    ]
    return [
        RawMessage(text.encode() if as_bytes else text, Lsn(0xF00 + i), 7)
        for i, text in enumerate(texts)
    ]


def _no_float(events: Iterable[Event]) -> None:
    for event in events:
        if isinstance(event, Change):
            for image in (event.new, event.old):
                for value in (image or {}).values():
                    assert value is None or type(value) is str, value


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize("literal", LITERALS)
def test_numbers_keep_their_literal_text(literal: str, as_bytes: bool) -> None:
    decoder = _Counting()
    events = _run(decoder, _stream(literal, as_bytes=as_bytes))
    changes = [e for e in events if isinstance(e, Change)]
    assert [c.new["v"] for c in changes if c.new is not None] == ["1", literal, literal]
    _no_float(events)
    assert events == _run(_FullOnly(), _stream(literal, as_bytes=as_bytes))
    assert isinstance(events[0], Begin) and isinstance(events[-1], Commit)
    # The first change makes the relation (full path); the rest take the fast path unless the
    # literal is one only the full path can carry (an integer zero next to the text "-0").
    assert decoder.full == (3 if literal == "-0" else 1)


def test_real_output_matches_postgresql_text(db: Database) -> None:
    """Real wal2json output of wide and signed numbers, bytea, booleans, NULLs and text: the
    fast path's values equal PostgreSQL's own text of every row, and the full path's events."""
    setup = (
        "CREATE TABLE money (id bigint PRIMARY KEY, n numeric, f float8, r real, b boolean, "
        "x bytea, t text, i8 bigint);"
    )
    rows = (
        "(1, 12345678901234567890.123456789012, -0, 1.5, true, '\\x00ff', 'a\"b\\c', "
        "-9223372036854775808)",
        "(2, -0.10, 1e308, -0.0, false, '\\x', E'line\\nnext', 0)",
        "(3, '1e400', 2.2250738585072014e-308, 3.4e38, NULL, NULL, NULL, 9223372036854775807)",
        "(4, '-1e-400', 0.1, -0, true, '\\xdeadbeef', '', -1)",
    )
    workload = f"INSERT INTO money VALUES {rows[0]}; INSERT INTO money VALUES {', '.join(rows[1:])}"
    with connect(db.dsn, autocommit=True) as conn:
        conn.execute(setup)
        conn.execute("SELECT pg_create_logical_replication_slot('fast', 'wal2json')")
        conn.execute("SET synchronous_commit = on")
        conn.execute(workload)
        flat = [item for pair in server_options() for item in pair]
        messages = [
            RawMessage(data, Lsn.parse(lsn), xid)
            for lsn, xid, data in conn.execute(
                "SELECT lsn::text, xid::text::bigint, data FROM "
                "pg_logical_slot_peek_changes('fast', NULL, NULL, VARIADIC %s::text[])",
                (flat,),
            ).fetchall()
        ]
        truth = {
            row[0]: dict(zip(("id", "n", "f", "r", "b", "x", "t", "i8"), row, strict=True))
            for row in conn.execute(
                "SELECT id::text, n::text, f::text, r::text, boolout(b)::text, x::text, t, "
                "i8::text FROM money"
            ).fetchall()
        }
    decoder = _Counting()
    events = _run(decoder, messages)
    changes = [e for e in events if isinstance(e, Change)]
    got = {c.new["id"]: dict(c.new) for c in changes if c.new is not None}
    assert got.keys() == truth.keys()
    for key, row in truth.items():
        for column, text in row.items():
            assert (key, column, got[key][column]) == (key, column, text)
    assert truth["1"]["n"] == "12345678901234567890.123456789012"
    assert truth["2"]["n"] == "-0.10"
    _no_float(events)
    assert events == _run(_FullOnly(), messages)
    assert decoder.full < len(messages)  # the fast path carried most of the stream
