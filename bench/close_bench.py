"""Benchmark: the audit's close alone (final outcomes, typed columns, hashes, the write).

Usage::

    .venv/bin/python bench/close_bench.py [--rows 300000] [--repeat 3] [--profile]

Writes ``--rows`` bank-like changes (``bench/audit_bench.py``'s stream: bigint, integer,
numeric(12,2), text, timestamptz, text, jsonb) into an audit's parts, then times
``AuditWriter.close`` alone, in a child process per repeat: wall seconds, CPU seconds of the
close (all threads) and the process's peak RSS (before the close and after it), with the memory
set-up of the ``walrecover`` command (Arrow's system allocator, glibc's mmap threshold
fixed). ``--profile`` prints cProfile's top entries of one close instead.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_bench import write_parts

from walrecover.audit.verify import verify_audit
from walrecover.audit.writer import AuditWriter
from walrecover.cli import _fixed_mmap_threshold


def child(rows: int, path: Path, profile: bool) -> None:
    _fixed_mmap_threshold()
    writer = AuditWriter(path, {"tool": "bench"}, partitioned=False)
    writer.start(None, resuming=False)
    write_parts(writer, rows)
    before = resource.getrusage(resource.RUSAGE_SELF)
    peak_before = before.ru_maxrss / 1024
    started = time.monotonic()
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
    written = writer.close()
    seconds = time.monotonic() - started
    if profile:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(35)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert written == rows
    result = verify_audit(path)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": after.ru_maxrss / 1024,
                "peak_before_mb": peak_before,
                "chain_head": writer.chain_head,
                "verify": result.ok,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--path", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.rows, args.path, args.profile)
        return
    for n in range(1 if args.profile else args.repeat):
        with tempfile.TemporaryDirectory(prefix="walrecover-close-bench-") as tmp:
            command = [sys.executable, __file__, "--child", "--rows", str(args.rows)]
            command += ["--path", str(Path(tmp) / "audit.parquet")]
            command += ["--profile"] if args.profile else []
            env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
            proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            if args.profile:
                print(proc.stderr)
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"run {n}: close {out['seconds']:.2f} s wall, {out['cpu_seconds']:.2f} s CPU, "
                f"peak RSS {out['peak_before_mb']:.0f} -> {out['peak_rss_mb']:.0f} MiB, "
                f"verify {out['verify']}, chain {out['chain_head'][:16]}"
            )


if __name__ == "__main__":
    main()
