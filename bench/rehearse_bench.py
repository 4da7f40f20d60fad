"""Where a rehearsal's time goes: `walrecover rehearse --json` in a child process, per phase.

    .venv/bin/python bench/rehearse_bench.py --transactions 1000000 [--baseline]
        [--plugin pgoutput] [--per-commit 100] [--save run.json]

Prints a table of the rehearsal's phases (wall seconds, and the CPU seconds of the client and of
the throwaway server that the rehearsal reports), the recovery's own split, and the whole
process as `/usr/bin/time -v` would see it (wall, user + system CPU, peak RSS, from ``wait4``),
with the load average before and after (the machine is shared: CPU seconds are steadier than
wall seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the rehearsal once; its JSON result plus what the process cost."""
    command = [
        sys.executable, "-m", "walrecover.cli", "rehearse", "--json",
        "--transactions", str(args.transactions), "--plugin", args.plugin,
        "--per-commit", str(args.per_commit),
        *(["--baseline"] if args.baseline else []),
    ]  # fmt: skip
    load = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"rehearse failed ({os.waitstatus_to_exitcode(status)}): {out!r}")
    return {
        "command": " ".join(command[2:]),
        "result": json.loads(out),
        "process": {
            "wall": round(wall, 2),
            "cpu": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024),
        },
        "load": [round(load, 1), round(os.getloadavg()[0], 1)],
    }


def table(run: dict[str, Any]) -> str:
    """The run as a Markdown table, phase by phase."""
    result, process = run["result"], run["process"]
    lines = ["| phase | wall s | client CPU s | server CPU s |", "|---|---:|---:|---:|"]

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}"

    for phase, seconds in result["seconds"].items():
        if phase in ("total", "rto"):
            continue
        cpu = result["cpu"].get(phase, {})
        lines.append(
            f"| {phase} | {num(seconds)} | {num(cpu.get('client'))} | {num(cpu.get('server'))} |"
        )
        if phase == "recover":
            for inner, spent in result["recovery_seconds"].items():
                if inner != "total":
                    lines.append(f"| - recover: {inner} | {num(spent)} | | |")
    lines.append(f"| **total (in the process)** | {num(result['seconds']['total'])} | | |")
    if "rto" in result["seconds"]:
        lines.append(f"| **RTO** | {num(result['seconds']['rto'])} | | |")
    lines.append(f"| **process** (`wait4`) | {num(process['wall'])} | {num(process['cpu'])} | |")
    lines.append("")
    lines.append(
        f"`{run['command']}`: {result['rows']:,} rows from {result['changes']:,} changes, "
        f"identical {result['identical']}, reconciled {result['reconciled']}; peak RSS "
        f"{process['peak_rss_mib']} MiB; load average {run['load'][0]} -> {run['load'][1]}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--plugin", default="pgoutput")
    parser.add_argument("--per-commit", type=int, default=100)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--save", type=Path, help="Write the run as JSON here.")
    parser.add_argument("--show", type=Path, help="Print a saved run, run nothing.")
    args = parser.parse_args(argv)
    found = json.loads(args.show.read_text()) if args.show else run(args)
    if args.save:
        args.save.write_text(json.dumps(found, indent=2))
    print(table(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
