"""The canonical model's small pieces: LSNs, stop points, table names, transaction grouping.

Where PostgreSQL has its own reading of the same text (``pg_lsn``, ``parse_ident``), the real
server is the oracle: walrecover must read an LSN or a table name the way the server does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from walrecover.drill.cluster import Cluster
from walrecover.errors import StopPointError
from walrecover.stream.decoders import decode_all, make_decoder
from walrecover.stream.lsn import Lsn, parse_optional
from walrecover.stream.model import (
    NO_STOP,
    Begin,
    Change,
    Column,
    Commit,
    Event,
    Op,
    RawMessage,
    Relation,
    StopPoint,
    TableName,
    transactions,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wal2json"
MAX_LSN = (1 << 64) - 1


@pytest.fixture(scope="module")
def pg(cluster: Cluster) -> Iterator[psycopg.Connection[Any]]:
    """One autocommit connection to the session's throwaway server."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


# -- Lsn -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "printed"),
    [
        ("0/0", 0, "0/0"),
        ("0/1", 1, "0/1"),
        ("16/B374D848", 0x16_B374_D848, "16/B374D848"),
        ("16/b374d848", 0x16_B374_D848, "16/B374D848"),
        ("00000000/00000001", 1, "0/1"),
        ("0/FFFFFFFF", 0xFFFF_FFFF, "0/FFFFFFFF"),
        ("1/0", 1 << 32, "1/0"),
        ("FFFFFFFF/FFFFFFFF", MAX_LSN, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_lsn_parse_and_format(text: str, value: int, printed: str) -> None:
    lsn = Lsn.parse(text)
    assert isinstance(lsn, Lsn)
    assert int(lsn) == value
    assert str(lsn) == printed
    assert repr(lsn) == f"Lsn('{printed}')"
    assert Lsn(text) == lsn  # the constructor takes text too
    assert Lsn(value) == lsn
    assert Lsn.parse(str(lsn)) == lsn


def test_lsn_orders_hashes_and_subtracts_as_a_position() -> None:
    texts = ["1/0", "0/FFFFFFFF", "0/10", "0/F", "16/B374D848", "0/0"]
    ordered = sorted(Lsn.parse(t) for t in texts)
    assert [str(x) for x in ordered] == ["0/0", "0/F", "0/10", "0/FFFFFFFF", "1/0", "16/B374D848"]
    assert Lsn.parse("0/FFFFFFFF") < Lsn.parse("1/0")
    assert Lsn.parse("0/10") > Lsn.parse("0/F")  # numeric, not text order
    assert Lsn.parse("1/0") - Lsn.parse("0/FFFFFFFF") == 1
    assert {Lsn.parse("0/A"), Lsn.parse("0/a"), Lsn(10)} == {Lsn(10)}
    assert Lsn.parse("0/10") == 16


def test_parse_optional() -> None:
    assert parse_optional(None) is None
    assert parse_optional("") is None
    assert parse_optional("2/3") == Lsn((2 << 32) | 3)


@pytest.mark.parametrize("value", [-1, 1 << 64, -(1 << 70)])
def test_lsn_out_of_range_raises(value: int) -> None:
    with pytest.raises(StopPointError, match="out of range"):
        Lsn(value)


MALFORMED_LSNS = [
    "",
    "/",
    "0/",
    "/0",
    "1",
    "16B374D848",
    "1/2/3",
    "123456789/0",
    "0/123456789",
    "G/0",
    "0/G",
    "-1/0",
    "+1/0",
    "1_0/0",
    "0x1/0",
    "0X1/0x2",
    "１/0",  # a full-width digit
    "1.0/0",
    "0/1 /2",
]


@pytest.mark.parametrize("text", MALFORMED_LSNS)
def test_malformed_lsn_raises_stop_point_error(text: str) -> None:
    with pytest.raises(StopPointError) as caught:
        Lsn.parse(text)
    assert "is not an LSN" in str(caught.value)


@pytest.mark.parametrize("text", MALFORMED_LSNS)
def test_malformed_lsns_are_malformed_for_postgresql_too(
    pg: psycopg.Connection[Any], text: str
) -> None:
    """The list above is not a matter of taste: the server's pg_lsn rejects every one."""
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        pg.execute("SELECT %s::pg_lsn", (text,))


@pytest.mark.parametrize(
    "text", ["0/0", "16/B374D848", "16/b374d848", "00000000/00000001", "FFFFFFFF/FFFFFFFF"]
)
def test_lsn_reads_like_postgresql(pg: psycopg.Connection[Any], text: str) -> None:
    row = pg.execute(
        "SELECT %s::pg_lsn::text, (%s::pg_lsn - '0/0'::pg_lsn)::numeric::text", (text, text)
    ).fetchone()
    assert row is not None
    assert (str(Lsn.parse(text)), str(int(Lsn.parse(text)))) == (row[0], row[1])


@given(st.integers(min_value=0, max_value=MAX_LSN))
def test_lsn_round_trips(value: int) -> None:
    lsn = Lsn(value)
    text = str(lsn)
    assert text == f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
    assert Lsn.parse(text) == value
    assert Lsn.parse(text.lower()) == value


@given(st.integers(min_value=0, max_value=MAX_LSN), st.integers(min_value=0, max_value=MAX_LSN))
def test_lsn_order_is_integer_order(a: int, b: int) -> None:
    assert (Lsn.parse(str(Lsn(a))) < Lsn.parse(str(Lsn(b)))) == (a < b)


# -- StopPoint -------------------------------------------------------------------------------

X = Lsn.parse("5/1000")
T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def test_stop_before_lsn_uses_the_commit_lsn() -> None:
    stop = StopPoint(lsn=X)
    assert stop.stops(1, Lsn(X - 1), None, None) is False
    assert stop.stops(1, X, None, None) is True  # a commit record starting at X is left out
    assert stop.stops(1, Lsn(X + 1), None, None) is True
    # The commit LSN decides when known, whatever the end says.
    assert stop.stops(1, Lsn(X - 1), Lsn(X + 100), None) is False
    assert stop.stops(1, X, Lsn(X + 100), None) is True


def test_stop_before_lsn_falls_back_to_the_end_lsn() -> None:
    stop = StopPoint(lsn=X)
    assert stop.stops(1, None, Lsn(X - 1), None) is False
    assert stop.stops(1, None, X, None) is False  # ends exactly at X: it started before
    assert stop.stops(1, None, Lsn(X + 1), None) is True


def test_stop_before_lsn_is_undecidable_without_positions() -> None:
    stop = StopPoint(lsn=X)
    assert stop.stops(1, None, None, T0) is None
    assert stop.stops(None, None, None, None) is None


def test_stop_before_xid() -> None:
    stop = StopPoint(xid=742)
    assert stop.stops(742, None, None, None) is True
    assert stop.stops(741, X, X, T0) is False
    assert stop.stops(743, X, X, T0) is False
    assert stop.stops(None, X, X, T0) is None


def test_stop_before_time() -> None:
    stop = StopPoint(time=T0)
    assert stop.stops(1, X, X, T0 - timedelta(microseconds=1)) is False
    assert stop.stops(1, X, X, T0) is True
    assert stop.stops(1, X, X, T0 + timedelta(seconds=1)) is True
    assert stop.stops(1, X, X, None) is None
    # The same instant written in another zone is the same instant.
    paris = timezone(timedelta(hours=1))
    assert stop.stops(1, None, None, datetime(2024, 3, 1, 11, 0, tzinfo=paris)) is True
    assert stop.stops(1, None, None, datetime(2024, 3, 1, 10, 59, tzinfo=paris)) is False


def test_no_stop_point_never_stops() -> None:
    assert not NO_STOP.is_set
    assert StopPoint() == NO_STOP
    assert NO_STOP.stops(None, None, None, None) is False
    assert NO_STOP.stops(1, X, X, T0) is False
    assert NO_STOP.describe() == "end of stream"


def test_stop_point_describe() -> None:
    assert StopPoint(lsn=X).is_set
    assert StopPoint(lsn=X).describe() == "before LSN 5/1000"
    assert StopPoint(xid=9).describe() == "before xid 9"
    assert StopPoint(time=T0).describe() == "before 2024-03-01T10:00:00+00:00"


# -- TableName -------------------------------------------------------------------------------

TABLE_NAMES: list[tuple[str, tuple[str, str]]] = [
    ("transactions", ("public", "transactions")),
    ("public.transactions", ("public", "transactions")),
    ("Bank.Transactions", ("bank", "transactions")),
    ("BANK.TRANSACTIONS", ("bank", "transactions")),
    ('"Bank"."Transactions"', ("Bank", "Transactions")),
    ('bank."Transactions"', ("bank", "Transactions")),
    ('"My Schema"."Ledger.2024"', ("My Schema", "Ledger.2024")),
    ('"a""b"', ("public", 'a"b')),
    ('"select"', ("public", "select")),
    ('"x.y"', ("public", "x.y")),
    ("public . accounts", ("public", "accounts")),
    ("t_1$", ("public", "t_1$")),
    ("Ärger.Übersicht", ("Ärger", "Übersicht")),  # PostgreSQL folds ASCII letters only
    ("ÉTÉ", ("public", "ÉtÉ")),  # only the ASCII T folds
    ('ledger."Ärger"', ("ledger", "Ärger")),
    (' "x" ', ("public", "x")),
]


@pytest.mark.parametrize(("text", "parts"), TABLE_NAMES, ids=[t for t, _ in TABLE_NAMES])
def test_table_name_parse(text: str, parts: tuple[str, str]) -> None:
    name = TableName.parse(text)
    assert (name.schema, name.name) == parts


@pytest.mark.parametrize(("text", "parts"), TABLE_NAMES, ids=[t for t, _ in TABLE_NAMES])
def test_table_names_read_like_postgresql(
    pg: psycopg.Connection[Any], text: str, parts: tuple[str, str]
) -> None:
    """``parse_ident`` is PostgreSQL's own reading of a qualified name: the expectations above
    are the server's, not ours."""
    row = pg.execute("SELECT parse_ident(%s)", (text,)).fetchone()
    assert row is not None
    idents: list[str] = row[0]
    assert tuple(["public", *idents] if len(idents) == 1 else idents) == parts


def test_table_name_default_schema() -> None:
    assert TableName.parse("ledger", default_schema="bank") == TableName("bank", "ledger")
    assert TableName.parse("x.ledger", default_schema="bank") == TableName("x", "ledger")


BAD_TABLE_NAMES = [
    "",
    " ",
    ".",
    "a.",
    ".a",
    "a..b",
    "a.b.c",
    '"unterminated',
    '"a"b',
    'a"b',
    '""',
    "a. .b",
]


@pytest.mark.parametrize("text", BAD_TABLE_NAMES)
def test_bad_table_names_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="table name") as caught:
        TableName.parse(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", [t for t in BAD_TABLE_NAMES if t != "a.b.c"])
def test_bad_table_names_are_bad_for_postgresql_too(pg: psycopg.Connection[Any], text: str) -> None:
    # ("a.b.c" is a valid three-part name to parse_ident, but not a schema.table.)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        pg.execute("SELECT parse_ident(%s)", (text,))


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (TableName("public", "transactions"), "public.transactions"),
        (TableName("Bank", "Transactions"), '"Bank"."Transactions"'),
        (TableName("my schema", "ledger.2024"), '"my schema"."ledger.2024"'),
        (TableName("public", 'a"b'), 'public."a""b"'),
        (TableName("public", "1abc"), 'public."1abc"'),
        (TableName("public", "été"), 'public."été"'),
    ],
)
def test_table_name_str_quotes_when_needed(name: TableName, shown: str) -> None:
    assert str(name) == shown
    assert TableName.parse(shown) == name


@given(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12),
)
def test_table_name_str_round_trips(schema: str, table: str) -> None:
    name = TableName(schema, table)
    assert TableName.parse(str(name)) == name


# -- transactions() --------------------------------------------------------------------------

RELATION = Relation("public", "t", (Column("id", "integer", 23, -1, True),))


def _change(value: str, lsn: int) -> Change:
    return Change(Op.INSERT, RELATION, new={"id": value}, lsn=Lsn(lsn), xid=7)


def test_transactions_group_changes_between_begin_and_commit() -> None:
    events: list[Event] = [
        Begin(7, Lsn(300), Lsn(330), T0, Lsn(100)),
        _change("1", 100),
        _change("2", 200),
        Commit(7, Lsn(300), Lsn(330), T0),
        Begin(8, Lsn(400), Lsn(430), T0 + timedelta(seconds=1), Lsn(330)),
        Commit(8, Lsn(400), Lsn(430), T0 + timedelta(seconds=1)),
        Begin(9, Lsn(500), Lsn(530), None, Lsn(430)),
        _change("3", 450),
        Commit(9, Lsn(500), Lsn(530), None),
    ]
    grouped = list(transactions(events))
    assert [(t.xid, t.commit_lsn, t.end_lsn) for t in grouped] == [
        (7, 300, 330),
        (8, 400, 430),
        (9, 500, 530),
    ]
    assert [[c.new for c in t.changes] for t in grouped] == [
        [{"id": "1"}, {"id": "2"}],
        [],
        [{"id": "3"}],
    ]
    assert grouped[0].commit_time == T0 and grouped[2].commit_time is None


def test_transactions_fill_commit_fields_from_begin() -> None:
    events: list[Event] = [
        Begin(7, Lsn(300), Lsn(330), T0, Lsn(100)),
        _change("1", 100),
        Commit(None),
    ]
    (txn,) = transactions(events)
    assert (txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time) == (7, 300, 330, T0)
    # And the commit's own fields win where it has them.
    events = [Begin(7, None, None, None, Lsn(100)), Commit(8, Lsn(300), Lsn(330), T0)]
    (txn,) = transactions(events)
    assert (txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time) == (8, 300, 330, T0)


def test_transactions_of_an_empty_stream() -> None:
    assert list(transactions([])) == []


def test_transactions_is_lazy() -> None:
    """It yields a transaction as soon as its commit arrives (replay streams it)."""

    def stream() -> Iterator[Event]:
        yield Begin(1, Lsn(10), Lsn(20), T0, Lsn(5))
        yield Commit(1, Lsn(10), Lsn(20), T0)
        raise AssertionError("read past the first commit")

    grouped = transactions(stream())
    assert next(grouped).xid == 1


def test_transactions_of_the_recorded_fixture() -> None:
    with (FIXTURES / "workload.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    messages = [RawMessage(r["data"], Lsn.parse(r["lsn"]), r["xid"]) for r in rows]
    grouped = list(transactions(decode_all(make_decoder("wal2json"), messages)))
    actions = [json.loads(r["data"])["action"] for r in rows]
    assert len(grouped) == actions.count("B") == actions.count("C")
    assert sum(len(t.changes) for t in grouped) == sum(a in "IUDT" for a in actions)
    by_xid: dict[int, int] = {}
    for row, action in zip(rows, actions, strict=True):
        if action in "IUDT":
            by_xid[row["xid"]] = by_xid.get(row["xid"], 0) + 1
    assert {t.xid: len(t.changes) for t in grouped if t.changes} == by_xid
