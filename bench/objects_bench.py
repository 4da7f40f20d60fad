"""Benchmark: bare ``walrecover recover``'s client CPU, repeated on one workload, per code tree.

Usage::

    .venv/bin/python bench/objects_bench.py [--changes 300000] [--plugins wal2json,pgoutput]
        [--repeat 3] [--tree DIR ...] [--full] [--profile DIR]

Builds ``bench/pipeline.py``'s ledger workload once on a throwaway cluster, then runs
``walrecover recover`` (bare; ``--full``: with ``--key/--amount/--ledger-query --audit``) on a
fresh copy of each plugin's slot ``--repeat`` times, through :func:`pipeline.measure_recover`,
and prints each run's client CPU seconds (``wait4``) and their median. Each ``--tree DIR`` (an
export of another commit, e.g. ``git archive BASE | tar -x -C DIR``) is run too, with
``PYTHONPATH=DIR`` (the installed ``walrecover`` script then imports that tree), and so is
``pipeline.py``'s skeleton: they take turns within each repeat, so a change of the machine's
load falls on all of them alike (on a shared machine, compare figures of the same run). The
medians are printed with their ratio to the skeleton's, CPU and wall. ``--profile DIR``
records one more run per plugin of the worktree's code under py-spy (CPU samples only, no
idle; collapsed stacks) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pipeline import (  # noqa: E402
    Run,
    build_workload,
    measure_recover,
    measure_skeleton,
    slot_copy,
    summarize_collapsed,
)

from walrecover.db import connect  # noqa: E402
from walrecover.drill.cluster import Cluster  # noqa: E402


def measure_of(
    cluster: Cluster, plugin: str, full: bool, tmp: Path, tree: str | None
) -> tuple[float, float]:
    """One recovery with ``tree`` first on the import path (None: this worktree): its client
    CPU seconds and wall seconds."""
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = tree
    try:
        measure = measure_recover(cluster, plugin, full, tmp)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    assert measure.client_cpu is not None
    return measure.client_cpu, measure.wall


def profile(cluster: Cluster, plugin: str, out: Path) -> None:
    """One bare recovery under py-spy (CPU samples), its collapsed stacks written to ``out``
    and summarised (:func:`pipeline.summarize_collapsed`)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args = [spy, "record", "--rate", "250", "--format", "raw", "-o", str(out), "--"]
    args += [str(Path(sys.executable).parent / "walrecover"), "recover"]
    args += ["-d", cluster.dsn("bench"), "--target", cluster.dsn("rebuild")]
    args += ["--into", f"public.prof_{plugin}", "--json"]
    if plugin == "pgoutput":
        args += ["-o", "publication_names=bench_pub"]
    with slot_copy(cluster.dsn("bench"), f"bench_{plugin}", "m_prof") as slot:
        args += ["--slot", slot, "--table", "public.transactions"]
        subprocess.run(args, check=True, capture_output=True)
    with connect(cluster.dsn("rebuild"), autocommit=True) as conn:
        conn.execute(f"DROP TABLE public.prof_{plugin}")
    summary = summarize_collapsed(out, top=25)
    print(f"bare recover {plugin} under py-spy ({summary['samples']} samples)")
    for key in ("phases", "self", "inclusive"):
        print(f"  {key}:")
        for name, share in summary[key]:
            print(f"    {share:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=300_000)
    parser.add_argument("--plugins", default="wal2json,pgoutput")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], metavar="DIR")
    parser.add_argument("--full", action="store_true", help="recover+ instead of bare recover")
    parser.add_argument("--profile", type=Path, metavar="DIR")
    args = parser.parse_args()
    plugins = args.plugins.split(",")
    runs: list[str] = ["skeleton", "worktree", *args.tree]
    cpu: dict[tuple[str, str], list[float]] = {(r, p): [] for r in runs for p in plugins}
    wall: dict[tuple[str, str], list[float]] = {(r, p): [] for r in runs for p in plugins}
    with (
        Cluster(settings={"fsync": "on"}, require_plugins=tuple(plugins)) as cluster,
        tempfile.TemporaryDirectory(prefix="walrecover-objects-") as tmpdir,
    ):
        run = Run(changes=args.changes, plugins=plugins)
        lsns = build_workload(cluster, run, plugins, 1000, None)
        for _ in range(args.repeat):
            for plugin in plugins:
                for name in runs:
                    if name == "skeleton":
                        skeleton = measure_skeleton(cluster, plugin, lsns)
                        assert skeleton.client_cpu is not None
                        seconds, took = skeleton.client_cpu, skeleton.wall
                    else:
                        tree = None if name == "worktree" else name
                        seconds, took = measure_of(cluster, plugin, args.full, Path(tmpdir), tree)
                    cpu[(name, plugin)].append(seconds)
                    wall[(name, plugin)].append(took)
                    print(f"{name} {plugin}: {seconds:.2f} CPU-s, {took:.1f} s", flush=True)
        for (name, plugin), values in cpu.items():
            if not values:
                continue
            median = statistics.median(values)
            took = statistics.median(wall[(name, plugin)])
            floor = statistics.median(cpu[("skeleton", plugin)])
            floor_wall = statistics.median(wall[("skeleton", plugin)])
            shown = ", ".join(f"{v:.2f}" for v in values)
            print(
                f"{name:30} {plugin:9} client CPU s: {shown}  median {median:.2f} "
                f"({median / floor:.2f} x the skeleton's); wall median {took:.1f} s "
                f"({took / floor_wall:.2f} x)"
            )
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for plugin in plugins:
                profile(cluster, plugin, args.profile / f"bare-{plugin}.txt")


if __name__ == "__main__":
    main()
