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
    assert recover["x_skeleton"] > 0 and recover["x_native"] > 0
    assert report["machine"]["nproc"] >= 1 and report["machine"]["fsync"] == "off"
    print(f"bench smoke run: {time.monotonic() - started:.1f} s")


def _skeleton() -> Any:
    spec = importlib.util.spec_from_file_location("skeleton", ROOT / "bench" / "skeleton.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
