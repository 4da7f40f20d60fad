"""Benchmark: reconciling a large table, and a large audit, with memory bounded by the keys.

Usage::

    .venv/bin/python bench/reconcile_bench.py [--rows 10000000] [--accounts 1000]
        [--audit PATH]

On a throwaway cluster it fills a ``transactions`` table (numeric(12,2) amounts spread over
``--accounts`` accounts) with ``generate_series`` and an ``accounts`` ledger whose balances are
the sums, then reconciles them in a child process (``walrecover.ledger.reconcile.reconcile`` on the
table: PostgreSQL aggregates, only per-key totals come back) and prints its time and peak RSS,
for ``--rows`` and for a tenth of it: bounded memory means about the same peak for both.
``--audit PATH`` also reconciles an existing audit file or directory (Arrow aggregates it
batch by batch) against its own live totals, for the same measure on the audit side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from walrecover.db import connect
from walrecover.drill.cluster import Cluster
from walrecover.ledger.reconcile import audit_totals

CHILD = """
import json, resource, sys, time
from walrecover.ledger.reconcile import LedgerQuery, RecoveredAudit, RecoveredTable, reconcile
kind, where, ledger, key, amount = sys.argv[1:6]
t0 = time.monotonic()
if kind == "table":
    dsn, table = where.split("|")
    result = reconcile(RecoveredTable(dsn, table), LedgerQuery(ledger, dsn), key=key, amount=amount)
else:
    result = reconcile(RecoveredAudit(where), ledger, key=key, amount=amount)
print(json.dumps({"seconds": time.monotonic() - t0, "keys": result.keys,
                  "matched": result.matched,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def table_run(cluster: Cluster, rows: int, accounts: int) -> dict[str, Any]:
    dbname = f"bench_{rows}"
    with connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    dsn = cluster.dsn(dbname)
    with connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE transactions (id bigint PRIMARY KEY, account_id integer NOT NULL,"
            " amount numeric(12,2) NOT NULL)"
        )
        conn.execute(
            "INSERT INTO transactions SELECT g, 1 + g %% %s, ((g * 37) %% 200000 - 100000) / 100.0"
            " FROM generate_series(1, %s) g",
            (accounts, rows),
        )
        conn.execute(
            "CREATE TABLE accounts AS SELECT account_id AS id, sum(amount) AS balance"
            " FROM transactions GROUP BY 1"
        )
        conn.execute("VACUUM ANALYZE transactions")
    return child(
        "table", f"{dsn}|public.transactions", "SELECT id, balance FROM accounts", "account_id",
        "amount",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--audit", help="also reconcile this audit (file or directory)")
    args = parser.parse_args()
    with Cluster() as cluster:
        for rows in (args.rows // 10, args.rows):
            out = table_run(cluster, rows, args.accounts)
            print(
                f"table of {rows:,} rows, {out['keys']} keys: {out['seconds']:.1f} s, "
                f"peak RSS {out['rss_mb']:.0f} MB, matched={out['matched']}"
            )
    if args.audit:
        # The audit's own live totals as the ledger: reconciling must match.
        totals = audit_totals(args.audit, "account_id", "amount")
        ledger = "/tmp/walrecover-bench-ledger.csv"
        with open(ledger, "w", encoding="utf-8") as fh:
            fh.write("account_id,total\n")
            fh.writelines(f"{k[0]},{v}\n" for k, (v, _) in totals.items())
        out = child("audit", args.audit, ledger, "account_id", "amount")
        print(
            f"audit {args.audit}, {out['keys']} keys: {out['seconds']:.1f} s, "
            f"peak RSS {out['rss_mb']:.0f} MB, matched={out['matched']}"
        )


if __name__ == "__main__":
    main()
