"""Peak RSS of ``walrecover recover``: many small transactions, or one huge one (issue 12).

Usage::

    .venv/bin/python bench/memory.py --changes 100000 --plugins pgoutput [--trace DIR]
    .venv/bin/python bench/memory.py --single 2000000 --plugins pgoutput --only recover+

``--changes N`` builds ``bench/pipeline.py``'s ledger workload (N transactions of an insert and
a balance update, ten a commit); ``--single N`` instead inserts N rows into ``transactions`` in
**one** transaction (``INSERT ... SELECT generate_series``) and sets each account's balance to
the sum of its rows, so ``recover+`` reconciles. Then ``DROP TABLE transactions``, and for each
plugin, ``recover`` (bare) and ``recover+`` (``--key/--amount/--ledger-query --audit``), each on
a fresh copy of the plugin's slot, as ``bench/pipeline.py`` runs them: wall seconds, client CPU
seconds and peak RSS (what the client's processes held at one moment, and each one's
``VmHWM`` summed: :class:`pipeline.PeakRss`). ``--trace DIR`` runs each under
``bench/memtrace.py`` and keeps its timeline in DIR (phase by phase RSS on stderr).
``--import-only`` prints the RSS of ``import walrecover.cli`` and of its heavy dependencies
alone, and stops.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline
from pipeline import (
    Measure,
    Run,
    build_workload,
    measure_recover,
    open_accounts,
    table,
)

from walrecover.db import connect
from walrecover.drill.cluster import Cluster
from walrecover.drill.rehearsal import TABLES_SQL

HERE = Path(__file__).resolve().parent


def build_single(cluster: Cluster, run: Run, plugins: list[str], rows: int, accounts: int) -> None:
    """One transaction of ``rows`` inserts (and the balances it implies), then the DROP."""
    with connect(cluster.dsn(), autocommit=True) as conn:
        for name in ("bench", "rebuild"):
            conn.execute(f"CREATE DATABASE {name}")
    with connect(cluster.dsn("bench"), autocommit=True) as conn:
        conn.execute(TABLES_SQL)
        open_accounts(conn, plugins, accounts)
        with conn.transaction():
            conn.execute(
                "INSERT INTO transactions (account_id, amount, kind, note, meta)"
                " SELECT 1 + g %% %s, ((g %% 200000) - 100000) / 100.0, 'credit',"
                " 'payment ' || g, jsonb_build_object('seq', g)"
                " FROM generate_series(1, %s) g",
                (accounts, rows),
            )
            conn.execute(
                "UPDATE accounts a SET balance = s.total FROM"
                " (SELECT account_id, sum(amount) AS total FROM transactions GROUP BY 1) s"
                " WHERE a.id = s.account_id"
            )
        conn.execute("DROP TABLE transactions")
    run.workload = {"single_transaction_rows": rows, "accounts": accounts}


def import_only() -> str:
    """RSS after importing each of these alone, in a fresh interpreter."""
    lines = []
    for module in ("walrecover.cli", "psycopg", "pyarrow", "pandas", "pyarrow.parquet"):
        code = (
            f"import {module}\n"
            "s = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
            "print(int(s['VmHWM'].split()[0]) // 1024)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        lines.append(f"import {module}: {out.stdout.strip()} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--changes", type=int, help="ledger transactions, ten a commit")
    size.add_argument("--single", type=int, help="rows inserted by one transaction")
    parser.add_argument("--plugins", default="wal2json,pgoutput")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--only", default="recover,recover+")
    parser.add_argument("--trace", type=Path, metavar="DIR", help="keep memtrace timelines")
    parser.add_argument("--import-only", action="store_true")
    args = parser.parse_args(argv)
    if args.import_only:
        print(import_only())
        return 0
    plugins = [p for p in args.plugins.split(",") if p]
    steps = [s for s in args.only.split(",") if s]
    run = Run(changes=args.single or args.changes or 100_000, plugins=plugins)
    with (
        Cluster(require_plugins=tuple(plugins)) as cluster,
        tempfile.TemporaryDirectory(prefix="walrecover-membench-") as tmp,
    ):
        if args.single:
            build_single(cluster, run, plugins, args.single, args.accounts)
        else:
            build_workload(cluster, run, plugins, args.accounts, None)
        for full in (False, True):
            for plugin in plugins:
                if ("recover+" if full else "recover") not in steps:
                    continue
                print(f"bench: {'recover+' if full else 'recover'} {plugin}", file=sys.stderr)
                measure = measure_recover(cluster, plugin, full, Path(tmp))
                if args.trace is not None:
                    traced(cluster, plugin, full, Path(tmp), args.trace)
                run.measures.append(measure)
    print(f"workload: {run.workload}")
    print(table(run))
    return 0


def traced(cluster: Cluster, plugin: str, full: bool, tmp: Path, out: Path) -> Measure:
    """The same step once more under ``bench/memtrace.py`` (its summary goes to stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"{plugin}-{'full' if full else 'bare'}.jsonl"
    real = pipeline.run_child

    def child(args: list[str]) -> pipeline.Child:
        done = real([sys.executable, str(HERE / "memtrace.py"), str(out / name), "--", *args[1:]])
        return done

    pipeline.run_child = child
    try:
        return measure_recover(cluster, plugin, full, tmp)
    finally:
        pipeline.run_child = real
        print((out / name).with_suffix(".txt").read_text(), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
