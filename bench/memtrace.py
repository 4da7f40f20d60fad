"""Run ``walrecover`` with a memory timeline: where the resident memory goes, phase by phase.

Usage::

    .venv/bin/python bench/memtrace.py OUT.jsonl -- recover -d ... --slot ... --table ...

A thread samples, every 50 ms: the process's RSS (``VmRSS``, and its anonymous part), the bytes
pyarrow's memory pool holds (once pyarrow is loaded), and the walrecover function the main
thread is in (the innermost frame of walrecover's own code, and the outermost below the CLI).
Each sample is a JSON line in OUT.jsonl; at the end a summary on stderr (and in OUT.txt) gives
the peak RSS and, per phase (outermost walrecover function below the command), the highest RSS
seen in it. It
runs the command in this process, so start-up imports count as they do for ``walrecover``.
Dev-only: nothing here is used by walrecover itself.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

#: Frames of these modules are the command line, not a phase.
_SHELL = ("walrecover/cli.py", "click/")


def _status() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def _where(frame: FrameType | None) -> tuple[str, str]:
    """(outermost walrecover function below the CLI, innermost walrecover function)."""
    inner = outer = ""
    while frame is not None:
        name = frame.f_code.co_filename
        if "walrecover/" in name and not any(s in name for s in _SHELL):
            here = f"{name.rsplit('walrecover/', 1)[1]}:{frame.f_code.co_name}"
            inner = inner or here
            outer = here
        frame = frame.f_back
    return outer, inner


class Sampler:
    """The sampling thread."""

    def __init__(self, out: Path, interval: float = 0.05) -> None:
        self.out = out.open("w")
        self.interval = interval
        self.main = threading.main_thread().ident
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 2), **_status()}
        pa = sys.modules.get("pyarrow")
        if pa is not None and hasattr(pa, "total_allocated_bytes"):
            row["arrow_kib"] = pa.total_allocated_bytes() // 1024
        frame = sys._current_frames().get(self.main or 0)
        row["outer"], row["inner"] = _where(frame)
        self.samples.append(row)
        self.out.write(json.dumps(row) + "\n")

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def summary(self) -> str:
        self.sample()
        peak = max(self.samples, key=lambda r: r["VmRSS"])
        phases: dict[str, int] = {}
        for row in self.samples:
            phases[row["outer"]] = max(phases.get(row["outer"], 0), row["VmRSS"])
        lines = [
            f"memtrace: peak VmRSS {peak['VmRSS'] / 1024:.0f} MiB at {peak['t']} s in "
            f"{peak['inner'] or '(start-up)'}; VmHWM {self.samples[-1]['VmHWM'] / 1024:.0f} MiB"
        ]
        lines += [
            f"  {rss / 1024:6.0f} MiB  {name or '(start-up, CLI)'}" for name, rss in phases.items()
        ]
        return "\n".join(lines)


def main() -> int:
    out, sep, *args = sys.argv[1:]
    if sep != "--":
        raise SystemExit(__doc__)
    sampler = Sampler(Path(out))
    sampler.thread.start()
    from walrecover.cli import main as walrecover  # noqa: PLC0415 - after the sampler starts

    code = 0
    try:
        walrecover(args, prog_name="walrecover")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sampler.stop.set()
        sampler.thread.join()
        summary = sampler.summary()
        print(summary, file=sys.stderr)
        Path(out).with_suffix(".txt").write_text(summary + "\n")
        sampler.out.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
