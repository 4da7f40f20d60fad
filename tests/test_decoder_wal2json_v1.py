"""The wal2json format-version 1 decoder against real plugin output.

Sources of real output:

- ``fixtures/wal2json_v1/``: our own recording (``scripts/record_text_fixtures.py``) of the same
  workload as ``fixtures/test_decoding/`` (one recording, both plugins), on PostgreSQL 15 +
  wal2json 2.5: the rows walrecover's options give (``write-in-chunks``: pieces of documents),
  the same stream pretty-printed (one document per row, over many lines), the file
  ``pg_recvlogical -f`` wrote from it, and the ground truth (the final tables as COPY prints
  them). Decoding any of them and applying the changes in Python must give the truth, except
  where format 1 cannot carry the data (NaN and Infinity print as null; TRUNCATE is not sent):
  those limitations are asserted explicitly.
- ``../shared/vectors/wal2json/cases.jsonl``: wal2json's own regression outputs in format 1
  (see the citation above the vector tests).
- Hand-made damage, which must raise :class:`DecodeError`, and random input (hypothesis), which
  must raise nothing else.

No test here needs a database.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_model import as_truth, replay, truth_rows

from walrecover.errors import DecodeError
from walrecover.stream.decoders import decode_all
from walrecover.stream.decoders.testdecoding import TestDecodingDecoder
from walrecover.stream.decoders.wal2json_v1 import LIMITATIONS, Wal2JsonV1Decoder, server_options
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Begin, Change, Commit, Event, Op, RawMessage, transactions

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "wal2json_v1"
TEST_DECODING_FIXTURES = ROOT / "fixtures" / "test_decoding"
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
WAL2JSON_CASES = VECTORS / "wal2json" / "cases.jsonl"
LSN = Lsn.parse("0/16B3748")
#: What wal2json prints as JSON null although the value is not NULL (format 1 and 2 alike).
SPECIAL_NUMBERS = {"NaN", "Infinity", "-Infinity"}
NUMBER_TYPES = ("smallint", "integer", "bigint", "numeric", "real", "double precision", "oid")
TRUNCATED_TABLES = {"public.staging", "public.scratch"}


# -- helpers ---------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@cache
def chunk_rows() -> list[dict[str, Any]]:
    """Rows with walrecover's options: pieces of documents (write-in-chunks)."""
    return _rows(FIXTURES / "workload.jsonl")


@cache
def pretty_rows() -> list[dict[str, Any]]:
    """The same stream, pretty-printed, one document per row."""
    return _rows(FIXTURES / "workload_pretty.jsonl")


def messages(rows: Iterable[Mapping[str, Any]]) -> list[RawMessage]:
    return [RawMessage(r["data"], Lsn.parse(r["lsn"]), int(r["xid"])) for r in rows]


@cache
def capture_lines() -> list[str]:
    data = (FIXTURES / "capture.txt").read_bytes().decode("utf-8")
    assert data.endswith("\n")
    return data[:-1].split("\n")


@cache
def expected() -> dict[str, Any]:
    with (FIXTURES / "expected.json").open(encoding="utf-8") as fh:
        result: dict[str, Any] = json.load(fh)
    return result


def decode(messages: Iterable[RawMessage]) -> list[Event]:
    return list(decode_all(Wal2JsonV1Decoder(), messages))


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return decode(messages(chunk_rows()))


def changes(events: Iterable[Event], table: str | None = None) -> list[Change]:
    return [
        e
        for e in events
        if isinstance(e, Change) and (table is None or e.relation.qualified_name == table)
    ]


def essence(events: Iterable[Event]) -> list[tuple[Any, ...]]:
    """What must not depend on how the stream was read (chunks, pretty-print, a file)."""
    return [
        (e.op, e.relation.qualified_name, e.new, e.old, e.unchanged_toast, e.xid)
        for e in changes(events)
    ]


def truth_as_format1(events: Iterable[Event]) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """The ground truth with what format 1 prints as null set to None; the cells changed."""
    number_columns = {
        (change.relation.qualified_name, column.name)
        for change in changes(events)
        for column in change.relation.columns
        if column.type_name.startswith(NUMBER_TYPES)
    }
    tables: dict[str, Any] = {}
    special: set[tuple[str, str]] = set()
    for name, contents in expected()["tables"].items():
        columns = contents["columns"]
        rows = []
        for row in contents["rows"]:
            fixed = []
            for column, value in zip(columns, row, strict=True):
                nulled = (name, column) in number_columns and value in SPECIAL_NUMBERS
                if nulled:
                    special.add((name, column))
                fixed.append(None if nulled else value)
            rows.append(fixed)
        tables[name] = {**contents, "rows": rows}
    return tables, special


def assert_replay_matches_truth(events: list[Event]) -> None:
    """Equal to the truth, but for NaN/Infinity (null in format 1) and truncated tables."""
    tables, special = truth_as_format1(events)
    assert special == {
        ("public.kinds", "free"),
        ("public.kinds", "real4"),
        ("public.kinds", "double8"),
    }
    keys = {name: contents["key"] for name, contents in tables.items()}
    kept = set(keys) - TRUNCATED_TABLES
    replayed = replay(transactions(events), keys, only=kept)
    for name in kept:
        contents = tables[name]
        assert as_truth(replayed[name], contents["columns"]) == truth_rows(contents), name


# -- the recorded workload -------------------------------------------------------------------


def test_fixture_is_small_and_recorded_with_walrecovers_options() -> None:
    size = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert size < 300_000
    truth = expected()
    assert truth["options"] == [list(pair) for pair in server_options()]
    options = dict(server_options())
    assert options["format-version"] == "1" and options["write-in-chunks"] == "1"
    assert "include-transaction" not in options
    # Chunks: a document opens on one row, each change has a row, "]}" closes it.
    data = [row["data"] for row in chunk_rows()]
    assert data[0].startswith('{"xid":') and data[0].endswith('"change":[')
    assert data.count("]}") == sum(d.startswith('{"xid":') for d in data) > 10
    assert all("\n" in row["data"] for row in pretty_rows())
    assert len(capture_lines()) > 10 * len(pretty_rows())


def test_replay_of_the_chunked_rows_equals_the_ground_truth(events: list[Event]) -> None:
    assert_replay_matches_truth(events)


def test_pretty_rows_and_the_capture_file_decode_to_the_same_changes(events: list[Event]) -> None:
    pretty = decode(messages(pretty_rows()))
    from_file = decode(RawMessage(line) for line in capture_lines())
    assert essence(pretty) == essence(from_file) == essence(events)
    assert_replay_matches_truth(from_file)
    # Without chunks no change has a row of its own, hence no LSN; a file has none at all.
    assert {c.lsn for c in changes(pretty)} == {None}
    assert {c.lsn for c in changes(from_file)} == {None}
    assert [(c.xid, c.end_lsn, c.commit_time) for c in pretty if isinstance(c, Commit)] == [
        (c.xid, c.end_lsn, c.commit_time) for c in from_file if isinstance(c, Commit)
    ]


def test_truncate_is_not_carried_by_format_1(events: list[Event]) -> None:
    """The documented limitation: the rows a TRUNCATE removed come back, and collide."""
    assert "TRUNCATE" in LIMITATIONS and "format-version 2" in LIMITATIONS
    assert not [c for c in changes(events) if c.op is Op.TRUNCATE]
    staging = changes(events, "public.staging")
    inserted = [c.new["id"] for c in staging if c.op is Op.INSERT and c.new]
    assert inserted == ["1", "2", "2", "3"]  # 2 again after the (invisible) TRUNCATE
    keys = {name: contents["key"] for name, contents in expected()["tables"].items()}
    with pytest.raises(AssertionError, match="insert of existing row"):
        replay(transactions(events), keys, only={"public.staging"})


def test_nan_and_infinity_arrive_as_null(events: list[Event]) -> None:
    """The documented limitation: wal2json cannot tell NaN and Infinity from NULL."""
    assert "NaN and Infinity" in LIMITATIONS
    inserted = {
        c.new["id"]: c.new for c in changes(events, "public.kinds") if c.op is Op.INSERT and c.new
    }
    two = inserted["2"]
    assert two["real4"] is None and two["double8"] is None  # 'NaN' and 'Infinity' in the table
    assert two["free"] is not None  # ordinary numbers are kept


def test_only_committed_transactions_appear(events: list[Event]) -> None:
    truth = expected()
    txns = list(transactions(events))
    with_changes = [t.xid for t in txns if t.changes]
    # The transaction that only truncated is empty in format 1; every other one has its rows.
    lost = [xid for xid in truth["committed_xids"] if xid not in with_changes]
    assert len(lost) == 1 and [t.changes for t in txns if t.xid == lost[0]] == [()]
    assert with_changes == [xid for xid in truth["committed_xids"] if xid != lost[0]]
    assert not {e.xid for e in events} & set(truth["aborted_xids"])
    values = {
        v for c in changes(events) for image in (c.new, c.old) for v in (image or {}).values()
    }
    assert "aborted" not in values and "666.00" not in values


def test_begin_and_commit_carry_xids_positions_and_times(events: list[Event]) -> None:
    rows = chunk_rows()
    openings = [json.loads(r["data"] + "]}") for r in rows if r["data"].startswith('{"xid":')]
    closings = [r for r in rows if r["data"] == "]}"]
    begins = [e for e in events if isinstance(e, Begin)]
    commits = [e for e in events if isinstance(e, Commit)]
    assert len(begins) == len(commits) == len(openings) == len(closings) > 10
    for begin, commit, opening, closing in zip(begins, commits, openings, closings, strict=True):
        assert begin.xid == commit.xid == opening["xid"] == closing["xid"]
        # Format 1 has no commit LSN: nextlsn is the end of the commit record, where the SQL
        # interface also puts the row that closes the document.
        assert begin.commit_lsn is None and commit.commit_lsn is None
        assert begin.end_lsn == commit.end_lsn == Lsn.parse(opening["nextlsn"])
        assert commit.end_lsn == Lsn.parse(closing["lsn"])
        assert isinstance(commit.commit_time, datetime)
        assert commit.commit_time.utcoffset() == timedelta(0)
        assert begin.commit_time == commit.commit_time


def test_chunked_changes_carry_their_own_row_lsn() -> None:
    decoder = Wal2JsonV1Decoder()
    pieces: dict[Lsn, int] = {}
    for message in messages(chunk_rows()):
        data = str(message.data)
        if data.lstrip(",").startswith('{"kind":"') and '"kind":"message"' not in data:
            assert message.lsn is not None
            pieces[message.lsn] = pieces.get(message.lsn, 0) + 1
        for event in decoder.decode(message):
            if isinstance(event, Change):
                assert event.lsn in pieces


def test_values_are_postgresql_text(events: list[Event]) -> None:
    for change in changes(events):
        for image in (change.new, change.old):
            for value in (image or {}).values():
                assert value is None or isinstance(value, str), value
    inserted = {
        c.new["id"]: c.new for c in changes(events, "public.kinds") if c.op is Op.INSERT and c.new
    }
    one, two = inserted["1"], inserted["2"]
    assert one["free"] == "3.14159265358979323846264338327950288419716939937510"
    assert two["free"] == (
        "-1234567890123456789012345678901234567890.0123456789012345678901234567890"
    )
    assert one["big"] == "9007199254740993" and one["fixed"] == "1234567890.12"
    assert one["double8"] == "1.7976931348623157e+308" and one["real4"] == "0.1"
    assert one["flag"] == "t" and two["flag"] == "f"
    assert one["blob"] == "\\x00ff27deadbeef" and two["blob"] == "\\x"
    assert one["padded"] == "ab   " and one["bits"] == "101" and two["varbits"] == ""
    assert one["note"] == 'O\'Brien "the" tester\ttab\nnew line \\backslash \\x41 Grüße 日本 😀'
    assert one["doc"] == '{"limit": 1000.10,  "tags": ["a", "b"]}'
    assert one["docb"] == '{"n": 12345678901234567890.5, "rate": 0.000000000000000001}'


def test_same_changes_as_test_decoding_from_the_same_recording(events: list[Event]) -> None:
    """One recording, two plugins: the same rows, values and positions, but for the limits."""
    path = TEST_DECODING_FIXTURES / "workload.jsonl"
    if not path.is_file():
        pytest.skip("the test_decoding fixture is not there")
    td_events = list(decode_all(TestDecodingDecoder(), messages(_rows(path))))
    td_changes = [c for c in changes(td_events) if c.op is not Op.TRUNCATE]
    v1_changes = changes(events)
    assert len(td_changes) == len(v1_changes)
    for td, v1 in zip(td_changes, v1_changes, strict=True):
        assert (td.op, td.relation.qualified_name, td.xid, td.lsn) == (
            v1.op,
            v1.relation.qualified_name,
            v1.xid,
            v1.lsn,
        )
        assert td.unchanged_toast == v1.unchanged_toast
        assert td.new is not None or v1.new is None
        if td.new is not None and v1.new is not None:
            assert set(td.new) == set(v1.new)
            for column, value in td.new.items():
                wanted = None if value in SPECIAL_NUMBERS else value
                assert v1.new[column] in (value, wanted), (column, value, v1.new[column])
        if td.old is not None:
            # Old images skip NULLs in both plugins.
            present = {k: v for k, v in td.old.items() if v is not None}
            assert v1.old is not None and {k: v for k, v in v1.old.items() if v is not None} == (
                present
            )
    td_commits = [(c.xid, c.end_lsn, c.commit_time) for c in td_events if isinstance(c, Commit)]
    v1_commits = [(c.xid, c.end_lsn, c.commit_time) for c in events if isinstance(c, Commit)]
    assert td_commits == v1_commits


def test_unchanged_toast_is_marked_and_carried_forward(events: list[Event]) -> None:
    docs = changes(events, "public.docs")
    untouched = [c for c in docs if c.op is Op.UPDATE and c.unchanged_toast]
    assert len(untouched) == 3
    for change in untouched:
        assert change.unchanged_toast == frozenset({"body"})
        assert change.new is not None and "body" not in change.new
        assert change.relation.complete and "body" in change.relation.column_names


def test_relations_carry_keys_types_and_oids(events: list[Event]) -> None:
    # include-pk names the key from the first insert on (of tables with the default identity).
    first: dict[str, tuple[str, ...]] = {}
    for change in changes(events):
        first.setdefault(change.relation.qualified_name, change.relation.key_columns)
    wanted = {name: tuple(t["key"]) for name, t in expected()["tables"].items()}
    assert first == {**wanted, "public.full_ident": ()}
    kinds = changes(events, "public.kinds")[0].relation
    column = kinds.column("fixed")
    assert column is not None and column.type_name == "numeric(12,2)" and column.type_oid == 1700
    # wal2json 2.5 sends no pk for a REPLICA IDENTITY FULL table: its old rows (without their
    # NULLs) teach the key; the second one prints other columns, so every column is the key.
    full = [c for c in changes(events, "public.full_ident") if c.op is not Op.INSERT]
    assert [c.relation.key_columns for c in full] == [
        ("id", "note"),
        ("id", "note", "extra"),
        ("id", "note", "extra"),
    ]
    assert full[0].old == {"id": "1", "note": "one"}
    assert full[2].old == {"id": "3", "note": "three", "extra": "3"}


def test_wal2json_25_stray_comma_is_mended(events: list[Event]) -> None:
    """wal2json 2.5 writes ``{"change":[,{...}]}`` for a non-transactional message."""
    stray = [r["data"] for r in chunk_rows() if r["data"].startswith('{"change":[,')]
    assert len(stray) == 1
    assert not Wal2JsonV1Decoder().decode(RawMessage(stray[0], LSN))
    with pytest.raises(DecodeError):
        Wal2JsonV1Decoder().decode(RawMessage(stray[0].replace("[,", "[,,"), LSN))


def test_limitations_say_what_to_do() -> None:
    assert "cannot carry TRUNCATE" in LIMITATIONS
    assert "whole transaction in one JSON document" in LIMITATIONS
    assert "format-version 2 is the one to choose for big transactions" in LIMITATIONS
    assert "\n" not in LIMITATIONS


# -- wal2json's own regression outputs -------------------------------------------------------
#
# Source: eulerto/wal2json regression tests (expected/*.out, sql/*.sql) at commit
# ac6c8762450bd7207625ed67e68d222517a7026a, plus toast.out regenerated from upstream sql/toast.sql
# on PostgreSQL 15.18 + wal2json 2.5, as collected in ../shared/vectors/wal2json/cases.jsonl
# (see ../shared/vectors/README.md). The records in format-version 1 (the default when the option
# is absent) are used here. Upstream runs never include xids, LSNs or timestamps. Two cases use
# options newer than wal2json 2.5 (rename_column, numeric-data-types-as-string); their output is
# still format 1 and decodes.


def _load_cases() -> list[dict[str, Any]]:
    if not WAL2JSON_CASES.is_file():
        return []
    with WAL2JSON_CASES.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


CASES = _load_cases()
needs_vectors = pytest.mark.skipif(
    not CASES, reason=f"shared test vectors not found at {VECTORS} (CI has them beside the repo)"
)
FORMAT1 = [
    c for c in CASES if c["kind"] == "data" and c["options"].get("format-version", "1") == "1"
]
_TEXT_JSON = json.JSONDecoder(parse_int=str, parse_float=str)


def _case_id(case: dict[str, Any]) -> str:
    return str(case["case_id"])


def _documents(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The case's documents, read independently of the decoder (chunks joined)."""
    text = "".join(case["output"])
    documents, pos = [], 0
    while pos < len(text):
        document, pos = _TEXT_JSON.raw_decode(text, pos)
        documents.append(document)
    return documents


def _canonical(value: Any, type_name: str | None, type_oid: str | None) -> str | None:
    if value is None:
        return None
    if value is True or value is False:
        return "t" if value else "f"
    if type_name == "bytea" or type_oid == "17":
        return "\\x" + str(value)
    return str(value)


def _image(obj: Mapping[str, Any] | None, prefix: str) -> dict[str, str | None] | None:
    if obj is None or f"{prefix}names" not in obj:
        return None
    names, values = obj[f"{prefix}names"], obj[f"{prefix}values"]
    types = obj.get(f"{prefix}types") or [None] * len(names)
    oids = obj.get(f"{prefix}typeoids") or [None] * len(names)
    return {n: _canonical(v, t, o) for n, v, t, o in zip(names, values, types, oids, strict=True)}


@needs_vectors
def test_vector_selection_is_not_empty() -> None:
    assert len(FORMAT1) >= 35
    assert any(c["options"].get("write-in-chunks") == "1" for c in FORMAT1)
    assert sum(c["options"].get("pretty-print") == "1" for c in FORMAT1) > 20


@needs_vectors
@pytest.mark.parametrize("case", FORMAT1, ids=_case_id)
def test_format1_vectors_decode_to_what_the_json_says(case: dict[str, Any]) -> None:
    documents = _documents(case)
    events = decode(RawMessage(text) for text in case["output"])
    transactional = [
        d
        for d in documents
        if not d["change"]
        or not all(e["kind"] == "message" and e["transactional"] is False for e in d["change"])
    ]
    assert sum(isinstance(e, Begin) for e in events) == len(transactional)
    assert sum(isinstance(e, Commit) for e in events) == len(transactional)
    entries = [e for d in documents for e in d["change"] if e["kind"] != "message"]
    found = changes(events)
    assert len(found) == len(entries)
    ops = {"insert": Op.INSERT, "update": Op.UPDATE, "delete": Op.DELETE}
    for change, entry in zip(found, entries, strict=True):
        assert change.op is ops[entry["kind"]]
        assert (change.relation.schema, change.relation.name) == (entry["schema"], entry["table"])
        assert change.new == _image(entry, "column")
        assert change.old == _image(entry.get("oldkeys"), "key")
        assert (change.xid, change.lsn) == (None, None)
        for image in (change.new, change.old):
            for value in (image or {}).values():
                assert value is None or isinstance(value, str)
        if "pk" in entry:
            assert set(change.relation.key_columns) == set(entry["pk"]["pknames"])
    for event in events:
        if isinstance(event, Begin | Commit):
            assert (event.xid, event.commit_lsn, event.end_lsn, event.commit_time) == (
                None,
                None,
                None,
                None,
            )


@needs_vectors
def test_format1_vectors_keep_numeric_text() -> None:
    case = next(c for c in FORMAT1 if c["case_id"] == "expected/typmod.out#1")
    first = changes(decode(RawMessage(t) for t in case["output"]))[0]
    assert first.new is not None
    assert first.new["e"] == "3.540"  # numeric(5,3): a float would print 3.54
    assert first.new["n"] == "t"
    assert first.new["h"] == "teste     "


@needs_vectors
def test_format1_toast_vector_marks_unchanged_columns() -> None:
    case = next(c for c in FORMAT1 if c["case_id"] == "local_generated/toast.out#1")
    updates = [
        c for c in changes(decode(RawMessage(t) for t in case["output"])) if c.op is Op.UPDATE
    ]
    assert updates[0].unchanged_toast == {"toasted_col2"}
    assert updates[1].unchanged_toast == {"toasted_col1", "toasted_col2"}


@needs_vectors
def test_format1_chunked_vector_joins_its_pieces() -> None:
    case = next(c for c in FORMAT1 if c["options"].get("write-in-chunks") == "1")
    assert len(case["output"]) == 4
    events = decode(RawMessage(t) for t in case["output"])
    assert [type(e) for e in events] == [Begin, Commit, Begin, Commit]


# -- damage ----------------------------------------------------------------------------------

OPEN = '{"xid":700,"nextlsn":"0/16B3830","timestamp":"2024-01-01 10:00:00+00","change":['
INSERT = (
    '{"kind":"insert","schema":"public","table":"t","columnnames":["a","b"],'
    '"columntypes":["integer","text"],"columnvalues":[1,"x"]}'
)
CLOSE = "]}"
WHOLE = OPEN + INSERT + CLOSE


def _with(entry: str) -> str:
    return OPEN + entry + CLOSE


MALFORMED: dict[str, list[str | bytes]] = {
    "not utf-8": [b'{"change":[]}\xff'],
    "not a document": ["hello"],
    "format 2 object": ['{"action":"B","xid":1}'],
    "array": ['[{"change":[]}]'],
    "close without open": ["]}"],
    "bad json": ['{"change":[}]}'],
    "change not a list": ['{"change":{}}'],
    "garbage after the document": [WHOLE + " x"],
    "xid not a number": ['{"xid":"abc","change":[]}'],
    "bad nextlsn": ['{"xid":1,"nextlsn":"0/zz","change":[]}'],
    "timestamp not ISO": ['{"xid":1,"timestamp":"Sun Mar 01 08:09:00 2020","change":[]}'],
    "timestamp without zone": ['{"xid":1,"timestamp":"2024-01-01 10:00:00","change":[]}'],
    "entry not an object": [_with("1")],
    "unknown kind": [_with('{"kind":"upsert","schema":"public","table":"t"}')],
    "truncate kind": [_with('{"kind":"truncate","schema":"public","table":"t"}')],
    "no schema": [_with('{"kind":"insert","table":"t","columnnames":[],"columnvalues":[]}')],
    "insert without values": [_with('{"kind":"insert","schema":"public","table":"t"}')],
    "lengths differ": [
        _with('{"kind":"insert","schema":"s","table":"t","columnnames":["a"],"columnvalues":[]}')
    ],
    "names not strings": [
        _with('{"kind":"insert","schema":"s","table":"t","columnnames":[true],"columnvalues":[1]}')
    ],
    "a name twice": [
        _with(
            '{"kind":"insert","schema":"s","table":"t","columnnames":["a","a"],'
            '"columnvalues":[1,2]}'
        )
    ],
    "value is an object": [
        _with('{"kind":"insert","schema":"s","table":"t","columnnames":["a"],"columnvalues":[{}]}')
    ],
    "value is NaN": [
        _with('{"kind":"insert","schema":"s","table":"t","columnnames":["a"],"columnvalues":[NaN]}')
    ],
    "oid not a number": [
        _with(
            '{"kind":"insert","schema":"s","table":"t","columnnames":["a"],'
            '"columntypeoids":["x"],"columnvalues":[1]}'
        )
    ],
    "delete with values": [
        _with('{"kind":"delete","schema":"s","table":"t","columnnames":["a"],"columnvalues":[1]}')
    ],
    "oldkeys not an object": [_with('{"kind":"delete","schema":"s","table":"t","oldkeys":[1]}')],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_raises_decode_error_naming_the_lsn(name: str) -> None:
    decoder = Wal2JsonV1Decoder()
    with pytest.raises(DecodeError) as caught:
        for row in MALFORMED[name]:
            decoder.decode(RawMessage(row, LSN, 700))
        decoder.finish()
    assert str(LSN) in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_complete_document_decodes_after_the_errors_are_ruled_out() -> None:
    """The damage cases above differ from these valid documents only in the damage."""
    for rows in (
        [WHOLE],
        [OPEN, INSERT, CLOSE],
        [OPEN[:20], OPEN[20:] + INSERT[:5], INSERT[5:], "]", "}"],
    ):
        events = decode(RawMessage(row, LSN, 700) for row in rows)
        assert [type(e) for e in events] == [Begin, Change, Commit]
        change = events[1]
        assert isinstance(change, Change) and change.new == {"a": "1", "b": "x"}
        begin = events[0]
        assert isinstance(begin, Begin) and begin.xid == 700
        assert begin.end_lsn == Lsn.parse("0/16B3830")


def test_a_document_cut_off_raises_at_finish() -> None:
    decoder = Wal2JsonV1Decoder()
    assert not decoder.decode(RawMessage(OPEN, LSN, 700))
    assert not decoder.decode(RawMessage(INSERT, Lsn.parse("0/16B3800"), 700))
    with pytest.raises(DecodeError) as caught:
        decoder.finish()
    assert str(LSN) in str(caught.value) and "truncated" in str(caught.value)


def test_a_file_line_that_is_not_json_names_its_line() -> None:
    decoder = Wal2JsonV1Decoder()
    decoder.decode(RawMessage(WHOLE))
    with pytest.raises(DecodeError, match="line 2"):
        decoder.decode(RawMessage("not json"))


# -- anything at all: DecodeError or nothing -----------------------------------------------------


def _feed(rows: Iterable[str | bytes], lsn: Lsn | None) -> None:
    decoder = Wal2JsonV1Decoder()
    with contextlib.suppress(DecodeError):
        for row in rows:
            decoder.decode(RawMessage(row, lsn))
        decoder.finish()


def _real_rows() -> list[str]:
    rows = [r["data"] for r in chunk_rows()] + [r["data"] for r in pretty_rows()]
    rows += [row for case in FORMAT1 for row in case["output"]]
    return [row for row in rows if len(row) < 4000]


REAL_ROWS = _real_rows()
PREFIXES = ["", OPEN, '{"change":[{"kind":"insert","schema":"s","table":"t","columnnames":[']
_FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(prefix=st.sampled_from(PREFIXES), text=st.text(max_size=120), with_lsn=st.booleans())
def test_random_text_only_raises_decode_error(prefix: str, text: str, with_lsn: bool) -> None:
    _feed([prefix + text, CLOSE], LSN if with_lsn else None)


@_FAST
@given(data=st.binary(max_size=120))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    _feed([data], LSN)


@_FAST
@given(index=st.integers(min_value=0), cut=st.integers(min_value=0), with_lsn=st.booleans())
def test_truncated_real_rows_only_raise_decode_error(index: int, cut: int, with_lsn: bool) -> None:
    row = REAL_ROWS[index % len(REAL_ROWS)]
    truncated = row[: cut % (len(row) + 1)]
    _feed([truncated], LSN if with_lsn else None)
    _feed([OPEN, truncated, CLOSE], LSN if with_lsn else None)


def test_a_table_first_seen_in_a_delete_has_its_key_columns() -> None:
    entry = (
        '{"kind":"delete","schema":"public","table":"t","oldkeys":{"keynames":["id","code"],'
        '"keytypes":["integer","text"],"keyvalues":[5,"x"]}}'
    )
    delete = changes(decode([RawMessage(_with(entry), LSN)]))[0]
    assert delete.relation.column_names == ("id", "code")
    assert delete.relation.key_columns == ("id", "code") and not delete.relation.complete
    assert delete.key() == ("5", "x") and delete.old == {"id": "5", "code": "x"}


def test_a_renamed_key_column_is_learnt_again_not_taken_for_full_identity() -> None:
    def update(key: str, old: int, new: int) -> str:
        return (
            f'{{"kind":"update","schema":"public","table":"t","columnnames":["{key}","b"],'
            f'"columntypes":["integer","text"],"columnvalues":[{new},"x"],'
            f'"oldkeys":{{"keynames":["{key}"],"keytypes":["integer"],"keyvalues":[{old}]}}}}'
        )

    events = decode([RawMessage(_with(update("a", 1, 2) + "," + update("c", 2, 3)), LSN)])
    first, second = changes(events)
    assert first.relation.key_columns == ("a",)
    assert second.relation.key_columns == ("c",) and second.old == {"c": "2"}
