"""Benchmark: writing and verifying a large audit with bounded memory, against plain pyarrow.

Usage::

    .venv/bin/python bench/audit_bench.py [--rows 1000000] [--dir]

It generates a bank-like stream of row changes (the rehearsal's ``transactions`` table: bigint
key, integer account, numeric(12,2) amount, text, timestamptz, jsonb; corrections by UPDATE,
voids by DELETE, commits spread over several days) and measures, each in its own child process
so each peak RSS is its own:

* ``baseline``: pyarrow writing the same rows plainly (the same typed columns, the same row
  group size, zstd), with no hashing, outcomes or manifest: the floor;
* ``audit``: :class:`walrecover.audit.writer.AuditWriter` writing them as replay drives it (a commit
  every 10,000 changes), then closing (final outcomes, row and chain hashes, manifest);
* ``verify``: :func:`walrecover.audit.verify.verify_audit` over the result.

Every phase streams: memory must not grow with ``--rows`` (run it with 100000 and 1000000 and
compare the peaks). ``--dir`` writes the Hive-partitioned dataset instead of one file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from walrecover.audit.format import (
    META_COLUMNS,
    ROW_GROUP_ROWS,
    audit_schema,
    typed_fields,
    values_json,
)
from walrecover.audit.pgarrow import typed_value
from walrecover.audit.verify import verify_audit
from walrecover.audit.writer import AuditWriter
from walrecover.rebuild.replay import AppliedChange
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Change, Column, Op, Outcome, Relation

RELATION = Relation(
    "public",
    "transactions",
    (
        Column("id", "bigint", 20, -1, True),
        Column("account_id", "integer", 23, -1),
        Column("amount", "numeric(12,2)", 1700, 786438),
        Column("kind", "text", 25, -1),
        Column("created_at", "timestamp with time zone", 1184, -1),
        Column("note", "text", 25, -1),
        Column("meta", "jsonb", 3802, -1),
    ),
)
COMMIT_EVERY = 10_000
START = datetime(2024, 5, 1, 20, 0, tzinfo=UTC)


def changes(rows: int) -> Iterator[AppliedChange]:
    """``rows`` applied changes: inserts, an update of an earlier row every 20th, a delete of
    one every 50th; one change per transaction, commit times 2 s apart (several days)."""
    next_id = 1
    for n in range(rows):
        lsn = Lsn(0x1_0000_0000 + n * 0x100)
        when = START + timedelta(seconds=2 * n)
        stamp = when.isoformat(sep=" ").replace("+00:00", "+00")
        if n % 50 == 49 and next_id > 20:
            change = Change(Op.DELETE, RELATION, old={"id": str(next_id - 11)}, lsn=lsn)
        elif n % 20 == 19 and next_id > 20:
            target = next_id - 3
            change = Change(
                Op.UPDATE,
                RELATION,
                new={
                    "id": str(target),
                    "account_id": str(target % 100 + 1),
                    "amount": f"{(target * 37) % 200000 / 100 - 1000:.2f}",
                    "kind": "corrected",
                    "created_at": stamp,
                    "note": f"payment {target}",
                    "meta": '{"channel": "wire", "fee": 0.25}',
                },
                old={"id": str(target)},
                lsn=lsn,
            )
        else:
            change = Change(
                Op.INSERT,
                RELATION,
                new={
                    "id": str(next_id),
                    "account_id": str(next_id % 100 + 1),
                    "amount": f"{(next_id * 37) % 200000 / 100 - 1000:.2f}",
                    "kind": "credit",
                    "created_at": stamp,
                    "note": f"payment {next_id}",
                    "meta": '{"channel": "card", "fee": 0.25}',
                },
                lsn=lsn,
            )
            next_id += 1
        yield AppliedChange(change, 1000 + n, lsn, Lsn(lsn + 0x30), when, Outcome.APPLIED)


def run_baseline(rows: int, path: Path) -> dict[str, Any]:
    """pyarrow alone: the same typed values, written plainly."""
    schema = audit_schema(RELATION)
    fields = typed_fields(RELATION)
    writer = pq.ParquetWriter(path, schema, compression="zstd")
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for seq, applied in enumerate(changes(rows)):
        change = applied.change
        meta = {
            "seq": seq,
            "commit_lsn": str(applied.commit_lsn),
            "lsn": str(change.lsn),
            "xid": applied.xid,
            "commit_time": applied.commit_time,
            "op": change.op.value,
            "relation": "public.transactions",
            "key": None,
            "outcome": "applied",
            "new_values": values_json(change.new),
            "old_values": values_json(change.old),
        }
        for name, _ in META_COLUMNS:
            columns[name].append(meta[name])
        for typed in fields:
            image = change.new if typed.image == "new" else change.old
            text = image.get(typed.column) if image is not None else None
            columns[typed.name].append(typed_value(text, typed.convert))
        if len(columns["seq"]) >= ROW_GROUP_ROWS:
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            columns = {name: [] for name in schema.names}
    if columns["seq"]:
        writer.write_table(pa.Table.from_pydict(columns, schema=schema))
    writer.close()
    return {"bytes": path.stat().st_size}


def write_parts(writer: AuditWriter, rows: int) -> None:
    """Write ``rows`` of :func:`changes` into a started writer, sealed every
    :data:`COMMIT_EVERY` rows as replay seals them at its commits."""
    batch: list[AppliedChange] = []
    for applied in changes(rows):
        batch.append(applied)
        if len(batch) >= COMMIT_EVERY:
            writer.write(batch)
            writer.commit(batch[-1].commit_lsn)
            batch = []
    if batch:
        writer.write(batch)
        writer.commit(batch[-1].commit_lsn)


def run_audit(rows: int, path: Path, partitioned: bool) -> dict[str, Any]:
    writer = AuditWriter(path, {"tool": "bench"}, partitioned=partitioned)
    writer.start(None, resuming=False)
    write_parts(writer, rows)
    closing = time.monotonic()
    written = writer.close()
    close_seconds = time.monotonic() - closing
    size = (
        sum(p.stat().st_size for p in path.rglob("*.parquet"))
        if partitioned
        else path.stat().st_size
    )
    return {
        "rows": written,
        "bytes": size,
        "outcomes": writer.outcome_counts,
        "close_seconds": close_seconds,
    }


def run_verify(path: Path) -> dict[str, Any]:
    result = verify_audit(path)
    return {"ok": result.ok, "rows": result.rows, "problems": list(result.problems[:3])}


def child(phase: str, rows: int, path: Path, partitioned: bool) -> None:
    started = time.monotonic()
    if phase == "baseline":
        out = run_baseline(rows, path)
    elif phase == "audit":
        out = run_audit(rows, path, partitioned)
    else:
        out = run_verify(path)
    out["seconds"] = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(phase: str, rows: int, path: Path, partitioned: bool) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", phase, "--rows", str(rows), "--path", str(path)]
        + (["--dir"] if partitioned else []),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", action="store_true", help="write a partitioned dataset")
    parser.add_argument("--child", choices=["baseline", "audit", "verify"])
    parser.add_argument("--path", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.path, args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="walrecover-audit-bench-") as tmp:
        work = Path(tmp)
        audit_path = work / ("audit" if args.dir else "audit.parquet")
        baseline = measure("baseline", args.rows, work / "baseline.parquet", False)
        audit = measure("audit", args.rows, audit_path, args.dir)
        verify = measure("verify", args.rows, audit_path, args.dir)
    print(f"rows: {args.rows:,}  layout: {'hive dataset' if args.dir else 'one file'}")
    print(f"{'phase':<10}{'seconds':>10}{'CPU s':>8}{'peak RSS MB':>14}{'MB on disk':>12}")
    for name, out in (("baseline", baseline), ("audit", audit), ("verify", verify)):
        size = f"{out['bytes'] / 1e6:.1f}" if "bytes" in out else "-"
        print(
            f"{name:<10}{out['seconds']:>10.1f}{out['cpu_seconds']:>8.1f}"
            f"{out['peak_rss_mb']:>14.0f}{size:>12}"
        )
    print(f"audit/baseline time: {audit['seconds'] / baseline['seconds']:.2f}x")
    print(
        f"audit's close (outcomes, typed columns, hashes, the file): {audit['close_seconds']:.1f} s"
    )
    print(f"outcomes: {audit['outcomes']}")
    print(f"verify: {'ok' if verify['ok'] else 'FAILED ' + '; '.join(verify['problems'])}")
    if not verify["ok"] or audit["rows"] != args.rows:
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
