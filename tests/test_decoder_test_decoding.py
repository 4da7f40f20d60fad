"""The test_decoding decoder against real plugin output.

Three sources of real output:

- ``fixtures/test_decoding/``: our own recording (``scripts/record_text_fixtures.py``) of a
  workload on PostgreSQL 15 with walrecover's options (include-xids, include-timestamp, empty
  transactions kept): the rows of ``pg_logical_slot_peek_changes`` and the file
  ``pg_recvlogical -f`` wrote from the same changes, plus the ground truth (the final tables as
  COPY prints them). Decoding either and applying the changes in Python must give the truth.
- ``../shared/vectors/test_decoding/cases.jsonl``: PostgreSQL's own ``contrib/test_decoding``
  regression and isolation outputs (see the citation above the vector tests).
- Hand-made damage, which must raise :class:`DecodeError` naming where it is, and random input
  (hypothesis), which must raise nothing else.

No test here needs a database.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_model import as_truth, replay, truth_rows

from walrecover.errors import DecodeError
from walrecover.stream.decoders import decode_all
from walrecover.stream.decoders.testdecoding import TestDecodingDecoder, server_options
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import (
    Begin,
    Change,
    Commit,
    Event,
    Op,
    RawMessage,
    Relation,
    transactions,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "test_decoding"
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
TEST_DECODING_CASES = VECTORS / "test_decoding" / "cases.jsonl"
LSN = Lsn.parse("0/16B3748")


# -- helpers ---------------------------------------------------------------------------------


@cache
def fixture_rows() -> list[dict[str, Any]]:
    """The recorded ``pg_logical_slot_peek_changes`` rows: lsn, xid, data."""
    with (FIXTURES / "workload.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def fixture_messages() -> list[RawMessage]:
    return [RawMessage(r["data"], Lsn.parse(r["lsn"]), int(r["xid"])) for r in fixture_rows()]


@cache
def capture_lines() -> list[str]:
    """``pg_recvlogical -f`` output split at newlines only (a value may hold a lone CR)."""
    data = (FIXTURES / "capture.txt").read_bytes().decode("utf-8")
    assert data.endswith("\n")
    return data[:-1].split("\n")


@cache
def expected() -> dict[str, Any]:
    with (FIXTURES / "expected.json").open(encoding="utf-8") as fh:
        result: dict[str, Any] = json.load(fh)
    return result


def decode(messages: Iterable[RawMessage]) -> list[Event]:
    return list(decode_all(TestDecodingDecoder(), messages))


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return decode(fixture_messages())


def changes(events: Iterable[Event], table: str | None = None) -> list[Change]:
    return [
        e
        for e in events
        if isinstance(e, Change) and (table is None or e.relation.qualified_name == table)
    ]


def keys() -> dict[str, list[str]]:
    return {name: contents["key"] for name, contents in expected()["tables"].items()}


def assert_replay_matches_truth(events: Iterable[Event]) -> None:
    replayed = replay(transactions(events), keys())
    for name, contents in expected()["tables"].items():
        assert as_truth(replayed[name], contents["columns"]) == truth_rows(contents), name


def values_of(events: Iterable[Event]) -> list[object]:
    return [
        value
        for change in changes(events)
        for image in (change.new, change.old)
        for value in (image or {}).values()
    ]


# An independent writer of test_decoding's text, to check that decoding loses nothing: render a
# decoded change the way test_decoding.c prints it and compare with the row it came from.

_BARE_NUMBER_TYPES = {"smallint", "integer", "bigint", "oid", "real", "double precision", "numeric"}
#: Reserved words among the identifiers of the fixtures (quote_identifier quotes them).
_RESERVED = {"select"}


def _ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def _literal(type_name: str, value: str | None) -> str:
    if value is None:
        return "null"
    if type_name in _BARE_NUMBER_TYPES:
        return value
    if type_name == "boolean":
        return {"t": "true", "f": "false"}[value]
    if type_name in {"bit", "bit varying"}:
        return f"B'{value}'"
    return "'" + value.replace("'", "''") + "'"


def _types(relation: Relation) -> dict[str, str]:
    return {c.name: c.type_name for c in relation.columns}


def render(change: Change) -> str:
    """``change`` as test_decoding prints it (TRUNCATE without its flags)."""
    relation = change.relation
    head = f"table {_ident(relation.schema)}.{_ident(relation.name)}: {change.op.name}:"
    types = _types(relation)
    if change.op is Op.TRUNCATE:
        return head
    old = ""
    if change.old is not None:
        # Old images skip NULLs; a REPLICA IDENTITY FULL image is completed with them.
        old = "".join(
            f" {_ident(n)}[{types[n]}]:{_literal(types[n], v)}"
            for n, v in change.old.items()
            if v is not None
        )
    if change.op is Op.DELETE:
        return head + (old if change.old is not None else " (no-tuple-data)")
    assert change.new is not None
    new = "".join(
        f" {_ident(c.name)}[{c.type_name}]:"
        + (
            "unchanged-toast-datum"
            if c.name in change.unchanged_toast
            else _literal(c.type_name, change.new[c.name])
        )
        for c in relation.columns
    )
    if change.op is Op.UPDATE and change.old is not None:
        return f"{head} old-key:{old} new-tuple:{new}"
    return head + new


def assert_round_trip(rows: Sequence[str], events: Sequence[Event]) -> None:
    """Every change row renders back to itself from its decoded change."""
    change_rows = [row for row in rows if row.startswith("table ")]
    rendered = [render(change) for change in changes(events)]
    originals: list[str] = []
    for row in change_rows:
        if ": TRUNCATE:" in row:
            # One row names every truncated table; the decoder makes one change of each.
            names = row[len("table ") : row.index(": TRUNCATE:")]
            originals.extend(f"table {name}: TRUNCATE:" for name in _split_names(names))
        else:
            originals.append(row)
    assert rendered == originals


def _split_names(names: str) -> list[str]:
    """``a.b, "c, d".e`` -> the qualified names (commas inside quotes do not split)."""
    parts, current, quoted = [], "", False
    for char in names:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [part.strip() for part in parts]


# -- the recorded workload -------------------------------------------------------------------


def test_fixture_is_small_and_covers_the_grammar() -> None:
    size = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert size < 200_000
    truth = expected()
    assert truth["options"] == [list(pair) for pair in server_options()]
    data = [row["data"] for row in fixture_rows()]
    text = "\n".join(data)
    for needle in (
        "old-key:",
        "new-tuple:",
        "unchanged-toast-datum",
        ": TRUNCATE: restart_seqs",
        "DELETE:",
        'table "My Schema"."Odd.Table": INSERT: "Id"[integer]:1 "col;x"[text]:\'a;b\'',
        '"quote""d"[text]',
        "[character varying]",
        "[timestamp with time zone]",
        "[text[]]",
        "[bit varying]:B'1'",
        "[boolean]:true",
        "[numeric]:NaN",
        "[double precision]:Infinity",
        "message: transactional: 1",
        "message: transactional: 0",
    ):
        assert needle in text, needle
    assert re.search(r"^BEGIN \d+$", data[0])
    assert re.fullmatch(r"COMMIT \d+ \(at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00\)", data[1])
    # Empty transactions are kept (the DDL): a BEGIN directly followed by its COMMIT.
    assert any(a.startswith("BEGIN") and b.startswith("COMMIT") for a, b in pairwise(data))
    # The capture holds the same rows, some of them spread over several lines.
    assert len(capture_lines()) > len(data)


def test_replay_of_the_slot_rows_equals_the_ground_truth(events: list[Event]) -> None:
    assert_replay_matches_truth(events)


def test_replay_of_the_capture_file_equals_the_ground_truth(events: list[Event]) -> None:
    """pg_recvlogical's file, one line at a time without LSNs: the same changes."""
    from_file = decode(RawMessage(line) for line in capture_lines())
    assert_replay_matches_truth(from_file)
    strip = [
        (e.op, e.relation.qualified_name, e.new, e.old, e.unchanged_toast, e.xid)
        for e in changes(from_file)
    ]
    assert strip == [
        (e.op, e.relation.qualified_name, e.new, e.old, e.unchanged_toast, e.xid)
        for e in changes(events)
    ]
    assert all(e.lsn is None for e in changes(from_file))
    file_commits = [e for e in from_file if isinstance(e, Commit)]
    slot_commits = [e for e in events if isinstance(e, Commit)]
    assert [(c.xid, c.commit_time) for c in file_commits] == [
        (c.xid, c.commit_time) for c in slot_commits
    ]
    assert all(c.end_lsn is None for c in file_commits)


def test_every_change_row_renders_back_to_itself(events: list[Event]) -> None:
    assert_round_trip([row["data"] for row in fixture_rows()], events)


def test_only_committed_transactions_appear(events: list[Event]) -> None:
    truth = expected()
    txns = list(transactions(events))
    assert [t.xid for t in txns if t.changes] == truth["committed_xids"]
    seen = {e.xid for e in events}
    assert not seen & set(truth["aborted_xids"])
    texts = set(values_of(events))
    assert "aborted" not in texts
    assert "666" not in texts and "666.00" not in texts
    # The savepoint's transaction kept what came before and after the rollback to savepoint.
    savepoint = next(
        t for t in txns if any(c.new and c.new.get("quantity") == "100.01" for c in t.changes)
    )
    assert [(c.op, c.relation.name) for c in savepoint.changes] == [
        (Op.UPDATE, "kinds"),
        (Op.UPDATE, "positions"),
    ]
    first = savepoint.changes[0].new
    assert first is not None and first["amount"] == "112.50"


def test_begin_and_commit_carry_xids_positions_and_times(events: list[Event]) -> None:
    rows = fixture_rows()
    begin_events = [e for e in events if isinstance(e, Begin)]
    commit_events = [e for e in events if isinstance(e, Commit)]
    begin_rows = [r for r in rows if r["data"].startswith("BEGIN")]
    commit_rows = [r for r in rows if r["data"].startswith("COMMIT")]
    assert len(begin_events) == len(commit_events) == len(begin_rows) == len(commit_rows) > 10
    for begin, commit, b_row, c_row in zip(
        begin_events, commit_events, begin_rows, commit_rows, strict=True
    ):
        assert begin.xid == commit.xid == b_row["xid"] == int(b_row["data"].split()[1])
        # test_decoding gives no commit position but the COMMIT row's: the commit's end.
        assert (begin.commit_lsn, begin.end_lsn, begin.commit_time) == (None, None, None)
        assert begin.lsn == Lsn.parse(b_row["lsn"])
        assert commit.commit_lsn is None
        assert commit.end_lsn == Lsn.parse(c_row["lsn"])
        assert isinstance(commit.commit_time, datetime)
        assert commit.commit_time.utcoffset() == timedelta(0)  # the session runs in UTC
    ends = [c.end_lsn for c in commit_events if c.end_lsn is not None]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    times = [c.commit_time for c in commit_events if c.commit_time is not None]
    assert times == sorted(times)


def _events_by_row() -> list[Sequence[Event]]:
    decoder = TestDecodingDecoder()
    return [decoder.decode(message) for message in fixture_messages()]


def test_changes_carry_their_row_lsn_and_xid() -> None:
    for row, produced in zip(fixture_rows(), _events_by_row(), strict=True):
        for event in produced:
            if isinstance(event, Change):
                assert event.lsn == Lsn.parse(row["lsn"])
                assert event.xid == row["xid"]


def test_values_are_postgresql_text(events: list[Event]) -> None:
    for value in values_of(events):
        assert value is None or isinstance(value, str), value
    # The key is not known yet when these rows are inserted: find them by their id.
    inserted = [c.new for c in changes(events, "public.kinds") if c.op is Op.INSERT and c.new]
    kinds = {row["id"]: row for row in inserted}
    one, two, nulls, four = kinds["1"], kinds["2"], kinds["3"], kinds["4"]
    assert one["note"] == 'O\'Brien "the" tester\ttab\nnew line \\backslash \\x41 Grüße 日本 😀'
    assert one["flag"] == "t" and two["flag"] == "f"
    assert one["bits"] == "101" and one["varbits"] == "1" and two["varbits"] == ""
    assert one["padded"] == "ab   "  # char(n) keeps its padding
    assert one["free"] == "3.14159265358979323846264338327950288419716939937510"
    assert two["free"] == (
        "-1234567890123456789012345678901234567890.0123456789012345678901234567890"
    )
    assert one["big"] == "9007199254740993"  # not representable as a double
    assert one["double8"] == "1.7976931348623157e+308"
    assert two["real4"] == "NaN" and two["double8"] == "Infinity" and four["real4"] == "-Infinity"
    assert one["blob"] == "\\x00ff27deadbeef" and two["blob"] == "\\x"
    assert one["doc"] == '{"limit": 1000.10,  "tags": ["a", "b"]}'  # json keeps its text
    assert one["words"] == '{"a b","with \\"quote\\"",NULL,"NULL","back\\\\\\\\slash",""}'
    assert one["feeling"] == 'it\'s "complicated"' and one["amount"] == "12.50"
    assert one["addr"] == "192.168.0.1" and one["span"] == "1 year 2 mons 3 days 04:05:06.7"
    assert one["doubled"] == "18014398509481986"  # the generated column is printed
    assert two["note"] == (
        " leading space, 'single' and \"double\" quotes,\n\nblank line,\r\nCR LF, "
        "trailing backslash\\"
    )
    assert four["note"] == "null" and four["blob"] == "\\x6e756c6c"
    assert set(nulls) == set(one) and {k for k, v in nulls.items() if v is not None} == {"id"}


def test_quoted_identifiers_and_values_that_look_like_syntax(events: list[Event]) -> None:
    odd = changes(events, "My Schema.Odd.Table")
    assert odd[0].relation.column_names == (
        "Id",
        "col;x",
        "select",
        "new-tuple",
        'quote"d',
        "Ünïcode",
    )
    first, second = odd[0].new, odd[1].new
    assert first is not None and second is not None
    assert first["new-tuple"] == " new-tuple: x[text]:'y'"
    assert first['quote"d'] == 'say "hi"'
    assert second["col;x"] == 'line\n"Id"[integer]:3'
    assert second["select"] == "null" and second["new-tuple"] == "unchanged-toast-datum"
    assert second['quote"d'] == "'" and second["Ünïcode"] is None
    assert [c.op for c in odd] == [Op.INSERT, Op.INSERT, Op.INSERT, Op.UPDATE, Op.DELETE]
    assert odd[3].old == {"Id": "1"} and odd[3].unchanged_toast == frozenset()


def test_unchanged_toast_is_marked_and_carried_forward(events: list[Event]) -> None:
    docs = changes(events, "public.docs")
    untouched = [c for c in docs if c.op is Op.UPDATE and c.unchanged_toast]
    assert len(untouched) == 3  # retitle 1, re-key 2 -> 22, bump 3's revision
    for change in untouched:
        assert change.unchanged_toast == frozenset({"body"})
        assert change.new is not None and "body" not in change.new
        assert change.relation.complete and "body" in change.relation.column_names
    rewritten = [c for c in docs if c.op is Op.UPDATE and not c.unchanged_toast]
    assert len(rewritten) == 1
    body = rewritten[0].new["body"] if rewritten[0].new else None
    assert body is not None and len(body) == 3840


def test_keys_are_learnt_from_old_images(events: list[Event]) -> None:
    """test_decoding never names the key: it is unknown until a DELETE or old-key shows it."""

    def history(table: str) -> list[tuple[Op, tuple[str, ...]]]:
        return [(c.op, c.relation.key_columns) for c in changes(events, table)]

    kinds = history("public.kinds")
    first_old = next(i for i, c in enumerate(changes(events, "public.kinds")) if c.old)
    assert all(key == () for _, key in kinds[:first_old])
    assert all(key == ("id",) for _, key in kinds[first_old:])
    assert history("public.positions")[-1][1] == ("account_id", "currency")
    assert history("My Schema.Odd.Table")[-1][1] == ("Id",)
    assert {key for _, key in history("public.staging")} == {()}
    # REPLICA IDENTITY FULL: the first old image (without the NULL column) looked like a key of
    # (id, note); the next one printed another set, so every column is the key from then on.
    full = changes(events, "public.full_ident")
    updates = [c for c in full if c.op is Op.UPDATE]
    assert updates[0].relation.key_columns == ("id", "note")
    assert updates[0].old == {"id": "1", "note": "one"}
    assert updates[1].relation.key_columns == ("id", "note", "extra")
    assert updates[1].old == {"id": "2", "note": "two", "extra": "2"}
    delete = next(c for c in full if c.op is Op.DELETE)
    assert delete.old == {"id": "3", "note": "three", "extra": "3"}
    assert delete.key() == ("3", "three", "3")


def test_truncate_of_two_tables_gives_one_change_each(events: list[Event]) -> None:
    truncates = [c for c in changes(events) if c.op is Op.TRUNCATE]
    assert [c.relation.qualified_name for c in truncates] == ["public.staging", "public.scratch"]
    assert truncates[0].xid == truncates[1].xid and truncates[0].lsn == truncates[1].lsn
    assert all(c.new is None and c.old is None for c in truncates)


# -- PostgreSQL's own regression outputs -----------------------------------------------------
#
# Source: PostgreSQL contrib/test_decoding regression and isolation tests (expected/*.out,
# sql/*.sql, specs/*.spec) from the development master of 2026-08 (PostgreSQL 19), commit
# f20c4278342f6afc44b856e98a0850f9dd2df0a8, as collected in
# ../shared/vectors/test_decoding/cases.jsonl (see ../shared/vectors/README.md). Upstream runs
# never include xids or commit times. Lines PostgreSQL 15 would not print (virtual generated
# columns, PostgreSQL 19's REPACK) are plain table rows and decode like any other. Deliberately
# refused with DecodeError: stream-changes output (no row data) and two-phase output.


def _load_cases() -> list[dict[str, Any]]:
    if not TEST_DECODING_CASES.is_file():
        return []
    with TEST_DECODING_CASES.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


CASES = _load_cases()
needs_vectors = pytest.mark.skipif(
    not CASES, reason=f"shared test vectors not found at {VECTORS} (CI has them beside the repo)"
)
#: Exact test_decoding output (the corpus also holds a few pgoutput calls, errors, aggregates).
DATA = [c for c in CASES if c["kind"] == "data" and c.get("plugin") == "test_decoding"]
_REFUSED = re.compile(
    r"^(opening a streamed|closing a streamed|streaming |committing streamed|aborting streamed|"
    r"preparing streamed|PREPARE TRANSACTION |COMMIT PREPARED |ROLLBACK PREPARED )"
)
_TABLE_ROW = re.compile(r"^table (.+?): (INSERT|UPDATE|DELETE|TRUNCATE):")


def _case_id(case: dict[str, Any]) -> str:
    return str(case["case_id"]).rsplit("/", 1)[-1]


def _case(suffix: str) -> dict[str, Any]:
    return next(c for c in DATA if c["case_id"].endswith(suffix))


@needs_vectors
def test_vector_selection_is_not_empty() -> None:
    assert len(DATA) >= 120
    assert sum(len(c["output"]) for c in DATA) > 700


@needs_vectors
@pytest.mark.parametrize("case", DATA, ids=_case_id)
def test_vectors_decode_or_are_refused_deliberately(case: dict[str, Any]) -> None:
    rows: list[str] = case["output"]
    refused = [row for row in rows if _REFUSED.match(row)]
    decoder = TestDecodingDecoder()
    if refused:
        kind = "stream-changes" if "stream" in refused[0] else "two-phase"
        with pytest.raises(DecodeError, match=kind):
            for position, row in enumerate(rows, start=1):
                decoder.decode(RawMessage(row, Lsn(position)))
            decoder.finish()
        return
    events = list(decode_all(decoder, (RawMessage(row) for row in rows)))
    assert sum(isinstance(e, Begin) for e in events) == sum(r.startswith("BEGIN") for r in rows)
    assert sum(isinstance(e, Commit) for e in events) == sum(r.startswith("COMMIT") for r in rows)
    wanted = []
    for row in rows:
        match = _TABLE_ROW.match(row)
        if match:
            for name in match.group(1).split(", "):  # upstream names need no quotes
                schema, table = name.split(".")
                wanted.append((match.group(2), schema, table))
    found = [(c.op.name, c.relation.schema, c.relation.name) for c in changes(events)]
    assert found == wanted
    for value in values_of(events):
        assert value is None or isinstance(value, str)
    for event in events:
        if isinstance(event, Begin | Commit):
            assert event.xid is None  # upstream never prints xids
    assert_round_trip(rows, events)


@needs_vectors
def test_vector_nested_quotes_are_undoubled() -> None:
    case = _case("decoding_into_rel.out#2")
    values = [
        c.new["data"] for c in changes(decode(RawMessage(r) for r in case["output"])) if c.new
    ]
    assert values[2] == (
        "table public.changeresult: INSERT: data[text]:'table public.somechange: INSERT: "
        "id[integer]:1'"
    )
    assert (
        "table public.changeresult: INSERT: data[text]:'table public.changeresult: INSERT: "
        "data[text]:''BEGIN'''"
    ) in values


@needs_vectors
def test_vector_toast_marks_unchanged_columns() -> None:
    case = _case("ddl.out#25")
    updates = [
        c for c in changes(decode(RawMessage(r) for r in case["output"])) if c.op is Op.UPDATE
    ]
    assert len(updates) == 1
    assert updates[0].unchanged_toast == {"toasted_col1"}
    assert updates[0].new is not None and "toasted_col1" not in updates[0].new
    assert updates[0].new["rand1"] == "79"


@needs_vectors
def test_vector_replica_identity_changes() -> None:
    """ddl.out: a table turned REPLICA IDENTITY FULL (then given a column), one with a key."""
    events = decode(RawMessage(r) for r in _case("ddl.out#24")["output"])
    without_key = changes(events, "public.table_without_key")
    assert [c.op for c in without_key][:3] == [Op.INSERT, Op.INSERT, Op.DELETE]
    assert without_key[2].old is None  # DELETE: (no-tuple-data): no identity
    assert without_key[-1].relation.key_columns == ("id", "data", "new_column")
    assert without_key[-1].key() == ("2", "3", "someval")
    with_key = changes(events, "public.table_with_pkey")
    assert with_key[0].relation.key_columns == ()  # inserts before any old image
    assert with_key[-1].relation.key_columns == ("id",)
    assert with_key[-1].key() == ("2",)


# -- damage ----------------------------------------------------------------------------------

BEGIN = "BEGIN 700"
INSERT = "table public.t: INSERT: a[integer]:1 b[text]:'x'"
COMMIT = "COMMIT 700 (at 2024-01-01 10:00:00.123456+00)"

MALFORMED: dict[str, list[str | bytes]] = {
    "not utf-8": [b"BEGIN 1\xff"],
    "empty row": [""],
    "unknown row": ["hello"],
    "BEGIN with text": ["BEGIN abc"],
    "BEGIN inside BEGIN": [BEGIN, BEGIN],
    "COMMIT without BEGIN": [COMMIT],
    "COMMIT of another xid": [BEGIN, "COMMIT 701"],
    "commit time not ISO": [BEGIN, "COMMIT 700 (at yesterday)"],
    "commit time without zone": [BEGIN, "COMMIT 700 (at 2024-01-01 10:00:00)"],
    "change before BEGIN": [INSERT],
    "no colon after table": [BEGIN, "table public.t INSERT: a[integer]:1"],
    "unqualified table": [BEGIN, "table t: INSERT: a[integer]:1"],
    "upper-case bare name": [BEGIN, "table Public.t: INSERT: a[integer]:1"],
    "unknown action": [BEGIN, "table public.t: UPSERT: a[integer]:1"],
    "no colon after type": [BEGIN, "table public.t: INSERT: a[integer]1"],
    "type not closed": [BEGIN, "table public.t: INSERT: a[integer:1"],
    "empty type": [BEGIN, "table public.t: INSERT: a[]:1"],
    "quoted integer": [BEGIN, "table public.t: INSERT: a[integer]:'1'"],
    "bare number for text": [BEGIN, "table public.t: INSERT: a[text]:12"],
    "bare word": [BEGIN, "table public.t: INSERT: a[text]:hello"],
    "boolean as yes": [BEGIN, "table public.t: INSERT: a[boolean]:yes"],
    "true for text": [BEGIN, "table public.t: INSERT: a[text]:true"],
    "bad bit string": [BEGIN, "table public.t: INSERT: a[bit]:B'102'"],
    "bit string for text": [BEGIN, "table public.t: INSERT: a[text]:B'1'"],
    "open quote with an LSN": [BEGIN, "table public.t: INSERT: a[text]:'open"],
    "text after a literal": [BEGIN, "table public.t: INSERT: a[text]:'x'y"],
    "two spaces": [BEGIN, "table public.t: INSERT: a[integer]:1  b[integer]:2"],
    "column twice": [BEGIN, "table public.t: INSERT: a[integer]:1 a[integer]:2"],
    "empty quoted name": [BEGIN, "table public.t: INSERT: \"\"[text]:'x'"],
    "insert without data": [BEGIN, "table public.t: INSERT: (no-tuple-data)"],
    "update without data": [BEGIN, "table public.t: UPDATE: (no-tuple-data)"],
    "old key without new tuple": [BEGIN, "table public.t: UPDATE: old-key: a[integer]:1"],
    "unchanged toast in insert": [BEGIN, "table public.t: INSERT: a[text]:unchanged-toast-datum"],
    "unchanged toast in delete": [BEGIN, "table public.t: DELETE: a[text]:unchanged-toast-datum"],
    "unknown truncate flag": [BEGIN, "table public.t: TRUNCATE: sometimes"],
    "insert into two tables": [BEGIN, "table public.t, public.u: INSERT: a[integer]:1"],
    "short message": ["message: transactional: 0 prefix: p, sz: 99 content:short"],
    "long message": ["message: transactional: 0 prefix: p, sz: 1 content:long"],
    "message without size": ["message: transactional: 0 prefix: p content:x"],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_raises_decode_error_naming_the_lsn(name: str) -> None:
    decoder = TestDecodingDecoder()
    with pytest.raises(DecodeError) as caught:
        for row in MALFORMED[name]:
            decoder.decode(RawMessage(row, LSN, 700))
        decoder.finish()
    assert str(LSN) in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_malformed_capture_line_names_its_line() -> None:
    decoder = TestDecodingDecoder()
    decoder.decode(RawMessage(BEGIN))
    with pytest.raises(DecodeError, match="at line 2"):
        decoder.decode(RawMessage("table public.t: INSERT: a[integer]:x"))


@pytest.mark.parametrize(
    "row",
    [
        "opening a streamed block for transaction TXN 700",
        "streaming change for TXN 700",
        "committing streamed transaction",
        "aborting streamed (sub)transaction TXN 701",
    ],
)
def test_stream_changes_output_is_refused(row: str) -> None:
    with pytest.raises(DecodeError, match="stream-changes off"):
        TestDecodingDecoder().decode(RawMessage(row, LSN))


@pytest.mark.parametrize(
    "row",
    ["PREPARE TRANSACTION 'gid', txid 700", "COMMIT PREPARED 'gid'", "ROLLBACK PREPARED 'g'"],
)
def test_two_phase_output_is_refused(row: str) -> None:
    decoder = TestDecodingDecoder()
    decoder.decode(RawMessage(BEGIN, LSN))
    with pytest.raises(DecodeError, match="two-phase"):
        decoder.decode(RawMessage(row, LSN))


def test_truncated_stream_raises_at_finish() -> None:
    decoder = TestDecodingDecoder()
    assert len(decoder.decode(RawMessage(BEGIN, Lsn.parse("0/16B3700")))) == 1
    assert len(decoder.decode(RawMessage(INSERT, LSN))) == 1
    with pytest.raises(DecodeError) as caught:
        decoder.finish()
    assert "700" in str(caught.value) and str(LSN) in str(caught.value)


def test_a_complete_stream_decodes_after_the_errors_are_ruled_out() -> None:
    """The damage cases above differ from this valid stream only in the damage."""
    events = decode(
        [
            RawMessage(BEGIN, Lsn.parse("0/16B3700")),
            RawMessage(INSERT, LSN),
            RawMessage("table public.t: TRUNCATE: restart_seqs cascade", LSN),
            RawMessage("message: transactional: 1 prefix: p, sz: 3 content:a\nb", LSN),
            RawMessage(COMMIT, Lsn.parse("0/16B3800")),
        ]
    )
    assert [type(e) for e in events] == [Begin, Change, Change, Commit]
    insert = events[1]
    assert isinstance(insert, Change) and insert.new == {"a": "1", "b": "x"}
    commit = events[-1]
    assert isinstance(commit, Commit)
    assert commit.commit_time == datetime.fromisoformat("2024-01-01 10:00:00.123456+00:00")
    assert commit.end_lsn == Lsn.parse("0/16B3800") and commit.xid == 700


def test_without_include_xids_the_row_xid_is_used() -> None:
    events = decode(
        [RawMessage("BEGIN", LSN, 42), RawMessage(INSERT, LSN, 42), RawMessage("COMMIT", LSN, 42)]
    )
    assert {e.xid for e in events} == {42}
    # A capture file has no row xid: without include-xids the transaction has none.
    rows = ["BEGIN", INSERT, "COMMIT (at 2024-01-01 10:00:00.5+05:30)"]
    events = decode(RawMessage(row) for row in rows)
    assert {e.xid for e in events} == {None}
    commit = events[-1]
    assert isinstance(commit, Commit) and commit.commit_time is not None
    assert commit.commit_time.utcoffset() == timedelta(hours=5, minutes=30)


# -- capture files: rows cut at their newlines -------------------------------------------------


def test_capture_lines_are_joined_until_the_quote_closes() -> None:
    lines = [
        "BEGIN 9",
        'table public."two',
        "lines\": INSERT: a[text]:'one",
        "",
        "it''s",
        "three' b[integer]:null",
        "message: transactional: 1 prefix: p, sz: 6 content:ab",
        "",
        "cd",
        "COMMIT 9",
    ]
    events = decode(RawMessage(line) for line in lines)
    assert [type(e) for e in events] == [Begin, Change, Commit]
    change = events[1]
    assert isinstance(change, Change)
    assert change.relation.name == "two\nlines"
    assert change.new == {"a": "one\n\nit's\nthree", "b": None}


def test_capture_cut_inside_a_value_raises_at_finish() -> None:
    decoder = TestDecodingDecoder()
    decoder.decode(RawMessage("BEGIN 9"))
    assert decoder.decode(RawMessage("table public.t: INSERT: a[text]:'never closed")) == ()
    with pytest.raises(DecodeError, match="line 2"):
        decoder.finish()


# -- anything at all: DecodeError or nothing -----------------------------------------------------


def _feed(rows: Iterable[str | bytes], lsn: Lsn | None) -> None:
    decoder = TestDecodingDecoder()
    with contextlib.suppress(DecodeError):
        for row in rows:
            decoder.decode(RawMessage(row, lsn))
        decoder.finish()


def _real_lines() -> list[str]:
    lines = [row["data"] for row in fixture_rows()]
    lines += [row for case in DATA for row in case["output"]]
    return [line for line in lines if len(line) < 2000]


REAL_LINES = _real_lines()
PREFIXES = ["", "table public.t: INSERT:", 'table "a""b".c: UPDATE: old-key:', "COMMIT 1 (at "]
_FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(prefix=st.sampled_from(PREFIXES), text=st.text(max_size=120), with_lsn=st.booleans())
def test_random_text_only_raises_decode_error(prefix: str, text: str, with_lsn: bool) -> None:
    _feed(["BEGIN 1", prefix + text, "COMMIT 1"], LSN if with_lsn else None)


@_FAST
@given(data=st.binary(max_size=120))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    _feed([b"BEGIN 1", data], LSN)
    _feed([data], None)


@_FAST
@given(index=st.integers(min_value=0), cut=st.integers(min_value=0), with_lsn=st.booleans())
def test_truncated_real_lines_only_raise_decode_error(index: int, cut: int, with_lsn: bool) -> None:
    line = REAL_LINES[index % len(REAL_LINES)]
    truncated = line[: cut % (len(line) + 1)]
    _feed(["BEGIN 1", truncated, "COMMIT 1"], LSN if with_lsn else None)
    _feed([truncated], None)


def test_counter_of_row_kinds_in_the_fixture() -> None:
    """A guard that the recording still exercises every row kind the decoder reads."""
    kinds = Counter(row["data"].split(" ", 1)[0] for row in fixture_rows())
    assert {"BEGIN", "COMMIT", "table", "message:"} <= set(kinds)


def test_a_table_first_seen_in_a_delete_has_its_key_columns() -> None:
    events = decode(
        RawMessage(row, LSN)
        for row in [BEGIN, "table public.t: DELETE: id[integer]:5 code[text]:'x'", COMMIT]
    )
    delete = changes(events)[0]
    assert delete.relation.column_names == ("id", "code")
    assert delete.relation.key_columns == ("id", "code") and not delete.relation.complete
    assert delete.key() == ("5", "x")


def test_a_renamed_key_column_is_learnt_again_not_taken_for_full_identity() -> None:
    events = decode(
        RawMessage(row, LSN)
        for row in [
            BEGIN,
            "table public.t: UPDATE: old-key: a[integer]:1 new-tuple: a[integer]:2 b[text]:'x'",
            "table public.t: UPDATE: old-key: c[integer]:2 new-tuple: c[integer]:3 b[text]:'x'",
            "table public.t: DELETE: c[integer]:3",
            COMMIT,
        ]
    )
    first, second, delete = changes(events)
    assert first.relation.key_columns == ("a",)
    assert second.relation.key_columns == ("c",) and second.old == {"c": "2"}
    assert delete.relation is second.relation and delete.key() == ("3",)
