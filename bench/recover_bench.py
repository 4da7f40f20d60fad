"""Benchmark: recovery speed against the server's own decoding, and memory against stream length.

Usage::

    .venv/bin/python bench/recover_bench.py [--transactions 100000] [--scale 4]

On one throwaway cluster it runs the rehearsal workload, drops the table, then measures in the
same run:

* ``decode``: the server decoding the slot alone (``count(*)`` over a copy of the slot with the
  same wal2json options): the floor no client can beat;
* ``load``: ``COPY`` of the final rows into a fresh table: the floor for writing the result;
* ``recover``: ``walrecover.recover`` with an audit, in a child process, with its peak RSS.

It prints ``recover / (decode + load)`` (how far above the floor walrecover is) and, for a stream
``--scale`` times longer, the ratio of peak memory (bounded memory means about 1.0) and of time
(linear work means about ``--scale``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from walrecover.db import connect, one
from walrecover.drill.cluster import Cluster
from walrecover.drill.rehearsal import create_bank, run_workload
from walrecover.stream.decoders.wal2json import server_options

CHILD = """
import json, resource, sys, time
from walrecover.stream.model import TableName
from walrecover.rebuild.recover import recover
dsn, slot, into, audit = sys.argv[1:5]
t0 = time.monotonic()
result = recover(dsn, slot, TableName("public", "transactions"),
                 into=TableName("public", into), audit_path=audit)
print(json.dumps({"seconds": time.monotonic() - t0, "changes": result.changes,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _measure(cluster: Cluster, transactions: int, workdir: Path) -> dict[str, Any]:
    dbname = f"bench{transactions}"
    with connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    dsn = cluster.dsn(dbname)
    with connect(dsn, autocommit=True) as conn:
        create_bank(conn, 100)
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (dbname,))
        run_workload(conn, transactions, 100)
        conn.execute("CREATE TABLE final AS SELECT * FROM transactions")
        conn.execute("DROP TABLE transactions")
        conn.execute("SELECT pg_copy_logical_replication_slot(%s, 'bench_floor', false)", (dbname,))
        flat = [item for pair in server_options(["public.transactions"]) for item in pair]
        t0 = time.monotonic()
        (messages,) = one(
            conn,
            "SELECT count(*) FROM pg_logical_slot_get_changes('bench_floor', NULL, NULL,"
            " VARIADIC %s::text[])",
            (flat,),
        )
        decode = time.monotonic() - t0
        conn.execute("SELECT pg_drop_replication_slot('bench_floor')")
        conn.execute("CREATE TABLE load_floor (LIKE final)")
        t0 = time.monotonic()
        with conn.cursor() as out, conn.cursor() as into:
            rows: list[bytes] = []
            with out.copy("COPY final TO STDOUT") as source:
                rows.extend(bytes(chunk) for chunk in source)
            with into.copy("COPY load_floor FROM STDIN") as sink:
                for chunk in rows:
                    sink.write(chunk)
        load = time.monotonic() - t0
    child = subprocess.run(
        [sys.executable, "-c", CHILD, dsn, dbname, "rebuilt", str(workdir / f"{dbname}.parquet")],
        capture_output=True,
        text=True,
        check=True,
    )
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (dbname,))
    measured: dict[str, Any] = json.loads(child.stdout)
    measured.update(decode=decode, load=load, messages=messages, transactions=transactions)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--scale", type=int, default=4)
    args = parser.parse_args()
    with Cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        small = _measure(cluster, args.transactions, Path(tmp))
        large = _measure(cluster, args.transactions * args.scale, Path(tmp))
    for run in (small, large):
        floor = run["decode"] + run["load"]
        print(
            f"N={run['transactions']:>9,}  messages={run['messages']:>10,}  "
            f"decode={run['decode']:6.2f}s  load={run['load']:5.2f}s  "
            f"recover={run['seconds']:6.2f}s  recover/floor={run['seconds'] / floor:5.2f}  "
            f"peak RSS={run['rss_kb'] / 1024:6.1f} MiB"
        )
    print(
        f"x{args.scale} stream: time ratio {large['seconds'] / small['seconds']:.2f} "
        f"(linear = {args.scale}), peak memory ratio {large['rss_kb'] / small['rss_kb']:.2f} "
        "(bounded = about 1)"
    )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench process peak RSS {own:.0f} MiB")


if __name__ == "__main__":
    main()
