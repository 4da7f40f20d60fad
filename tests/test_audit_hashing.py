"""The audit's hot path keeps its bytes: the row hash, the images' JSON and the typed columns are
what the stdlib-based definition gives, so audits written before and after verify alike; and no
float appears on the way from an image's exact text to the hashed content or a money column."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from walrecover.audit import supersede
from walrecover.audit.format import (
    CHAIN_SEED,
    HASHED,
    PART_SCHEMA,
    hash_rows,
    list_json,
    pairs_json,
    values_json,
)
from walrecover.audit.pgarrow import TypedField, arrow_type, typed_arrays
from walrecover.audit.verify import verify_audit
from walrecover.audit.writer import AuditWriter
from walrecover.rebuild.replay import AppliedChange
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Change, Column, Op, Outcome, Relation

_STDLIB = json.JSONEncoder(ensure_ascii=False)
_STDLIB_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def reference_hashes(table: pa.Table, chain: str) -> tuple[list[str], list[str], str]:
    """The row and chain hashes as walrecover defined and computed them before orjson: the
    stdlib's compact JSON of the hashed columns, ``commit_time`` by ``isoformat``."""
    columns = [table.column(name).to_pylist() for name in HASHED]
    at = HASHED.index("commit_time")
    columns[at] = [None if t is None else t.isoformat() for t in columns[at]]
    rows, chains = [], []
    for values in zip(*columns, strict=True):
        row = hashlib.sha256(_STDLIB_COMPACT.encode(values).encode()).hexdigest()
        chain = hashlib.sha256((chain + row).encode()).hexdigest()
        rows.append(row)
        chains.append(chain)
    return rows, chains, chain


def every_code_point() -> list[str]:
    """Every Unicode scalar value, in strings of 512, each with a quote and a backslash."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    return ['"\\' + "".join(chars[i : i + 512]) for i in range(0, len(chars), 512)]


def test_json_builders_write_the_stdlib_bytes_for_every_code_point() -> None:
    for text in every_code_point():
        image = {text: text, "id": None, text[:7]: "1.50"}
        assert pairs_json(image.items()) == _STDLIB.encode(image)
        assert values_json(image) == _STDLIB.encode(image)
        assert list_json([text, None, "x"]) == _STDLIB.encode([text, None, "x"])
    assert pairs_json([]) == "{}" and list_json([]) == "[]"


def hashed_table(texts: list[str]) -> pa.Table:
    start = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    n = len(texts)
    times = [start + timedelta(seconds=i, microseconds=(i % 3) * 250_001) for i in range(n)]
    times[0] = None  # type: ignore[call-overload]
    times[-1] = datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)
    data = {
        "seq": list(range(n)),
        "commit_lsn": [f"0/{i:X}" for i in range(n)],
        "lsn": [None] + [f"1/{i:X}" for i in range(1, n)],
        "xid": [i if i % 4 else None for i in range(n)],
        "commit_time": times,
        "op": ["insert"] * n,
        "relation": [f"public.{t[:40]}" for t in texts],
        "key": [_STDLIB.encode({"id": t}) for t in texts],
        "outcome": ["applied"] * n,
        "new_values": [_STDLIB.encode({"note": t, "amount": "12.30"}) for t in texts],
        "old_values": [None if i % 2 else _STDLIB.encode([t]) for i, t in enumerate(texts)],
    }
    schema = pa.schema([PART_SCHEMA.field(name) for name in HASHED])
    return pa.Table.from_pydict(data, schema=schema)


def test_row_and_chain_hashes_are_the_stdlib_definition_byte_for_byte() -> None:
    table = hashed_table(every_code_point())
    assert hash_rows(table, CHAIN_SEED) == reference_hashes(table, CHAIN_SEED)
    # Chunked input, an empty batch, a chain continued from another head.
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100)])
    assert hash_rows(chunked, "ab" * 32) == reference_hashes(table, "ab" * 32)
    assert hash_rows(table.slice(0, 0), CHAIN_SEED) == ([], [], CHAIN_SEED)


def amount_relation() -> Relation:
    return Relation(
        "public",
        "ledger",
        (
            Column("id", "bigint", 20, -1, True),
            Column("amount", "numeric", 1700, -1),
            Column("fee", "numeric(12,2)", 1700, 786438),
        ),
    )


def test_no_float_between_the_exact_text_and_the_audit(tmp_path: Path) -> None:
    """Amounts that a float would change (0.1 + 0.2, 1e-30, 38 digits) come back exactly: in the
    images' JSON, the hashed content, and the typed columns (Decimal or text, never float)."""
    relation = amount_relation()
    amounts = ["0.30000000000000000000001", "1E-30", "12345678901234567890.123456789012345678"]
    fees = ["0.10", "-99999999.99", "0.01"]
    path = tmp_path / "audit.parquet"
    writer = AuditWriter(path, {"tool": "test"})
    writer.start(None, resuming=False)
    when = datetime(2024, 5, 1, tzinfo=UTC)
    batch = [
        AppliedChange(
            Change(Op.INSERT, relation, new={"id": str(i), "amount": a, "fee": f}),
            100 + i,
            Lsn(0x1000 + i),
            Lsn(0x2000 + i),
            when,
            Outcome.APPLIED,
        )
        for i, (a, f) in enumerate(zip(amounts, fees, strict=True))
    ]
    writer.write(batch)
    writer.commit(Lsn(0x3000))
    writer.close()
    rows = pq.read_table(path).to_pylist()
    for row, amount, fee in zip(rows, amounts, fees, strict=True):
        assert json.loads(row["new_values"]) == {
            "id": str(row["new_id"]),
            "amount": amount,
            "fee": fee,
        }
        assert row["new_amount"] == amount and row["new_fee"] == Decimal(fee)
        assert not any(isinstance(v, float) for v in row.values())
    # Reading images back parses numbers in them exactly, never as floats.
    fields = [
        TypedField(f"new_{c.name}", c.name, "new", c.type_name, *arrow_type(c))
        for c in relation.columns
    ]
    table = pa.table({"new_values": ['{"id": "1", "amount": "0.1", "fee": "0.20"}']})
    typed = [a.to_pylist()[0] for a in typed_arrays(table, fields)]
    assert typed == [1, "0.1", Decimal("0.20")]
    assert verify_audit(path).ok


# -- superseded and removed, columnar ------------------------------------------------------------


def reference_outcomes(rows: list[dict[str, Any]]) -> list[str]:
    """What became of each change, by the definition (row by row, as the SQLite index did)."""
    events = []
    for row in rows:
        if row["outcome"] != "applied":
            continue
        for role, name in enumerate(("_before_identity", "_after_identity")):
            if row[name] is not None:
                events.append((row[name], row["seq"], role, row["op"]))
    events.sort()
    following = {}
    for (k, seq, role, _), nxt in itertools.pairwise(events):
        if role == 1 and nxt[0] == k and nxt[2] == 0:
            following[seq] = (nxt[3], nxt[1])
    cuts = sorted(r["seq"] for r in rows if r["outcome"] == "applied" and r["op"] == "truncate")
    finals = []
    for row in rows:
        final = row["outcome"]
        if final == "applied" and row["op"] in ("insert", "update"):
            cut = next((c for c in cuts if c > row["seq"]), None)
            if row["seq"] in following:
                op, seq = following[row["seq"]]
                removed = op == "delete" or (cut is not None and cut < seq)
                final = "removed" if removed else "superseded"
            elif cut is not None:
                final = "removed"
        finals.append(final)
    return finals


def random_history(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for seq in range(n):
        op = rng.choice(["insert"] * 4 + ["update"] * 4 + ["delete"] * 2 + ["truncate"] * seed)
        key, new_key = f'["{rng.randrange(12)}"]', f'["{rng.randrange(12)}"]'
        if op == "update" and rng.random() < 0.7:
            new_key = key
        if rng.random() < 0.1:  # a keyless row whose image lacked a column: no identity
            key = new_key = None  # type: ignore[assignment]
        rows.append(
            {
                "seq": seq,
                "op": op,
                "outcome": rng.choice(["applied"] * 8 + ["no_row", "after_stop"]),
                "_before_identity": key if op in ("update", "delete") else None,
                "_after_identity": new_key if op in ("insert", "update") else None,
            }
        )
    return rows


@pytest.mark.parametrize("bucket_bytes", [1 << 30, 64])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_final_outcomes_are_the_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket_bytes: int, seed: int
) -> None:
    """Hash-partitioned into buckets (64 bytes: many) or not, the columnar answers are the
    row-by-row definition's, over random histories with truncates, key changes, rows without
    an identity and changes that were not applied; parts are split anywhere."""
    monkeypatch.setattr(supersede, "BUCKET_BYTES", bucket_bytes)
    rows = random_history(seed, 3000)
    schema = pa.schema([PART_SCHEMA.field(n) for n in rows[0]])
    parts = []
    for number, start in enumerate(range(0, len(rows), 700)):
        part = tmp_path / f"part-{number:06d}-{start:016X}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[start : start + 700], schema), part)
        parts.append(part)
    finals = supersede.FinalOutcomes(parts, tmp_path)
    try:
        got = []
        for start in range(0, len(rows), 1000):
            batch = pa.Table.from_pylist(rows[start : start + 1000], schema)
            got += finals.apply(batch).column("outcome").to_pylist()
    finally:
        finals.close()
    assert got == reference_outcomes(rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in parts]
