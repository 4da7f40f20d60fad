"""Benchmark: the audit's work per row during replay (rows into part files, sealed at commits),
without the close.

Usage::

    .venv/bin/python bench/audit_rows_bench.py [--rows 300000] [--repeat 3] [--profile FILE]

The changes are made first, as the pipeline bench's ledger makes them (an insert into
``transactions`` per source transaction, ten a commit, every column in the image as pgoutput
sends it); then :class:`walrecover.audit.writer.AuditWriter` takes them as replay gives them
(batches of 20,000, a commit after each) and the parts are sealed. It prints, per repeat, the
wall seconds, the process's CPU seconds (every thread), the main thread's CPU seconds and the
parts' size on disk; the best of the repeats is the figure to compare.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_bench import RELATION, START

from walrecover.audit.writer import AuditWriter
from walrecover.rebuild.replay import AppliedChange
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Change, Op, Outcome

BATCH = 20_000
PER_TXN = 10


def changes(rows: int) -> list[AppliedChange]:
    """``rows`` inserts, ``PER_TXN`` a source transaction."""
    out: list[AppliedChange] = []
    for n in range(rows):
        txn = n // PER_TXN
        lsn = Lsn(0x1_0000_0000 + n * 0x200)
        commit = Lsn(0x1_0000_0000 + (txn + 1) * PER_TXN * 0x200)
        when = START + timedelta(seconds=txn)
        amount = (n * 37) % 200000 / 100 - 1000
        new = {
            "id": str(n + 1),
            "account_id": str(n % 1000 + 1),
            "amount": f"{amount:.2f}",
            "kind": "debit" if amount < 0 else "credit",
            "created_at": when.isoformat(sep=" ").replace("+00:00", "+00"),
            "note": f"payment {n + 1}",
            "meta": f'{{"seq": {n + 1}, "channel": "card"}}',
        }
        change = Change(Op.INSERT, RELATION, new=new, lsn=lsn)
        out.append(
            AppliedChange(change, 1000 + txn, commit, Lsn(commit + 0x30), when, Outcome.APPLIED)
        )
    return out


def run(applied: list[AppliedChange], work: Path) -> dict[str, float]:
    writer = AuditWriter(work / "audit.parquet", {"tool": "bench"})
    writer.start(None, resuming=False)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    thread0 = time.thread_time()
    wall0 = time.perf_counter()
    for first in range(0, len(applied), BATCH):
        batch = applied[first : first + BATCH]
        writer.write(batch)
        writer.commit(batch[-1].commit_lsn)
    wall = time.perf_counter() - wall0
    thread = time.thread_time() - thread0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    size = sum(p.stat().st_size for p in writer.parts.glob("part-*.parquet"))
    writer.abort()
    return {"wall": wall, "cpu": cpu, "main": thread, "mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a cProfile of one repeat here")
    args = parser.parse_args()
    applied = changes(args.rows)
    results = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="walrecover-rows-bench-") as tmp:
            results.append(run(applied, Path(tmp)))
            r = results[-1]
            print(
                f"wall {r['wall']:.2f} s  CPU {r['cpu']:.2f} s  main thread {r['main']:.2f} s"
                f"  parts {r['mb']:.1f} MB"
            )
    best = {key: min(r[key] for r in results) for key in results[0]}
    print(
        f"best of {args.repeat}: wall {best['wall']:.2f} s  CPU {best['cpu']:.2f} s"
        f"  main thread {best['main']:.2f} s  parts {best['mb']:.1f} MB"
        f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="walrecover-rows-bench-") as tmp:
            profile = cProfile.Profile()
            profile.enable()
            run(applied, Path(tmp))
            profile.disable()
            profile.dump_stats(args.profile)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
