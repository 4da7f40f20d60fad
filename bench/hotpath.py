"""Micro-benchmark: walrecover's client CPU per change, in-process, on a recorded stream.

Usage::

    .venv/bin/python bench/hotpath.py [--changes 100000] [--plugins wal2json,pgoutput]
        [--modes bare,audit] [--repeat 3] [--profile DIR]

Builds ``bench/pipeline.py``'s ledger workload once on a throwaway cluster and reads each
plugin's stream into memory once, as walrecover reads a slot (``pg_logical_slot_peek_changes``
on a copy of the workload's slot: wal2json with walrecover's own options and ``add-tables``,
pgoutput protocol 1 through the ``FOR ALL TABLES`` publication, so the ``accounts`` updates are
in it). Then, ``--repeat`` times per plugin and mode, it runs in this process what ``recover``
does per change: the decoder (:func:`~walrecover.stream.decoders.make_decoder`) into
:func:`~walrecover.rebuild.replay.replay` into a rebuilt table, with an
:class:`~walrecover.audit.writer.AuditWriter` written and closed in mode ``audit``, and prints
the client CPU seconds of each run (``getrusage`` of this process, user + system) and their
median. The server's decoding is left out, so the figure is walrecover's own work per change.
``--profile DIR`` also writes a cProfile of one more run per plugin and mode and prints the top
functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from psycopg import sql

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pipeline import PUBLICATION, Run, build_workload  # noqa: E402

from walrecover.audit.writer import AuditWriter  # noqa: E402
from walrecover.db import connect  # noqa: E402
from walrecover.drill.cluster import Cluster  # noqa: E402
from walrecover.rebuild.replay import replay  # noqa: E402
from walrecover.stream.decoders import decode_all, make_decoder  # noqa: E402
from walrecover.stream.decoders.wal2json import server_options  # noqa: E402
from walrecover.stream.lsn import Lsn  # noqa: E402
from walrecover.stream.model import RawMessage, TableName  # noqa: E402

TABLE = TableName("public", "transactions")
INTO = TableName("public", "hot")


def options(plugin: str) -> list[tuple[str, str]]:
    if plugin == "wal2json":
        return server_options([TABLE])
    return [("proto_version", "1"), ("publication_names", PUBLICATION)]


def record(cluster: Cluster, plugin: str, end: str) -> list[RawMessage]:
    """The plugin's stream up to ``end``, peeked from a copy of its workload slot."""
    function = "pg_logical_slot_peek_changes"
    if plugin == "pgoutput":
        function = "pg_logical_slot_peek_binary_changes"
    opts = options(plugin)
    flat = [item for pair in opts for item in pair]
    with connect(cluster.dsn("bench"), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_copy_logical_replication_slot(%s, 'hot_copy', false)", (f"bench_{plugin}",)
        )
        try:
            query = sql.SQL(
                "SELECT lsn::text, xid::text::bigint, data FROM {}('hot_copy', %s::pg_lsn, NULL"
            ).format(sql.Identifier(function)) + sql.SQL(", %s" * len(flat) + ")")
            rows = conn.execute(query, (end, *flat)).fetchall()
        finally:
            conn.execute("SELECT pg_drop_replication_slot('hot_copy')")
    return [RawMessage(data, Lsn.parse(lsn), xid) for lsn, xid, data in rows]


def run_once(
    cluster: Cluster,
    plugin: str,
    messages: list[RawMessage],
    audit: bool,
    tmp: Path,
    profile: Path | None = None,
) -> float:
    """Decode, replay (and audit) once in this process: the client CPU seconds it took."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    with connect(cluster.dsn("bench")) as conn:
        writer = AuditWriter(tmp / "hot.parquet", {"target": "bench"}) if audit else None
        decoder = make_decoder(plugin, dict(options(plugin)), tables=[TABLE])
        result = replay(conn, decode_all(decoder, messages), TABLE, INTO, sink=writer)
        if writer is not None:
            writer.close()
    if profiler is not None:
        profiler.disable()
    after = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
    with connect(cluster.dsn("bench"), autocommit=True) as conn:
        conn.execute("DROP TABLE public.hot")
    for leftover in tmp.glob("hot.parquet*"):
        leftover.unlink()
    if result.counts.changes == 0:
        raise SystemExit("bench: the replay applied nothing")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--plugins", default="wal2json,pgoutput")
    parser.add_argument("--modes", default="bare,audit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=Path, metavar="DIR")
    args = parser.parse_args()
    plugins = args.plugins.split(",")
    modes = args.modes.split(",")
    with (
        Cluster(settings={"fsync": "on"}, require_plugins=tuple(plugins)) as cluster,
        tempfile.TemporaryDirectory(prefix="walrecover-hot-") as tmpdir,
    ):
        tmp = Path(tmpdir)
        lsns = build_workload(
            cluster, Run(changes=args.changes, plugins=plugins), plugins, 1000, None
        )
        for plugin in plugins:
            messages = record(cluster, plugin, lsns["end"])
            for mode in modes:
                audit = mode == "audit"
                cpu = [run_once(cluster, plugin, messages, audit, tmp) for _ in range(args.repeat)]
                shown = ", ".join(f"{c:.2f}" for c in cpu)
                median = statistics.median(cpu)
                print(f"{plugin:9} {mode:5} client CPU s: {shown}  median {median:.2f}", flush=True)
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    out = args.profile / f"hot-{plugin}-{mode}.prof"
                    run_once(cluster, plugin, messages, audit, tmp, profile=out)
                    stats = pstats.Stats(str(out))
                    stats.sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
