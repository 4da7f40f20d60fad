"""Export decoded changes: JSON lines, redo SQL, or undo SQL (``walrecover decode``).

All three stream: JSON lines and redo SQL are written as the changes arrive; undo SQL, which
must come out newest first, is written per transaction to a temporary file and read back in
reverse, so memory stays bounded whatever the stream's length.

Undo SQL can only restore what the WAL holds: a deleted or updated row's old values are in the
stream only when the table has ``REPLICA IDENTITY FULL``. Where they are not, the undo script
says so in a comment instead of guessing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO

from .decoders import column_limits, decode_all, make_decoder, warnings_for
from .errors import DecodeError, StopPointError
from .model import NO_STOP, Begin, Change, Commit, Event, Op, StopPoint, TableName, Values
from .sources import CaptureSource, ProgressCallback, SlotSource

FORMATS = ("jsonl", "sql", "undo-sql")


def select(
    events: Iterable[Event], tables: Iterable[TableName] = (), stop: StopPoint = NO_STOP
) -> Iterator[Begin | Change | Commit]:
    """Events of committed transactions before ``stop``, keeping only changes of ``tables``.

    A transaction whose commit decides the stop point (plugins without commit LSN or time at
    Begin) is held until its Commit, so nothing past the stop point is ever yielded.
    """
    wanted = {(t.schema, t.name) for t in tables}
    held: list[Begin | Change] = []
    holding = False
    for event in events:
        if isinstance(event, Begin):
            stops = stop.stops(event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
            if stops:
                return
            holding = stops is None
            if holding:
                held = [event]
            else:
                yield event
        elif isinstance(event, Change):
            if wanted and (event.relation.schema, event.relation.name) not in wanted:
                continue
            if holding:
                held.append(event)
            else:
                yield event
        else:
            if holding:
                stops = stop.stops(event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
                if stops is None:
                    raise StopPointError(
                        f"the stream does not say where or when transaction {event.xid} "
                        f"committed, so stop point {stop.describe()} cannot be applied: "
                        "use --stop-before-xid",
                        xid=event.xid,
                    )
                if stops:
                    return
                yield from held
                held, holding = [], False
            yield event


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(change: Change) -> str:
    return f"{_ident(change.relation.schema)}.{_ident(change.relation.name)}"


def _literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    return "'" + value.replace("'", "''") + "'"


def _where(change: Change, image: Values) -> str:
    keys = change.relation.key_columns or tuple(image)
    return " AND ".join(
        f"{_ident(name)} IS NULL"
        if image.get(name) is None
        else f"{_ident(name)} = {_literal(image[name])}"
        for name in keys
        if name in image
    )


def _insert(change: Change, image: Values) -> str:
    names = ", ".join(_ident(name) for name in image)
    values = ", ".join(_literal(value) for value in image.values())
    return f"INSERT INTO {_table(change)} ({names}) VALUES ({values});"


def redo_statement(change: Change) -> str:
    """The SQL that makes ``change`` again."""
    if change.op is Op.TRUNCATE:
        return f"TRUNCATE {_table(change)};"
    if change.op is Op.INSERT:
        return _insert(change, change.new or {})
    if change.old is not None:
        identity: Values = change.old
    elif change.relation.key_columns and all(
        name in (change.new or {}) for name in change.relation.key_columns
    ):
        identity = change.new or {}
    else:
        return (
            f"-- cannot redo the {change.op} on {_table(change)} at LSN {change.lsn}: the "
            "stream does not say which row it changed (no key, no old row)"
        )
    if change.op is Op.DELETE:
        return f"DELETE FROM {_table(change)} WHERE {_where(change, identity)};"
    sets = ", ".join(f"{_ident(k)} = {_literal(v)}" for k, v in (change.new or {}).items())
    return f"UPDATE {_table(change)} SET {sets} WHERE {_where(change, identity)};"


def _full_old_row(change: Change) -> bool:
    """True when the change carries the whole old row (REPLICA IDENTITY FULL).

    Either the table is known whole and every column is in the old row, or the old row holds
    more than the key: only REPLICA IDENTITY FULL logs non-key columns.
    """
    old = change.old or {}
    relation = change.relation
    if relation.complete and relation.columns:
        return all(column.name in old for column in relation.columns)
    keys = set(relation.key_columns)
    return bool(keys) and any(name not in keys for name in old)


def _old_row(change: Change) -> dict[str, str | None]:
    """The old row, with the columns a plugin leaves out when NULL (test_decoding) as NULL."""
    row = dict(change.old or {})
    if change.relation.complete:
        for column in change.relation.columns:
            row.setdefault(column.name, None)
    return row


def undo_statement(change: Change) -> str:
    """The SQL that reverses ``change``, or a comment saying why the WAL cannot tell."""
    where = f"{change.op} on {_table(change)} at LSN {change.lsn}"
    if change.op is Op.TRUNCATE:
        return (
            f"-- cannot undo the TRUNCATE of {_table(change)} at LSN {change.lsn}: "
            "the WAL does not hold the truncated rows"
        )
    if change.op is Op.INSERT:
        return f"DELETE FROM {_table(change)} WHERE {_where(change, change.new or {})};"
    if not _full_old_row(change):
        return (
            f"-- cannot undo the {where}: the old row is not in the WAL "
            "(only tables with REPLICA IDENTITY FULL log it)"
        )
    old = _old_row(change)
    if change.op is Op.DELETE:
        return _insert(change, old)
    new = dict(old)
    new.update(change.new or {})
    sets = ", ".join(
        f"{_ident(k)} = {_literal(v)}" for k, v in old.items() if k not in change.unchanged_toast
    )
    return f"UPDATE {_table(change)} SET {sets} WHERE {_where(change, new)};"


def change_record(change: Change, begin: Begin | None) -> dict[str, object]:
    """The JSON object ``--format jsonl`` prints for one change."""
    return {
        "xid": change.xid if change.xid is not None else (begin.xid if begin else None),
        "lsn": str(change.lsn) if change.lsn is not None else None,
        "commit_lsn": str(begin.commit_lsn) if begin and begin.commit_lsn is not None else None,
        "commit_time": begin.commit_time.isoformat() if begin and begin.commit_time else None,
        "op": change.op.value,
        "schema": change.relation.schema,
        "table": change.relation.name,
        "relation_id": change.relation.relation_id,
        "new": dict(change.new) if change.new is not None else None,
        "old": dict(change.old) if change.old is not None else None,
        "unchanged_toast": sorted(change.unchanged_toast),
    }


def write(events: Iterable[Begin | Change | Commit], fmt: str, out: IO[str]) -> int:
    """Write selected events to ``out`` in ``fmt``; return the number of changes written."""
    if fmt == "jsonl":
        return _write_jsonl(events, out)
    if fmt == "sql":
        return _write_redo(events, out)
    if fmt == "undo-sql":
        return _write_undo(events, out)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def _write_jsonl(events: Iterable[Begin | Change | Commit], out: IO[str]) -> int:
    count = 0
    begin: Begin | None = None
    pending: list[Change] = []
    for event in events:
        if isinstance(event, Begin):
            begin, pending = event, []
        elif isinstance(event, Change):
            if begin is not None and begin.commit_lsn is None and begin.commit_time is None:
                pending.append(event)  # the Commit brings the commit LSN and time
                continue
            out.write(json.dumps(change_record(event, begin), ensure_ascii=False) + "\n")
            count += 1
        else:
            if pending:
                merged = Begin(
                    xid=event.xid if event.xid is not None else (begin.xid if begin else None),
                    commit_lsn=event.commit_lsn,
                    end_lsn=event.end_lsn,
                    commit_time=event.commit_time,
                )
                for change in pending:
                    out.write(json.dumps(change_record(change, merged), ensure_ascii=False) + "\n")
                    count += 1
            begin, pending = None, []
    return count


def _write_redo(events: Iterable[Begin | Change | Commit], out: IO[str]) -> int:
    """Redo statements in stream order, one BEGIN/COMMIT per transaction with changes."""
    count = 0
    block: list[str] = []
    opened = False  # BEGIN already written for this transaction (a long one, written in parts)
    for event in events:
        if isinstance(event, Begin):
            block, opened = [], False
        elif isinstance(event, Change):
            block.append(redo_statement(event))
            count += 1
            if len(block) >= 10_000:
                out.write(("" if opened else "BEGIN;\n") + "\n".join(block) + "\n")
                block, opened = [], True
        else:
            if block or opened:
                head = "" if opened else "BEGIN;\n"
                body = "\n".join(block) + "\n" if block else ""
                out.write(head + body + "COMMIT;\n")
            block, opened = [], False
    return count


def _write_undo(events: Iterable[Begin | Change | Commit], out: IO[str]) -> int:
    """Undo statements, newest transaction first and newest change first within each."""
    count = 0
    offsets: list[tuple[int, int]] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        statements: list[str] = []
        for event in events:
            if isinstance(event, Begin):
                statements = []
            elif isinstance(event, Change):
                statements.append(undo_statement(event))
                count += 1
            elif statements:
                text = "BEGIN;\n" + "\n".join(reversed(statements)) + "\nCOMMIT;\n"
                start = spool.tell()
                spool.write(text)
                offsets.append((start, len(text)))
                statements = []
        for start, length in reversed(offsets):
            spool.seek(start)
            out.write(spool.read(length))
    return count


@dataclass(frozen=True)
class DecodeResult:
    """What ``walrecover decode`` wrote."""

    changes: int
    plugin: str
    warnings: tuple[str, ...] = ()


def decode_to(
    out: IO[str],
    *,
    dsn: str | None = None,
    slot: str | None = None,
    capture: str | None = None,
    plugin: str | None = None,
    tables: Iterable[TableName] = (),
    stop: StopPoint = NO_STOP,
    fmt: str = "jsonl",
    options: Mapping[str, str] | None = None,
    via_plugin: str | None = None,
    progress: ProgressCallback | None = None,
) -> DecodeResult:
    """Decode a slot (through a copy) or a capture file and write its changes to ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    tables = tuple(tables)
    source: SlotSource | CaptureSource
    if capture is not None:
        if plugin is None:
            raise DecodeError("a capture file needs --plugin: the plugin pg_recvlogical used")
        source = CaptureSource(capture, plugin, options=options, progress=progress)
    elif slot is not None:
        source = SlotSource(
            dsn,
            slot,
            tables=tables,
            options=options,
            via_plugin=via_plugin,
            progress=progress,
        )
    else:
        raise DecodeError("give a slot (-d and --slot) or a capture file (--from-file)")
    with source:
        decoder = make_decoder(source.plugin, dict(source.options))
        events = select(decode_all(decoder, source.messages()), tables, stop)
        try:
            count = write(events, fmt, out)
        except DecodeError as exc:
            if isinstance(source, CaptureSource):
                source.locate(exc)
            raise
        warnings = warnings_for(source.plugin, dict(source.options))
        if isinstance(source, SlotSource):
            # What the server said while decoding (wal2json's changes it could not identify),
            # and what the slot read cannot carry.
            warnings += [*source.warnings, *source.unproven, *source.notices.warnings()]
            warnings += column_limits(source.plugin, source.server_version)
        else:
            warnings += column_limits(source.plugin, None)
        return DecodeResult(count, source.plugin, tuple(warnings))
