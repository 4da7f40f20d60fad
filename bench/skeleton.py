"""The hand-made floor: parse a pg_recvlogical stream from stdin and COPY its inserts into a table.

Usage (``bench/pipeline.py`` runs it)::

    pg_recvlogical ... --start -f - | python bench/skeleton.py wal2json|pgoutput DSN SOURCE INTO

``SOURCE`` is the dropped table (``schema.table``) whose inserts are read, ``INTO`` the table
they are copied into.

The least a recovery could do, all streaming, in one small process: ``wal2json`` reads format
version 2 (one JSON object a line, ``add-tables`` so only the table's rows arrive;
wal2json 2.5 has no option to send numbers as strings) with orjson when installed, else the
stdlib: a float's shortest text is exact for numeric(12,2) but not in general, one of the
guarantees a floor does without; ``pgoutput`` walks the
binary protocol (version 1, text values) and skips other relations' messages after reading only
their lengths. Each insert becomes a line of COPY text; lines go to the server in chunks. It knows
no updates, deletes, exact checks, reconciliation or audit: it refuses an update or delete of
the table (the benchmark's workload has none) and prints ``{"rows": N}`` at the end.
"""

from __future__ import annotations

import importlib
import json
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import psycopg

CHUNK = 1 << 20

try:
    _loads: Callable[[bytes], Any] = importlib.import_module("orjson").loads
except ImportError:  # the stdlib is the fallback: slower, same result
    _loads = json.loads

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def wal2json_rows(stream: BinaryIO, table: str) -> Iterator[tuple[list[str], str]]:
    """(column names, COPY line) for each insert into ``schema.table`` of a wal2json v2 stream."""
    schema, name = table.split(".", 1)
    for line in stream:
        if not line.strip():
            continue
        message = _loads(line)
        action = message["action"]
        if action in ("B", "C", "M"):
            continue
        if message.get("schema") != schema or message.get("table") != name:
            continue
        if action != "I":
            raise SystemExit(f"skeleton: the stream has a {action!r} change: inserts only")
        columns = message["columns"]
        names = [column["name"] for column in columns]
        yield names, "\t".join(_copy_text(column["value"]) for column in columns) + "\n"


class _Incomplete(Exception):
    """The buffer ends inside a message: read more."""


def _cstring(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise _Incomplete
    return buf[pos:end], end + 1


def _tuple(buf: bytes, pos: int, keep: bool) -> tuple[list[bytes | None] | None, int]:
    """A TupleData at ``pos``: its text values (when ``keep``) and the position after it."""
    if pos + 2 > len(buf):
        raise _Incomplete
    (count,) = struct.unpack_from("!H", buf, pos)
    pos += 2
    values: list[bytes | None] = []
    for _ in range(count):
        if pos >= len(buf):
            raise _Incomplete
        kind = buf[pos]
        pos += 1
        if kind in (0x74, 0x62):  # 't' text, 'b' binary
            if pos + 4 > len(buf):
                raise _Incomplete
            (length,) = struct.unpack_from("!i", buf, pos)
            pos += 4
            if pos + length > len(buf):
                raise _Incomplete
            if keep:
                values.append(buf[pos : pos + length])
            pos += length
        elif kind == 0x75:  # 'u' unchanged TOAST: not in an insert
            raise SystemExit("skeleton: an unchanged TOAST value in an insert")
        elif keep:  # 'n' null
            values.append(None)
    return (values if keep else None), pos


def pgoutput_rows(  # noqa: PLR0912, PLR0915 (the floor: one hand-written loop, on purpose)
    stream: BinaryIO, table: str
) -> Iterator[tuple[list[str], str]]:
    """(column names, COPY line) for each insert into ``schema.table`` of a pgoutput v1 stream.

    pg_recvlogical writes each message followed by a newline; messages are self-delimiting, so
    the newline is checked and skipped. A row is yielded only once its message is whole, since
    a message cut by a read's end is parsed again after the next read.
    """
    schema, name = table.encode().split(b".", 1)
    relid: int | None = None
    names: list[str] = []
    buf = b""
    while True:
        more = stream.read(CHUNK)
        if not more:
            if buf:
                raise SystemExit("skeleton: the stream ends inside a message")
            return
        buf += more
        pos = 0
        while pos < len(buf):
            start = pos
            line: str | None = None
            try:
                kind = buf[pos]
                pos += 1
                if kind == 0x49:  # 'I'
                    if pos + 5 > len(buf):
                        raise _Incomplete
                    (rel,) = struct.unpack_from("!I", buf, pos)
                    values, pos = _tuple(buf, pos + 5, rel == relid)
                    if values is not None:
                        line = "\t".join(
                            "\\N"
                            if v is None
                            else v.decode().translate(_ESCAPES)
                            if (b"\\" in v or b"\t" in v or b"\n" in v or b"\r" in v)
                            else v.decode()
                            for v in values
                        )
                elif kind in (0x55, 0x44):  # 'U', 'D'
                    if pos + 5 > len(buf):
                        raise _Incomplete
                    (rel,) = struct.unpack_from("!I", buf, pos)
                    if rel == relid:
                        raise SystemExit("skeleton: an update or delete: inserts only")
                    pos += 4
                    sub = buf[pos]
                    pos += 1
                    if sub in (0x4B, 0x4F):  # 'K' or 'O' old tuple, then maybe 'N'
                        _, pos = _tuple(buf, pos, False)
                        if kind == 0x55:
                            if pos >= len(buf):
                                raise _Incomplete
                            pos += 1  # 'N'
                            _, pos = _tuple(buf, pos, False)
                    else:  # 'N'
                        _, pos = _tuple(buf, pos, False)
                elif kind == 0x42:  # 'B'
                    pos += 20
                elif kind == 0x43:  # 'C'
                    pos += 25
                elif kind == 0x52:  # 'R'
                    if pos + 4 > len(buf):
                        raise _Incomplete
                    (rel,) = struct.unpack_from("!I", buf, pos)
                    nsp, pos = _cstring(buf, pos + 4)
                    rel_name, pos = _cstring(buf, pos)
                    pos += 1  # replica identity
                    if pos + 2 > len(buf):
                        raise _Incomplete
                    (ncols,) = struct.unpack_from("!H", buf, pos)
                    pos += 2
                    cols: list[str] = []
                    for _ in range(ncols):
                        col, pos = _cstring(buf, pos + 1)
                        cols.append(col.decode())
                        pos += 8
                    if (nsp, rel_name) == (schema, name):
                        relid, names = rel, cols
                elif kind == 0x59:  # 'Y' type
                    _, pos = _cstring(buf, pos + 4)
                    _, pos = _cstring(buf, pos)
                elif kind == 0x4F:  # 'O' origin
                    _, pos = _cstring(buf, pos + 8)
                elif kind == 0x54:  # 'T' truncate
                    if pos + 4 > len(buf):
                        raise _Incomplete
                    (nrels,) = struct.unpack_from("!I", buf, pos)
                    pos += 5 + 4 * nrels
                else:
                    raise SystemExit(f"skeleton: unknown pgoutput message {chr(kind)!r}")
                if pos >= len(buf):
                    raise _Incomplete
                if buf[pos] != 0x0A:
                    raise SystemExit("skeleton: a pgoutput message is not followed by a newline")
                pos += 1
            except (_Incomplete, IndexError):
                pos = start
                break
            # Only a whole message (its newline read) yields: a message cut by the read's end
            # is parsed again from its start once more bytes arrive.
            if line is not None:
                yield names, line + "\n"
        buf = buf[pos:]


def main() -> None:
    plugin, dsn, source, into = sys.argv[1:5]
    rows = (wal2json_rows if plugin == "wal2json" else pgoutput_rows)(sys.stdin.buffer, source)
    count = 0
    first = next(rows, None)
    if first is not None:
        columns = ", ".join(f'"{n}"' for n in first[0])
        with (
            psycopg.connect(dsn) as conn,
            conn.cursor() as cur,
            cur.copy(f"COPY {into} ({columns}) FROM STDIN") as copy,
        ):
            pending = [first[1]]
            size = len(first[1])
            count = 1
            for _, line in rows:
                pending.append(line)
                size += len(line)
                count += 1
                if size >= CHUNK:
                    copy.write("".join(pending))
                    pending.clear()
                    size = 0
            copy.write("".join(pending))
    print(json.dumps({"rows": count}))


if __name__ == "__main__":
    main()
