"""Where a rehearsal's time goes: wall and CPU seconds per phase.

Wall seconds are what the user waits for; CPU seconds tell, on a shared machine, the work from
the waiting for a core. The client's CPU is this process's (``time.process_time``); the
server's is the throwaway cluster's postmaster and its children, exited ones included, read
from ``/proc`` (Linux; None where it cannot be read).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


def server_cpu(data: Path | None) -> float | None:
    """CPU seconds the cluster whose data directory is ``data`` has used so far, or None."""
    if data is None:
        return None
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        total = _cpu(pid, children=True)
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return None
    for kid in kids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += _cpu(int(kid), children=False)
    return total / os.sysconf("SC_CLK_TCK")


def _cpu(pid: int, *, children: bool) -> int:
    """Clock ticks of ``pid`` (user + system), with its waited-for children's if asked."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks + (int(fields[13]) + int(fields[14]) if children else 0)


class PhaseClock:
    """Wall and CPU seconds per named phase (a phase timed twice adds up)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, dict[str, float | None]] = {}
        #: The cluster's data directory, once it exists (for the server's CPU).
        self.data: Path | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as ``name``."""
        wall, client, server = time.monotonic(), time.process_time(), server_cpu(self.data)
        try:
            yield
        finally:
            after = server_cpu(self.data)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - wall
            spent = self.cpu.setdefault(name, {"client": 0.0, "server": 0.0})
            spent["client"] = (spent["client"] or 0.0) + time.process_time() - client
            used = None if server is None or after is None else after - server
            spent["server"] = None if used is None else (spent["server"] or 0.0) + used

    def total(self) -> dict[str, float]:
        """The phases' seconds and the total since the clock was made."""
        return {**self.seconds, "total": time.monotonic() - self.started}
