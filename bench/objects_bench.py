"""Benchmark: bare ``walrecover recover``'s client CPU, repeated on one workload, per code tree.

Usage::

    .venv/bin/python bench/objects_bench.py [--changes 300000] [--plugins wal2json,pgoutput]
        [--repeat 3] [--tree DIR ...] [--full] [--profile DIR]

Builds ``bench/pipeline.py``'s ledger workload once on a throwaway cluster, then runs
``walrecover recover`` (bare; ``--full``: with ``--key/--amount/--ledger-query --audit``) on a
fresh copy of each plugin's slot ``--repeat`` times, through :func:`pipeline.measure_recover`,
and prints each run's client CPU seconds (``wait4``) and their median. Each ``--tree DIR`` (an
export of another commit, e.g. ``git archive BASE | tar -x -C DIR``) is run too, with
``PYTHONPATH=DIR`` (the installed ``walrecover`` script then imports that tree), the trees taking
turns within each repeat so that a change of the machine's load falls on all of them alike: on a
shared machine, compare figures of the same run. ``--profile DIR`` records one more run per
plugin of the worktree's code under py-spy (CPU samples only, no idle) (collapsed stacks) and prints
where the time goes.
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

from pipeline import Run, build_workload, measure_recover, slot_copy, summarize_collapsed  # noqa: E402

from walrecover.db import connect  # noqa: E402
from walrecover.drill.cluster import Cluster  # noqa: E402


def cpu_of(cluster: Cluster, plugin: str, full: bool, tmp: Path, tree: str | None) -> float:
    """One recovery with ``tree`` first on the import path (None: this worktree)."""
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
    return measure.client_cpu


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
    trees: list[str | None] = [None, *args.tree]
    cpu: dict[tuple[str | None, str], list[float]] = {(t, p): [] for t in trees for p in plugins}
    with (
        Cluster(settings={"fsync": "on"}, require_plugins=tuple(plugins)) as cluster,
        tempfile.TemporaryDirectory(prefix="walrecover-objects-") as tmpdir,
    ):
        build_workload(cluster, Run(changes=args.changes, plugins=plugins), plugins, 1000, None)
        for _ in range(args.repeat):
            for plugin in plugins:
                for tree in trees:
                    seconds = cpu_of(cluster, plugin, args.full, Path(tmpdir), tree)
                    cpu[(tree, plugin)].append(seconds)
                    print(f"{tree or 'worktree'} {plugin}: {seconds:.2f}", flush=True)
        for (tree, plugin), seconds in cpu.items():
            if not seconds:
                continue
            shown = ", ".join(f"{s:.2f}" for s in seconds)
            median = statistics.median(seconds)
            print(f"{tree or 'worktree':30} {plugin:9} client CPU s: {shown}  median {median:.2f}")
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for plugin in plugins:
                profile(cluster, plugin, args.profile / f"bare-{plugin}.txt")


if __name__ == "__main__":
    main()
