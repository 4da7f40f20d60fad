"""Recovery points on disk: the manifest ``walrecover protect`` keeps in its directory, and the
public reader :func:`load_recovery_points`.

A recovery point is a logical slot created with an exported snapshot plus, for each protected
table, a Parquet baseline of the table read in that snapshot: the baseline holds exactly the
rows committed before the slot's consistent point, and the slot holds every change committed
after it, so the table can be rebuilt exactly at any stop point at or after that point. The
format is described in docs/protect-format.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..audit import safefiles
from ..errors import ProtectError
from ..stream.lsn import Lsn
from ..stream.model import TableName

#: The manifest's name in the protect directory.
MANIFEST = "walrecover-protect.json"
#: The lock file a protect run holds, so two runs never rotate the same directory at once.
LOCK = ".walrecover-protect.lock"
#: Every slot protect creates starts with this; protect drops only such slots, and only those
#: its manifest lists.
SLOT_PREFIX = "walrecover_protect_"
#: The manifest's ``format`` and ``version``.
FORMAT = "walrecover-protect"
VERSION = 1
#: The key of the JSON object in each baseline file's Parquet key-value metadata.
PARQUET_KEY = b"walrecover.protect"
#: A baseline file's name inside its point's directory.
BASELINE_FILE = re.compile(r"table-\d+\.parquet")

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``48h``, ``6h``, ``30m``, ``2d``, ``1h30m``, ``0s`` as a timedelta; ValueError otherwise."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact).strip():
        raise ValueError(f"{text!r} is not a duration: write e.g. 48h, 6h, 30m, 2d or 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(compact))
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class BaselineColumn:
    """A column of a baseline: its name and PostgreSQL type as ``format_type`` prints it
    (``numeric(14,2)``); the Parquet column holds the type's text representation."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class TableBaseline:
    """One table's rows at a recovery point's consistent LSN, in a Parquet file.

    ``relation_id`` is the table's oid (pgoutput's relation id); ``key`` its primary key
    columns (empty if it has none); ``ddl`` a ``CREATE TABLE`` with the columns, NOT NULLs and
    primary key; ``sha256`` the file's checksum.
    """

    table: TableName
    path: Path
    rows: int
    sha256: str
    relation_id: int
    columns: tuple[BaselineColumn, ...]
    key: tuple[str, ...]
    ddl: str
    publications: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.table.schema,
            "table": self.table.name,
            "file": str(self.path),
            "rows": self.rows,
            "sha256": self.sha256,
            "relation_id": self.relation_id,
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "key": list(self.key),
            "ddl": self.ddl,
            "publications": list(self.publications),
        }


@dataclass(frozen=True, slots=True)
class RecoveryPoint:
    """A slot created with an exported snapshot, and the baselines read in that snapshot.

    ``consistent_lsn`` is where the slot's stream starts: the baselines hold every transaction
    committed before it and the slot every one committed at or after it. ``snapshot_time`` is
    the server's clock just after the slot was created: a stop time at or after it is reachable
    from this point. ``settings`` are the output settings the baselines' text was printed with.
    """

    slot: str
    plugin: str
    database: str
    consistent_lsn: Lsn
    snapshot_time: datetime
    tables: tuple[TableBaseline, ...]
    settings: dict[str, str]

    def baseline(self, table: TableName) -> TableBaseline | None:
        """The baseline of ``table`` at this point, or None if it was not protected here."""
        return next((b for b in self.tables if b.table == table), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "plugin": self.plugin,
            "database": self.database,
            "consistent_lsn": str(self.consistent_lsn),
            "snapshot_time": self.snapshot_time.isoformat(),
            "tables": [b.to_dict() for b in self.tables],
            "settings": dict(self.settings),
        }


def load_recovery_points(directory: str | Path) -> tuple[RecoveryPoint, ...]:
    """The finished recovery points of a protect directory, oldest first.

    Raises :class:`ProtectError` if ``directory`` has no readable protect manifest. Points a
    protect run was still creating (or that a killed run left) are not returned. The slots are
    not checked here: ``walrecover doctor`` says whether each still exists.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    if manifest is None:
        raise ProtectError(
            f"{root} is not a walrecover protect directory (no {MANIFEST}): give the --dir of "
            "walrecover protect",
            directory=str(root),
        )
    points = [_point(root, entry) for entry in manifest["points"] if entry.get("state") == "ready"]
    return tuple(sorted(points, key=lambda p: p.snapshot_time))


def _point(root: Path, entry: dict[str, Any]) -> RecoveryPoint:
    try:
        return RecoveryPoint(
            slot=entry["slot"],
            plugin=entry["plugin"],
            database=entry["database"],
            consistent_lsn=Lsn.parse(entry["consistent_lsn"]),
            snapshot_time=datetime.fromisoformat(entry["snapshot_time"]),
            tables=tuple(_baseline(root, t) for t in entry["tables"]),
            settings=dict(entry.get("settings", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtectError(
            f"{root / MANIFEST} is damaged (recovery point {entry.get('slot')!r}: {exc!r}): "
            "restore it from a backup of the directory",
            directory=str(root),
        ) from None


def _baseline(root: Path, entry: dict[str, Any]) -> TableBaseline:
    return TableBaseline(
        table=TableName(entry["schema"], entry["table"]),
        path=root / entry["file"],
        rows=int(entry["rows"]),
        sha256=entry["sha256"],
        relation_id=int(entry["relation_id"]),
        columns=tuple(BaselineColumn(c["name"], c["type"]) for c in entry["columns"]),
        key=tuple(entry.get("key", ())),
        ddl=entry["ddl"],
        publications=tuple(entry.get("publications", ())),
    )


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest as JSON, or None if the directory has none."""
    path = root / MANIFEST
    info = safefiles.lstat(path)
    if info is None:
        return None
    if not safefiles.is_file(info):
        raise ProtectError(
            f"{path} is not a regular file (a link or a directory): walrecover reads only its "
            "own manifest",
            directory=str(root),
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtectError(
            f"{path} is not a walrecover protect manifest ({exc}): restore it, or give another "
            "--dir",
            directory=str(root),
        ) from None
    if data.get("format") != FORMAT or not isinstance(data.get("points"), list):
        raise ProtectError(
            f"{path} is not a walrecover protect manifest: give another --dir",
            directory=str(root),
        )
    if data.get("version") != VERSION:
        raise ProtectError(
            f"{path} has format version {data.get('version')}, this walrecover reads "
            f"{VERSION}: use the walrecover that wrote it",
            directory=str(root),
        )
    return data


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    """Replace the manifest atomically (a new file renamed over the old one)."""
    work = root / f"{MANIFEST}.{os.getpid()}.partial"
    safefiles.remove_file(work)
    safefiles.write_new(work, (json.dumps(data, indent=2) + "\n").encode())
    os.replace(work, root / MANIFEST)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the directory's lock: a second protect run on it fails at once instead of
    rotating the same slots concurrently."""
    path = root / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProtectError(
                f"another walrecover protect run holds {path}: let it finish (a cron job and a "
                "--loop on the same --dir?)",
                directory=str(root),
            ) from None
        yield
    finally:
        os.close(fd)


def disk_used(root: Path) -> int:
    """Bytes of the regular files under ``root`` (links are not followed)."""
    total = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in files:
            info = safefiles.lstat(Path(folder) / name)
            if safefiles.is_file(info):
                assert info is not None
                total += info.st_size
        dirs[:] = [d for d in dirs if safefiles.is_dir(safefiles.lstat(Path(folder) / d))]
    return total
