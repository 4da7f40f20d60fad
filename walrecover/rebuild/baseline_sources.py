"""Where a baseline's rows come from, each copied into the rebuilt table as PostgreSQL text.

A baseline is an older copy of the table (see :mod:`.baseline`). Four kinds are read:

- a table in another database (``--baseline-dsn``: a scratch server restored from a backup, a
  lagging replica), copied with ``COPY (SELECT ...) TO STDOUT`` in one REPEATABLE READ snapshot;
- a ``pg_dump -t`` archive (custom format, read through ``pg_restore -a -f -``) or a plain
  ``pg_dump`` SQL file: only the table's ``COPY ... FROM stdin`` data block is taken, no other
  SQL of the file is ever run;
- a CSV file with a header (as ``COPY ... TO ... (FORMAT csv, HEADER)`` writes it);
- a Parquet file (its LSN read from the key ``walrecover.lsn``, or from the
  ``consistent_lsn`` of a ``walrecover protect`` baseline's ``walrecover.protect``).

Every kind is loaded with COPY, as text: no value passes through a float.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from psycopg import sql

from ..db import Connection, connect, safe_dsn
from ..drill.cluster import find_installation
from ..errors import BaselineError, ClusterError, WalrecoverError
from ..stream.lsn import Lsn
from ..stream.model import TableName

if TYPE_CHECKING:
    import pyarrow as pa

#: The ``COPY name (columns) FROM stdin;`` line that opens a table's data in a dump.
_COPY_LINE = re.compile(rb"^COPY (.+?) \((.*)\) FROM stdin;\n?$")
#: One identifier of a dump's COPY line: quoted (doubled quotes inside) or bare.
_IDENT = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^",.\s]+))\s*')


@dataclass
class BaselineRows:
    """One baseline's rows, ready to copy: what it is, its columns, and what it says of itself."""

    #: ``dsn``, ``pg_dump custom``, ``pg_dump plain``, ``csv`` or ``parquet``.
    kind: str
    #: The source as the audit and messages show it (no password).
    source: str
    columns: tuple[str, ...]
    #: The LSN the copy is consistent at, when the source says so exactly.
    lsn: Lsn | None = None
    #: A lower bound of that point (a standby that kept replaying while the copy began).
    at_least: Lsn | None = None
    #: What else is known (the archive's creation time, the standby's replay state).
    facts: dict[str, str] = field(default_factory=dict)
    #: The copy's snapshot was taken at or after this time (a custom archive's creation time,
    #: which pg_dump records before it takes its snapshot), if known.
    taken_after: datetime | None = None
    path: Path | None = None
    conn: Connection | None = None
    table: TableName | None = None

    def copy_into(self, target: Connection, ident: sql.Identifier) -> None:
        """Copy every row into ``ident`` on ``target`` (in its open transaction)."""
        names = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        if self.kind == "csv":
            statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)")
        else:
            statement = sql.SQL("COPY {} ({}) FROM STDIN")
        with target.cursor() as cur, cur.copy(statement.format(ident, names)) as copy:
            if self.kind == "parquet":
                assert self.path is not None
                for row in _parquet_rows(self.path, self.columns):
                    copy.write_row(row)
            elif self.kind == "csv":
                assert self.path is not None
                with self.path.open("rb") as file:
                    while block := file.read(1 << 20):
                        copy.write(block)
            elif self.kind == "dsn":
                assert self.conn is not None and self.table is not None
                query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
                    names, sql.Identifier(self.table.schema, self.table.name)
                )
                with self.conn.cursor() as source, source.copy(query) as out:
                    for chunk in out:
                        copy.write(chunk)
            else:
                for line in self._dump_data():
                    copy.write(line)

    def _dump_data(self) -> Iterator[bytes]:
        assert self.path is not None and self.table is not None
        with _dump_lines(self.path, self.kind) as lines:
            found = _find_copy(lines, self.table)
            if found is None:
                raise BaselineError(f"{self.path} holds no data of {self.table}")
            for line in lines:
                if line in (b"\\.\n", b"\\."):
                    return
                yield line
        raise BaselineError(f"{self.path}: the data of {self.table} ends without its '\\.' line")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def open_rows(
    *, file: Path | None, dsn: str | None, table: TableName, lsn: Lsn | None
) -> BaselineRows:
    """The baseline ``file`` (kind told by its content) or ``table`` in the database ``dsn``."""
    if dsn is not None:
        return _from_database(dsn, table)
    assert file is not None
    try:
        with file.open("rb") as handle:
            head = handle.read(5)
    except OSError as exc:
        raise BaselineError(f"cannot read the baseline {file}: {exc.strerror}") from None
    if head[:4] == b"PAR1":
        return _from_parquet(file)
    if head == b"PGDMP":
        return _from_dump(file, "pg_dump custom", table)
    if file.suffix.lower() == ".csv":
        return _from_csv(file)
    return _from_dump(file, "pg_dump plain", table)


def _from_database(dsn: str, table: TableName) -> BaselineRows:
    """A table in another database, read in one snapshot; on a standby the snapshot's point is
    exact only while replay is paused (else only bounded below by the replay position)."""
    conn = connect(dsn, role="baseline")
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    standby = bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]
    before = _replay_lsn(conn) if standby else None
    rows = conn.execute(
        "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = to_regclass(%s)"
        " AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        (sql.Identifier(table.schema, table.name).as_string(conn),),
    ).fetchall()  # the first query: the snapshot is taken here
    if not rows:
        conn.close()
        raise BaselineError(
            f"the baseline database ({safe_dsn(dsn)}) has no table {table}: name it with "
            "--baseline-table"
        )
    result = BaselineRows("dsn", safe_dsn(dsn) or "", tuple(r[0] for r in rows), conn=conn)
    result.table = table
    if standby:
        after = _replay_lsn(conn)
        (paused,) = conn.execute("SELECT pg_is_wal_replay_paused()").fetchone()  # type: ignore[misc]
        result.facts["standby_replay_lsn"] = str(before)
        if paused and before == after and before is not None:
            result.lsn = before
        else:
            result.at_least = before
            result.facts["standby"] = "replaying while the copy began: the point is not exact"
    return result


def _replay_lsn(conn: Connection) -> Lsn | None:
    (text,) = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()  # type: ignore[misc]
    return Lsn.parse(text) if text else None


def _from_parquet(path: Path) -> BaselineRows:
    import pyarrow as pa  # noqa: PLC0415 - pyarrow only for a Parquet baseline
    import pyarrow.parquet as pq  # noqa: PLC0415 - pyarrow only for a Parquet baseline

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise BaselineError(f"cannot read the Parquet baseline {path}: {exc}") from None
    meta = parquet.schema_arrow.metadata or {}
    result = BaselineRows("parquet", str(path), tuple(parquet.schema_arrow.names), path=path)
    raw = meta.get(b"walrecover.lsn")
    if raw is None and b"walrecover.protect" in meta:  # a walrecover protect baseline
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            raw = str(json.loads(meta[b"walrecover.protect"])["consistent_lsn"]).encode()
    if raw is not None:
        text = raw.decode()
        with contextlib.suppress(ValueError):
            text = str(json.loads(text))
        try:
            result.lsn = Lsn.parse(text)
        except WalrecoverError:
            raise BaselineError(f"{path}: walrecover.lsn {text!r} is not an LSN") from None
    for name in parquet.schema_arrow.names:
        _check_arrow_type(path, name, parquet.schema_arrow.field(name).type)
    return result


def _from_csv(path: Path) -> BaselineRows:
    with path.open("rb") as file:
        header = file.readline().decode("utf-8").rstrip("\r\n")
    if not header:
        raise BaselineError(f"the CSV baseline {path} has no header line naming its columns")
    columns = tuple(next(csv.reader([header])))
    return BaselineRows("csv", str(path), columns, path=path)


def _from_dump(path: Path, kind: str, table: TableName) -> BaselineRows:
    with _dump_lines(path, kind) as lines:
        found = _find_copy(lines, table)
    if found is None:
        what = "archive" if kind == "pg_dump custom" else "file"
        raise BaselineError(
            f"the {kind} {what} {path} holds no data of {table} (no COPY ... FROM stdin of it):"
            " name the table of the dump with --baseline-table"
        )
    result = BaselineRows(kind, str(path), found, path=path, table=table)
    if kind == "pg_dump custom":
        created = _archive_time(path)
        if created:
            result.facts["archive_created_at"] = created
            result.taken_after = _parse_time(created)
    return result


class _DumpLines:
    """The lines of a plain dump, or of ``pg_restore -a -f -`` run on a custom archive."""

    def __init__(self, path: Path, kind: str) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.file: IO[bytes]
        if kind == "pg_dump custom":
            self.process = subprocess.Popen(
                [str(_pg_restore()), "-a", "-f", "-", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert self.process.stdout is not None
            self.file = self.process.stdout
        else:
            self.file = path.open("rb")
        self.path = path

    def __enter__(self) -> Iterator[bytes]:
        return iter(self.file)

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            stderr = self.process.stderr
            error = stderr.read().decode(errors="replace") if stderr else ""
            if stderr is not None:
                stderr.close()
            if self.process.returncode not in (0, -9) and error.strip() and exc[0] is None:
                raise BaselineError(
                    f"pg_restore could not read {self.path}: {error.strip().splitlines()[0]}"
                )


def _dump_lines(path: Path, kind: str) -> _DumpLines:
    return _DumpLines(path, kind)


def _pg_restore() -> Path:
    """pg_restore of the installation walrecover finds (as the rehearsal finds initdb)."""
    try:
        installation = find_installation()
    except ClusterError as exc:
        raise BaselineError(f"reading a pg_dump custom archive needs pg_restore: {exc}") from None
    return installation.bindir / "pg_restore"


def _archive_time(path: Path) -> str | None:
    try:
        listing = subprocess.run(
            [str(_pg_restore()), "-l", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"Archive created at (.+)", listing)
    return match.group(1).strip() if match else None


def _parse_time(text: str) -> datetime | None:
    """pg_dump's ``%Y-%m-%d %H:%M:%S %Z`` (the dumping machine's zone): only UTC/GMT or a
    numeric offset name an instant; other zone abbreviations are ambiguous."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (UTC|GMT|[+-]\d\d(?::?\d\d)?)", text)
    if match is None:
        return None
    zone = match.group(2)
    offset = "+00:00" if zone in ("UTC", "GMT") else zone
    try:
        return datetime.fromisoformat(f"{match.group(1)}{offset}")
    except ValueError:
        return None


def _find_copy(lines: Iterator[bytes], table: TableName) -> tuple[str, ...] | None:
    """Read up to the COPY line of ``table``; its columns, or None if the dump has none."""
    for line in lines:
        if not line.startswith(b"COPY "):
            continue
        match = _COPY_LINE.match(line)
        if match is None:
            continue
        name = _identifiers(match.group(1).decode())
        if name in ([table.schema, table.name], [table.name]):
            return tuple(_identifiers(match.group(2).decode()))
    return None


def _identifiers(text: str) -> list[str]:
    """``a."B c".d`` or ``a, "B", c`` as names (the dump quotes what needs quoting)."""
    names: list[str] = []
    position = 0
    while position < len(text):
        match = _IDENT.match(text, position)
        if match is None:
            break
        quoted, bare = match.groups()
        names.append(quoted.replace('""', '"') if quoted is not None else bare)
        position = match.end()
        if position < len(text) and text[position] in ".,":
            position += 1
    return names


# -- Parquet values as PostgreSQL text -----------------------------------------------------------


def _check_arrow_type(path: Path, name: str, kind: pa.DataType) -> None:
    import pyarrow as pa  # noqa: PLC0415 - pyarrow only for a Parquet baseline

    ok = (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_date(kind)
        or pa.types.is_time(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_null(kind)
    )
    if not ok:
        raise BaselineError(
            f"column {name!r} of the Parquet baseline {path} is of Arrow type {kind}, which "
            "walrecover cannot turn into PostgreSQL's text exactly: write it as a string column"
        )


def _text(value: Any) -> str | None:
    """A Parquet value as PostgreSQL's input reads it, exactly."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, float):
        return repr(value)  # a float column's own value: the shortest text that reads back
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _parquet_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[str | None, ...]]:
    import pyarrow.parquet as pq  # noqa: PLC0415 - pyarrow only for a Parquet baseline

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=50_000, columns=list(columns)):
        values = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for row in zip(*values, strict=True):
            yield tuple(_text(value) for value in row)
