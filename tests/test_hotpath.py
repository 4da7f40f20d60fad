"""The per-change fast paths give exactly what their definitions give.

pgoutput's tuple reader (one loop over the bytes) against the checked reader, the audit's image
JSON against :func:`pairs_json`, and the audit's part rows against the row-by-row definition
they replaced (kept here as the reference).
"""

from __future__ import annotations

import gzip
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrecover.audit import writer as writer_module
from walrecover.audit.format import list_json, pairs_json, values_json
from walrecover.audit.parts import PartRows, image_json, part_rows
from walrecover.audit.writer import AuditWriter
from walrecover.errors import DecodeError
from walrecover.rebuild.applied import AppliedChange
from walrecover.stream.decoders.pgoutput import PgoutputDecoder
from walrecover.stream.decoders.pgoutput.messages import UNCHANGED, Datum
from walrecover.stream.decoders.pgoutput.reader import Reader, tuple_fast
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import (
    Change,
    Column,
    Op,
    Outcome,
    RawMessage,
    Relation,
    TableName,
    Values,
)

_texts = st.text(max_size=12)
_datum = st.one_of(st.none(), _texts, st.just(UNCHANGED))


def _wire(values: list[Datum]) -> bytes:
    out = bytearray(b"N" + struct.pack(">h", len(values)))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            raw = str(value).encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return bytes(out)


def _checked(data: bytes) -> tuple[tuple[Datum, ...], int] | DecodeError:
    reader = Reader(data, what="Insert message", lsn=None, version=1, in_stream=False)
    try:
        return reader._tuple_data_checked(), reader.pos
    except DecodeError as exc:
        return exc


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_datum, max_size=8),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
    st.integers(0, 4),
)
def test_pgoutput_tuple_fast_path_matches_the_checked_reader(
    values: list[Datum], flips: list[tuple[int, int]], cut: int
) -> None:
    """On any bytes, the fast loop gives the checked reader's values and end, or None exactly
    when the checked reader refuses them (which then names the problem)."""
    data = bytearray(_wire(values))
    for where, byte in flips:
        if where < len(data):
            data[where] = byte
    raw = bytes(data[: len(data) - cut] if cut else data)
    checked = _checked(raw)
    fast = tuple_fast(raw, 1)
    if isinstance(checked, DecodeError):
        assert fast is None
    else:
        assert fast == checked
    if not flips and not cut:
        assert fast == (tuple(values), len(raw))
    reader = Reader(raw, what="Insert message", lsn=None, version=1, in_stream=False)
    try:
        got: Any = (reader.tuple_data(), reader.pos)
    except DecodeError as exc:
        got = exc
    if isinstance(checked, DecodeError):
        assert isinstance(got, DecodeError) and str(got) == str(checked)
    else:
        assert got == checked


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=6), st.one_of(st.none(), st.text()), max_size=6)))
def test_image_json_is_pairs_json(images: list[dict[str, str | None]]) -> None:
    for image in images:
        assert values_json(image) == pairs_json(image.items())
        assert image_json(image) == values_json(image)
    assert values_json(None) is None


# -- part rows -----------------------------------------------------------------------------------


def _identity(key: tuple[str | None, ...] | None) -> str | None:
    return None if key is None else list_json(key)


def _row_identity(values: Values | None, relation: Relation) -> str | None:
    if values is None or not relation.columns:
        return None
    if any(name not in values for name in relation.column_names):
        return None
    return list_json([values[name] for name in relation.column_names])


def _reference_row(applied: AppliedChange, seq: int) -> tuple[Any, ...]:
    """The part row as it was defined row by row before the fast path."""
    change = applied.change
    relation = change.relation
    op = change.op
    key = change.key()
    after = applied.after if applied.after is not None else change.new
    before = change.old
    changes_row = op in (Op.UPDATE, Op.DELETE)
    leaves_row = op in (Op.INSERT, Op.UPDATE)
    if relation.key_columns:
        before_identity = _identity(key) if changes_row else None
        after_identity = _identity(change.new_key()) if leaves_row else None
    else:
        before_identity = _row_identity(before, relation) if changes_row else None
        after_identity = _row_identity(after, relation) if leaves_row else None
    return (
        seq,
        str(applied.commit_lsn) if applied.commit_lsn else None,
        str(change.lsn) if change.lsn is not None else None,
        applied.xid,
        applied.commit_time,
        op.value,
        relation.qualified_name,
        pairs_json(zip(relation.key_columns, key, strict=True)) if key is not None else None,
        str(applied.outcome.value),
        values_json(after),
        values_json(before),
        before_identity,
        after_identity,
    )


_NAMES = ("id", "k2", "amount", "note")


def _relation(keys: int) -> Relation:
    return Relation(
        "public",
        "t",
        tuple(Column(name, "text", is_key=i < keys) for i, name in enumerate(_NAMES)),
    )


_image = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(_NAMES), st.one_of(st.none(), st.text(max_size=5))),
)


@st.composite
def _applied(draw: st.DrawFn) -> AppliedChange:
    relation = _relation(draw(st.integers(0, 2)))
    op = draw(st.sampled_from(list(Op)))
    change = Change(
        op,
        relation,
        draw(_image),
        draw(_image),
        frozenset(),
        draw(st.one_of(st.none(), st.integers(0, 2**40).map(Lsn))),
        7,
    )
    return AppliedChange(
        change,
        draw(st.one_of(st.none(), st.integers(0, 2**32))),
        draw(st.one_of(st.none(), st.integers(1, 2**40).map(Lsn))),
        None,
        draw(
            st.sampled_from(
                [None, datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)]
            )
        ),
        draw(st.sampled_from(list(Outcome))),
        draw(_image),
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(_applied(), max_size=12))
def test_part_rows_match_the_row_by_row_definition(batch: list[AppliedChange]) -> None:
    assert part_rows(batch, 5) == [_reference_row(a, seq) for seq, a in enumerate(batch, 5)]
    # The same rows made in two adds, and as the Arrow table the writer writes.
    maker = PartRows()
    seen: list[Relation] = []
    maker.add(batch[:4], seen.append)
    maker.add(batch[4:], seen.append)
    expected = [
        r
        for i, r in enumerate(batch)
        if i == 0 or r.change.relation is not batch[i - 1].change.relation
    ]
    assert seen == [a.change.relation for a in expected]
    table = maker.table(5)
    assert len(maker) == 0
    assert [tuple(row.values()) for row in table.to_pylist()] == part_rows(batch, 5)


# -- pgoutput's Insert fast path ----------------------------------------------------------------

_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pgoutput"


def _recorded(read: str) -> list[RawMessage]:
    with gzip.open(_FIXTURES / f"{read}.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [RawMessage(bytes.fromhex(r["hex"]), Lsn.parse(r["lsn"]), int(r["xid"])) for r in rows]


def _events(decoder: PgoutputDecoder, messages: list[RawMessage]) -> list[Any]:
    events: list[Any] = []
    for message in messages:
        try:
            events.extend(decoder.decode(message))
        except DecodeError as exc:
            events.append(("error", str(exc)))
    events.extend(decoder.finish())
    return events


@pytest.mark.parametrize(("read", "version"), [("v1", 1), ("v2", 2), ("v3", 3)])
@pytest.mark.parametrize("tables", [(), (TableName("public", "accounts"),)])
def test_pgoutput_insert_fast_path_gives_the_parsed_events(
    read: str, version: int, tables: tuple[TableName, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded streams (and each message cut short by a byte) decode to the same events and
    errors with the Insert fast path as through the message parser alone."""
    messages = _recorded(read)
    cut = [RawMessage(m.data[:-1], m.lsn, m.xid) for m in messages if m.data[:1] == b"I"][:50]
    fast = [_events(PgoutputDecoder(version, tables=tables), messages)]
    fast += [_events(PgoutputDecoder(version, tables=tables), [*messages[:40], m]) for m in cut]
    monkeypatch.setattr(PgoutputDecoder, "_insert", lambda self, data, lsn: None)
    parsed = [_events(PgoutputDecoder(version, tables=tables), messages)]
    parsed += [_events(PgoutputDecoder(version, tables=tables), [*messages[:40], m]) for m in cut]
    assert any(isinstance(e, Change) and e.op is Op.INSERT for e in fast[0])
    assert fast == parsed


def test_the_writer_s_parts_hold_the_reference_rows_across_flushes_and_a_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches cut by the writer's buffer (three rows here), relations changing inside a batch,
    rows taken back by a savepoint: the sealed parts hold exactly the reference rows, numbered
    without a gap, and the writer saw every relation's columns."""
    monkeypatch.setattr(writer_module, "BUFFER_ROWS", 3)
    keyed, keyless, two = _relation(1), _relation(0), _relation(2)
    stamp = datetime(2026, 1, 2, tzinfo=UTC)

    def applied(n: int, relation: Relation, op: Op = Op.INSERT) -> AppliedChange:
        image = {"id": str(n), "k2": None, "amount": f"{n}.00", "note": 'é\n"x"'}
        old = {"id": str(n)} if op is not Op.INSERT else None
        change = Change(op, relation, image if op is not Op.DELETE else None, old, lsn=Lsn(n))
        return AppliedChange(change, n // 4, Lsn(100 + n // 4), None, stamp, Outcome.APPLIED)

    kept = [applied(n, keyed if n % 3 else keyless) for n in range(7)]
    taken_back = [applied(n, two) for n in range(7, 11)]
    more = [applied(11, keyed, Op.UPDATE), applied(12, two, Op.DELETE), applied(13, keyless)]
    writer = AuditWriter(tmp_path / "audit.parquet", {"tool": "test"})
    writer.start(None, resuming=False)
    writer.write(kept[:5])
    writer.write(kept[5:])
    writer.savepoint()
    writer.write(taken_back)
    writer.rollback_to_savepoint()
    writer.write(more)
    writer.commit(Lsn(200))

    parts = sorted(writer.parts.glob("part-*.parquet"))
    rows = [tuple(r.values()) for p in parts for r in pq.read_table(p).to_pylist()]
    expected = [_reference_row(a, seq) for seq, a in enumerate(kept + more)]
    assert rows == expected
    assert [c.name for c in writer.final_columns()] == list(_NAMES)
    writer.abort()
