"""Read WAL files with ``pg_waldump``: the same records pg_walinspect gives, from a directory.

Where pg_walinspect is not installed (and installing it is a write to the source), the WAL can
still be read from its files: the server's own ``pg_wal`` when walrecover runs on the database
host, or segment files copied from it (``--wal-dir``). ``pg_waldump`` prints one line per record::

    rmgr: Transaction len (rec/tot): 469/469, tx: 736, lsn: 0/01A3B2C8, prev 0/01A3B290,
    desc: COMMIT 2024-05-01 10:00:00.123456 UTC; rels: base/5/16384; dropped stats: 2/5/16384

which :class:`WalDump` turns into :class:`~walrecover.stream.walrecords.WalRecord`: the
description loses its leading record type, the commit time is printed in UTC (``TZ=UTC``) and
written as pg_walinspect writes it, and the record's end is computed from its length and the
page headers it crosses. The program is found where the server's binaries are
(:func:`walrecover.drill.cluster.find_program`).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ..drill.cluster import find_program
from ..errors import WalUnavailable
from ..stream.lsn import Lsn
from ..stream.walrecords import WalRecord, wanted

_LINE = re.compile(
    r"^rmgr: (\S+)\s+len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), "
    r"prev [0-9A-F]+/[0-9A-F]+, desc: (\S+)(?: (.*))?$"
)
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_UTC_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
_BLOCK_START = re.compile(r"(?:^|, )(blkref #\d+:.*)$")
#: The messages pg_waldump ends with when it reaches the end of the WAL that was written.
_END_OF_WAL = re.compile(
    r"invalid record length|could not find file|invalid magic number|incorrect prev-link|"
    r"contrecord|invalid resource manager ID|record length .* too long|missing contrecord"
)

#: The WAL page size (``XLOG_BLCKSZ``; a compile-time option nobody changes) and its headers.
PAGE = 8192
_SHORT_HEADER = 24
_LONG_HEADER = 40


def record_end(lsn: int, total: int, segment_size: int) -> Lsn:
    """Where a record of ``total`` bytes starting at ``lsn`` ends (MAXALIGNed, as
    pg_walinspect's ``end_lsn``): its bytes skip the header of every page it continues on."""
    position, remaining = lsn, total
    while remaining > 0:
        if position % PAGE == 0:
            position += _LONG_HEADER if position % segment_size == 0 else _SHORT_HEADER
        take = min(remaining, PAGE - position % PAGE)
        position += take
        remaining -= take
    return Lsn((position + 7) & ~7)


class WalDump:
    """``pg_waldump`` over the segment files of ``directory``."""

    def __init__(self, directory: Path, program: Path | None = None) -> None:
        found = program or find_program("pg_waldump")
        if found is None:
            raise WalUnavailable(
                "pg_waldump is not installed here (Debian: the postgresql-<major> package): "
                "install it, or read the WAL with pg_walinspect",
                reason="no pg_waldump",
            )
        self.program = found
        self.directory = directory
        segments = sorted(
            (m.groups(), entry.stat().st_size)
            for entry in _entries(directory)
            if (m := _SEGMENT.match(entry.name)) is not None and entry.is_file()
        )
        if not segments:
            raise WalUnavailable(
                f"{directory} holds no WAL segment files (names like 000000010000000000000001)",
                reason="no segments",
            )
        self.segment_size = segments[0][1]
        per_id = 0x100000000 // self.segment_size
        (timeline, high, low), _ = segments[0]
        #: Where the oldest segment file starts, and the timeline of the newest.
        self.first_lsn = Lsn((int(high, 16) * per_id + int(low, 16)) * self.segment_size)
        self.timeline = int(segments[-1][0][0], 16)
        del timeline

    def describe(self) -> str:
        return f"pg_waldump on {self.directory}"

    def scan(
        self,
        start: Lsn,
        end: Lsn,
        *,
        files: frozenset[int] = frozenset(),
        lsns: frozenset[int] = frozenset(),
    ) -> Iterator[WalRecord]:
        """The records :func:`~walrecover.stream.walrecords.wanted` keeps in [start, end)."""
        start = max(start, self.first_lsn)
        if start >= end:
            return
        command = [
            str(self.program),
            f"--path={self.directory}",
            f"--start={start}",
            f"--end={end}",
            f"--timeline={self.timeline}",
            "--rmgr=Transaction",
            "--rmgr=Storage",
            "--rmgr=Heap",
        ]
        # Without files or LSNs to look for, a row record is wanted only if it is a TRUNCATE
        # (see wanted): the others, most of the WAL, are skipped before they are parsed.
        rows = bool(files or lsns)
        if rows:
            command.append("--rmgr=Heap2")
        env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            for line in process.stdout:
                if not rows and line.startswith("rmgr: Heap ") and "desc: TRUNCATE" not in line:
                    continue
                record = self._parse(line.rstrip("\n"))
                if record is not None and wanted(record, files, lsns):
                    yield record
            error = process.stderr.read()
            code = process.wait()
        if code != 0 and not _END_OF_WAL.search(error):
            message = error.strip().splitlines()[-1] if error.strip() else f"exit {code}"
            raise WalUnavailable(
                f"pg_waldump cannot read {self.directory} from {start} to {end} ({message})",
                reason="unreadable",
                lsn=start,
            )

    def _parse(self, line: str) -> WalRecord | None:
        match = _LINE.match(line)
        if match is None:
            return None
        rm, total, xid, lsn_text, record_type, rest = match.groups()
        lsn = Lsn.parse(lsn_text)
        rest = rest or ""
        block_ref = ""
        found = _BLOCK_START.search(rest)
        if found is not None:
            block_ref = found.group(1)
            rest = rest[: found.start()]
        description = _UTC_TIME.sub(r"\1+00", rest)
        return WalRecord(
            lsn,
            record_end(int(lsn), int(total), self.segment_size),
            int(xid),
            rm,
            record_type.removesuffix("+INIT"),
            description,
            block_ref,
        )


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as found:
            return list(found)
    except OSError as exc:
        raise WalUnavailable(
            f"cannot read the WAL directory {directory} ({exc.strerror})", reason="unreadable"
        ) from None
