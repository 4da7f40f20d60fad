"""The benchmark of docs/benchmarks.md still runs: ``bench/pipeline.py`` on a tiny workload.

It starts its own throwaway clusters (the benchmark owns them: the workload, a subscriber for
native replication), so it does not use the session cluster. Only the steps that exercise each
kind of measure are run, to stay well under half a minute: the decode floor, the load floor, both
skeletons, native replication and ``walrecover recover`` with reconciliation and audit.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CHANGES = 2_000


def test_pipeline_bench_runs_every_kind_of_step() -> None:
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "pipeline.py"),
            "--changes",
            str(CHANGES),
            "--accounts",
            "50",
            "--fsync",
            "off",
            "--plugins",
            "wal2json,pgoutput",
            "--only",
            "decode,load,skeleton,native,recover+",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    steps = {(m["step"], m["plugin"]): m for m in report["measures"]}
    assert set(steps) == {
        ("decode", "wal2json"),
        ("decode", "pgoutput"),
        ("load", "-"),
        ("skeleton", "wal2json"),
        ("skeleton", "pgoutput"),
        ("native", "pgoutput"),
        ("recover+", "wal2json"),
        ("recover+", "pgoutput"),
    }
    assert report["workload"]["rows"] == CHANGES
    for key in (
        ("load", "-"),
        ("skeleton", "wal2json"),
        ("skeleton", "pgoutput"),
        ("native", "pgoutput"),
        ("recover+", "wal2json"),
        ("recover+", "pgoutput"),
    ):
        assert steps[key]["rows"] == CHANGES, key
    recover = steps[("recover+", "pgoutput")]
    assert recover["wall"] > 0 and recover["client_cpu"] > 0 and recover["rss_mib"] > 10
    assert recover["rss_summed_mib"] >= recover["rss_mib"]
    assert recover["x_skeleton"] > 0 and recover["x_native"] > 0
    assert report["machine"]["nproc"] >= 1 and report["machine"]["fsync"] == "off"
    print(f"bench smoke run: {time.monotonic() - started:.1f} s")


def _module(name: str) -> Any:
    """``bench/NAME.py``, loaded (``bench`` is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _skeleton() -> Any:
    return _module("skeleton")


class _Trickle(io.RawIOBase):
    """A stream that returns one byte a read, so every message is cut by a read's end."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = self.data[:1], self.data[1:]
        return chunk


def test_pgoutput_skeleton_yields_a_row_once_when_reads_cut_its_message() -> None:
    relation = (
        b"R"
        + struct.pack("!I", 7)
        + b"public\0t\0d"
        + struct.pack("!H", 1)
        + b"\x01id\0"
        + struct.pack("!Ii", 23, -1)
    )
    begin = b"B" + bytes(20)
    inserts = [
        b"I"
        + struct.pack("!I", 7)
        + b"N"
        + struct.pack("!H", 1)
        + b"t"
        + struct.pack("!i", len(str(n)))
        + str(n).encode()
        for n in range(3)
    ]
    commit = b"C" + bytes(25)
    data = b"".join(m + b"\n" for m in [begin, relation, *inserts, commit])
    rows = list(_skeleton().pgoutput_rows(_Trickle(data), "public.t"))
    assert rows == [(["id"], f"{n}\n") for n in range(3)]


#: A parent that holds 40 MiB in a child, lets the child exit, then holds 40 MiB itself.
SUCCESSIVE = """
import subprocess, sys, time
subprocess.run([sys.executable, "-c", "b = bytearray(40 << 20); import time; time.sleep(0.5)"])
b = bytearray(40 << 20)
time.sleep(0.5)
"""


def test_peak_rss_counts_what_processes_held_at_one_moment() -> None:
    """A child's peak and its parent's later peak never coexisted: the client's peak is one of
    them (plus the other's base), while the sum of each process's own peak counts both."""
    pipeline = _module("pipeline")
    proc = subprocess.Popen([sys.executable, "-c", SUCCESSIVE])
    with pipeline.PeakRss([proc.pid], interval=0.02) as peak:
        proc.wait()
    together, summed = peak.mib(proc.pid), peak.summed_mib(proc.pid)
    assert len(peak.peak_kib[proc.pid]) == 2, "the child was seen"
    assert 40 < together < summed - 25, (together, summed)
