"""pgoutput's fast paths give exactly what parsing gives.

:meth:`PgoutputDecoder.decode` reads a plain transaction's Begin, Commit and Inserts, and the
row changes of tables it was not asked for, without building the message objects. The recorded
streams of every protocol version (``fixtures/pgoutput``: every message type, streamed and
prepared transactions, unchanged TOAST, NULLs, a re-created table) are decoded twice, once
through :meth:`~PgoutputDecoder.decode` and once through the parser alone, with and without a
table filter: the events must be equal. Then the damage each fast path must leave to the
parser, which names it.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest

from walrecover.errors import DecodeError
from walrecover.stream.decoders.pgoutput import PgoutputDecoder
from walrecover.stream.decoders.pgoutput.wire import parse_message
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Begin, Change, Event, RawMessage, TableName

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pgoutput"
READS = {"v1": 1, "v2": 2, "v3": 3}
FILTERS: dict[str, tuple[TableName, ...]] = {
    "every table": (),
    "one table": (TableName("public", "big"),),
    "two tables": (TableName("public", "kinds"), TableName("public", "recreated")),
}


@cache
def messages(read: str) -> tuple[RawMessage, ...]:
    with gzip.open(FIXTURES / f"{read}.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return tuple(
        RawMessage(bytes.fromhex(row["hex"]), Lsn.parse(row["lsn"]), int(row["xid"]))
        for row in rows
    )


def parsed_only(decoder: PgoutputDecoder, message: RawMessage) -> Sequence[Event]:
    """What the decoder makes of a message through the parser, no fast path taken (a table
    not wanted still comes out without its images, by :meth:`PgoutputDecoder._skip`)."""
    data = message.data
    assert isinstance(data, bytes)
    if decoder._wanted and data[0] in b"IUD":
        skipped = decoder._skip(data, message.lsn)
        if skipped is not None:
            return skipped
    in_stream = decoder._stream is not None
    parsed = parse_message(data, decoder.proto_version, in_stream=in_stream, lsn=message.lsn)
    return decoder._dispatch(parsed, message.lsn)


@pytest.mark.parametrize("tables", FILTERS)
@pytest.mark.parametrize("read", READS)
def test_the_fast_paths_decode_as_the_parser_does(read: str, tables: str) -> None:
    fast = PgoutputDecoder(READS[read], tables=FILTERS[tables])
    slow = PgoutputDecoder(READS[read], tables=FILTERS[tables])
    fast_events: list[Event] = []
    slow_events: list[Event] = []
    for message in messages(read):
        fast_events.extend(fast.decode(message))
        slow_events.extend(parsed_only(slow, message))
    fast_events.extend(fast.finish())
    slow_events.extend(slow.finish())
    assert fast_events == slow_events
    assert any(isinstance(e, Change) and e.new is not None for e in fast_events)
    assert sum(isinstance(e, Begin) for e in fast_events) > 10


RELATION = (
    b"R"
    + struct.pack(">I", 16384)
    + b"public\0t\0d"
    + struct.pack(">h", 2)
    + b"\x01id\0"
    + struct.pack(">Ii", 23, -1)
    + b"\x00v\0"
    + struct.pack(">Ii", 25, -1)
)
BEGIN = b"B" + struct.pack(">QqI", 0x1000, 0, 700)
COMMIT = b"C" + struct.pack(">BQQq", 0, 0x1000, 0x1010, 0)


def insert(*values: bytes | None) -> bytes:
    body = b"".join(b"n" if v is None else b"t" + struct.pack(">i", len(v)) + v for v in values)
    return b"I" + struct.pack(">I", 16384) + b"N" + struct.pack(">h", len(values)) + body


def run(*data: bytes, tables: Sequence[TableName] = ()) -> list[Event]:
    decoder = PgoutputDecoder(1, tables=tables)
    events: list[Event] = []
    for i, item in enumerate(data):
        events.extend(decoder.decode(RawMessage(item, Lsn(0x100 + i), 700)))
    return events


def test_an_insert_with_a_null_and_utf8_text() -> None:
    events = run(RELATION, BEGIN, insert(b"1", None), insert(b"2", "é€".encode()), COMMIT)
    rows = [e.new for e in events if isinstance(e, Change)]
    assert rows == [{"id": "1", "v": None}, {"id": "2", "v": "é€"}]


@pytest.mark.parametrize(
    ("damaged", "problem"),
    [
        (insert(b"1"), "has 1 columns but relation"),
        (insert(b"1", b"x") + b"\0", "unexpected trailing bytes"),
        (insert(b"1", b"\xff"), "not UTF-8"),
        (insert(b"1", b"x")[:-1], "impossible value length 1"),
        (BEGIN, "Begin at LSN 0/103 inside transaction 700"),
        (b"B" + struct.pack(">QqI", 0x1000, 2**62, 700), "timestamp out of range"),
    ],
    ids=["columns", "trailing", "utf8", "cut", "begin inside", "time"],
)
def test_damage_in_a_plain_transaction_is_named_by_the_parser(damaged: bytes, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        run(RELATION, BEGIN, insert(b"1", b"x"), damaged, COMMIT)


def test_a_begin_with_a_timestamp_out_of_range_is_named() -> None:
    with pytest.raises(DecodeError, match="timestamp out of range"):
        run(RELATION, b"B" + struct.pack(">QqI", 0x1000, 2**62, 700))


def test_a_commit_without_its_begin_is_named() -> None:
    with pytest.raises(DecodeError, match="Commit at LSN 0/101 without its Begin"):
        run(RELATION, COMMIT)


def test_a_skipped_table_comes_out_without_images() -> None:
    events = run(RELATION, BEGIN, insert(b"1", b"x"), COMMIT, tables=[TableName("public", "u")])
    change = next(e for e in events if isinstance(e, Change))
    assert change.new is None and change.relation.name == "t" and change.xid == 700
