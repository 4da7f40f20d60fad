"""Export decoded changes: JSON lines, redo SQL, or undo SQL (``walrecover decode``).

All three stream: JSON lines and redo SQL are written as the changes arrive; undo SQL, which
must come out newest first, is written per transaction to a temporary file and read back in
reverse, so memory stays bounded whatever the stream's length.

What is decoded is chosen by a start (:class:`~walrecover.stream.model.StartPoint`: from an LSN, a
transaction or a time on, or one transaction only), a stop point and a table filter. Undo SQL
without a start would reverse everything the slot ever saw, so :func:`decode_to` refuses it.
Both SQL scripts begin with a header saying what they redo or undo: the source, the tables,
the first and last transaction, the changes per operation and those the script cannot carry.

Undo SQL can only restore what the WAL holds: a deleted or updated row's old values are in the
stream only when the table has ``REPLICA IDENTITY FULL``. Where they are not, the undo script
says so in a comment instead of guessing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO

from ..errors import DecodeError, StopPointError, StreamCutShort
from .decoders import column_limits, decode_all, decoder_notes, make_decoder, warnings_for
from .lsn import Lsn
from .model import (
    NO_START,
    NO_STOP,
    Begin,
    Change,
    Commit,
    Event,
    Op,
    StartPoint,
    StopPoint,
    TableName,
    Values,
)
from .settings import CaptureSettings
from .sources import CaptureSource, ProgressCallback, SlotSource
from .value_check import ValueChecker

FORMATS = ("jsonl", "sql", "undo-sql")


def select(
    events: Iterable[Event],
    tables: Iterable[TableName] = (),
    stop: StopPoint = NO_STOP,
    start: StartPoint = NO_START,
) -> Iterator[Begin | Change | Commit]:
    """Events of committed transactions from ``start`` and before ``stop``, keeping only
    changes of ``tables``.

    A transaction whose commit decides the start or the stop (plugins without commit LSN or time
    at Begin) is held until its Commit, so nothing outside the range is ever yielded. A start
    the stream never reaches (an xid that does not commit in it, an LSN or time after its last
    commit) raises :class:`~walrecover.errors.StopPointError` once the stream is read.
    """
    wanted = {(t.schema, t.name) for t in tables}
    started = not start.is_set
    held: list[Begin | Change] = []
    holding = skipping = False
    for event in events:
        if isinstance(event, Begin):
            at = (event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
            stops = stop.stops(*at)
            if stops:
                break
            begins = True if started else start.starts(*at)
            skipping = begins is False and stops is False
            if skipping:
                continue
            holding = stops is None or begins is None
            if holding:
                held = [event]
            else:
                started = True
                yield event
        elif isinstance(event, Change):
            if skipping or (wanted and (event.relation.schema, event.relation.name) not in wanted):
                continue
            if holding:
                held.append(event)
            else:
                yield event
        else:
            if skipping:
                skipping = False
                continue
            if holding:
                at = (event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
                xid = event.xid if event.xid is not None else _held_xid(held)
                stops = stop.stops(xid, *at[1:])
                if stops is None:
                    raise StopPointError(
                        f"the stream does not say where or when transaction {xid} "
                        f"committed, so stop point {stop.describe()} cannot be applied: "
                        "use --stop-before-xid",
                        xid=xid,
                    )
                if stops:
                    break
                begins = True if started else start.starts(xid, *at[1:])
                if begins is None:
                    raise StopPointError(
                        f"the stream does not say where or when transaction {xid} "
                        f"committed, so the start {start.describe()} cannot be applied: "
                        "use --start-at-xid or --xid",
                        xid=xid,
                    )
                events_held, held, holding = held, [], False
                if not begins:
                    continue
                started = True
                yield from events_held
            yield event
            if start.only:
                return
    if not started:
        raise _never_started(start, stop, tuple(tables))


def _held_xid(held: list[Begin | Change]) -> int | None:
    return held[0].xid if held else None


def _never_started(
    start: StartPoint, stop: StopPoint, tables: tuple[TableName, ...]
) -> StopPointError:
    """The error for a start the stream never reached, naming the option to check."""
    before = f" {stop.describe()}" if stop.is_set else ""
    if start.xid is not None:
        option = "--xid" if start.only else "--start-at-xid"
        filtered = (
            ", or changed none of the --table tables (a plugin that filters on the server "
            "leaves such transactions out)"
            if tables
            else ""
        )
        return StopPointError(
            f"transaction {start.xid} does not commit in the stream{before}: it may have "
            f"aborted, be still running, or have committed before the slot's start{filtered}; "
            f"check {option}",
            xid=start.xid,
        )
    if start.lsn is not None:
        return StopPointError(
            f"no transaction commits at or after LSN {start.lsn} in the stream{before}: "
            "check --start-at-lsn",
            lsn=start.lsn,
        )
    assert start.time is not None
    return StopPointError(
        f"no transaction commits at or after {start.time.isoformat()} in the stream{before}: "
        "check --start-at-time",
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(change: Change) -> str:
    return f"{_ident(change.relation.schema)}.{_ident(change.relation.name)}"


def _comment(text: str) -> str:
    """``text`` for an SQL comment line: a line break in a name must not end the comment (the
    rest of the line would run as SQL), so CR and LF are shown escaped."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


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


def _where_one(change: Change, image: Values) -> str:
    """A WHERE clause for the one row ``image`` identifies.

    A key (fewer columns than the table) identifies one row. Without one, or with every column
    as the identity (REPLICA IDENTITY FULL), rows equal in every column are duplicates, and a
    change touched one of them: the clause picks one by its ``(tableoid, ctid)`` so the
    statement changes one row too, never all the copies.
    """
    where = _where(change, image)
    relation = change.relation
    if relation.key_columns and len(relation.key_columns) < len(relation.columns):
        return where
    table = _table(change)
    return f"(tableoid, ctid) = (SELECT tableoid, ctid FROM {table} WHERE {where} LIMIT 1)"


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
        return _comment(
            f"-- cannot redo the {change.op} on {_table(change)} at LSN {change.lsn}: the "
            "stream does not say which row it changed (no key, no old row)"
        )
    if change.op is Op.DELETE:
        return f"DELETE FROM {_table(change)} WHERE {_where_one(change, identity)};"
    sets = ", ".join(f"{_ident(k)} = {_literal(v)}" for k, v in (change.new or {}).items())
    return f"UPDATE {_table(change)} SET {sets} WHERE {_where_one(change, identity)};"


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
        return _comment(
            f"-- cannot undo the TRUNCATE of {_table(change)} at LSN {change.lsn}: "
            "the WAL does not hold the truncated rows"
        )
    if change.op is Op.INSERT:
        return f"DELETE FROM {_table(change)} WHERE {_where_one(change, change.new or {})};"
    if not _full_old_row(change):
        return _comment(
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
    return f"UPDATE {_table(change)} SET {sets} WHERE {_where_one(change, new)};"


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


@dataclass(frozen=True)
class TransactionRef:
    """Where one transaction committed, as far as the stream says (None where it does not)."""

    xid: int | None
    commit_lsn: Lsn | None
    end_lsn: Lsn | None
    commit_time: datetime | None

    def describe(self) -> str:
        """``xid 1234, commit LSN 0/1A2B3C, committed 2024-05-01T10:00:00+00:00``."""
        parts = [f"xid {self.xid if self.xid is not None else '?'}"]
        if self.commit_lsn is not None:
            parts.append(f"commit LSN {self.commit_lsn}")
        elif self.end_lsn is not None:
            parts.append(f"commit record ends at LSN {self.end_lsn}")
        if self.commit_time is not None:
            parts.append(f"committed {self.commit_time.isoformat()}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Selection:
    """What a decode was asked for, as the SQL scripts' headers print it."""

    source: str = ""
    tables: tuple[TableName, ...] = ()
    start: StartPoint = NO_START
    stop: StopPoint = NO_STOP

    def header(self, kind: str) -> list[str]:
        tables = ", ".join(str(t) for t in self.tables) or "every table in the stream"
        return [
            f"-- walrecover {kind} script",
            _comment(f"-- source: {self.source or '-'}"),
            _comment(f"-- tables: {tables}"),
            f"-- selected: {self.start.describe()}, {self.stop.describe()}",
        ]


@dataclass(frozen=True)
class Summary:
    """What a decode wrote: transactions and changes, per operation, and the range."""

    transactions: int = 0
    changes: int = 0
    #: Row changes per operation (``insert``, ``update``, ``delete``, ``truncate``).
    operations: Mapping[str, int] = field(default_factory=dict)
    #: Changes the SQL script could not redo or undo (a comment says why, in the script).
    not_carried: Mapping[str, int] = field(default_factory=dict)
    first: TransactionRef | None = None
    last: TransactionRef | None = None

    def lines(self, verb: str, kind: str) -> list[str]:
        """Comment lines for a script: the range, the counts, what cannot be carried."""
        ops = ", ".join(f"{self.operations.get(op.value, 0)} {op.value}" for op in Op)
        lines = [
            f"-- {verb} {_plural(self.changes, 'row change')} of "
            f"{_plural(self.transactions, 'transaction')} ({ops})",
            f"-- first transaction: {self.first.describe() if self.first else '-'}",
            f"-- last transaction:  {self.last.describe() if self.last else '-'}",
        ]
        missing = sum(self.not_carried.values())
        if missing:
            per = ", ".join(f"{n} {op}" for op, n in sorted(self.not_carried.items()))
            if kind == "undo":
                why = (
                    "the WAL holds no old row for an update or delete of a table without "
                    "REPLICA IDENTITY FULL, nor the rows a TRUNCATE removed"
                )
            else:
                why = "the stream does not say which row they changed"
            lines.append(
                f"-- CANNOT BE {_DONE[kind].upper()}: {_plural(missing, 'row change')} ({per}):"
                f" {why}; each is a '-- cannot {kind}' comment below"
            )
        return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


_DONE = {"undo": "undone", "redo": "redone"}


class _Tally:
    """Counts what a writer wrote, transaction by transaction."""

    def __init__(self) -> None:
        self.transactions = 0
        self.changes = 0
        self.operations: dict[str, int] = {}
        self.not_carried: dict[str, int] = {}
        self.first: TransactionRef | None = None
        self.last: TransactionRef | None = None
        self._begin: Begin | None = None
        self._in_txn = 0

    def begin(self, event: Begin) -> None:
        self._begin, self._in_txn = event, 0

    def change(self, change: Change, statement: str | None = None) -> None:
        self.changes += 1
        self._in_txn += 1
        op = change.op.value
        self.operations[op] = self.operations.get(op, 0) + 1
        if statement is not None and statement.startswith("--"):
            self.not_carried[op] = self.not_carried.get(op, 0) + 1

    def commit(self, event: Commit) -> TransactionRef | None:
        """Close the transaction; its reference if it had changes."""
        begin, self._begin = self._begin, None
        if not self._in_txn:
            return None
        ref = TransactionRef(
            xid=event.xid if event.xid is not None else (begin.xid if begin else None),
            commit_lsn=event.commit_lsn or (begin.commit_lsn if begin else None),
            end_lsn=event.end_lsn or (begin.end_lsn if begin else None),
            commit_time=event.commit_time or (begin.commit_time if begin else None),
        )
        self.transactions += 1
        self.first = self.first or ref
        self.last = ref
        return ref

    def summary(self) -> Summary:
        return Summary(
            transactions=self.transactions,
            changes=self.changes,
            operations=dict(sorted(self.operations.items())),
            not_carried=dict(sorted(self.not_carried.items())),
            first=self.first,
            last=self.last,
        )


def write(
    events: Iterable[Begin | Change | Commit],
    fmt: str,
    out: IO[str],
    selection: Selection | None = None,
) -> Summary:
    """Write selected events to ``out`` in ``fmt``; return what was written.

    ``selection`` says what was selected, for the SQL scripts' headers.
    """
    selection = selection or Selection()
    if fmt == "jsonl":
        return _write_jsonl(events, out)
    if fmt == "sql":
        return _write_redo(events, out, selection)
    if fmt == "undo-sql":
        return _write_undo(events, out, selection)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def _write_jsonl(events: Iterable[Begin | Change | Commit], out: IO[str]) -> Summary:
    tally = _Tally()
    begin: Begin | None = None
    pending: list[Change] = []
    for event in events:
        if isinstance(event, Begin):
            begin, pending = event, []
            tally.begin(event)
        elif isinstance(event, Change):
            tally.change(event)
            if begin is not None and begin.commit_lsn is None and begin.commit_time is None:
                pending.append(event)  # the Commit brings the commit LSN and time
                continue
            out.write(json.dumps(change_record(event, begin), ensure_ascii=False) + "\n")
        else:
            tally.commit(event)
            if pending:
                merged = Begin(
                    xid=event.xid if event.xid is not None else (begin.xid if begin else None),
                    commit_lsn=event.commit_lsn,
                    end_lsn=event.end_lsn,
                    commit_time=event.commit_time,
                )
                for change in pending:
                    out.write(json.dumps(change_record(change, merged), ensure_ascii=False) + "\n")
            begin, pending = None, []
    return tally.summary()


def _write_redo(
    events: Iterable[Begin | Change | Commit], out: IO[str], selection: Selection
) -> Summary:
    """Redo statements in stream order, one BEGIN/COMMIT per transaction with changes.

    The header says what was asked for; the counts and the range, known only at the end, close
    the script (it streams).
    """
    out.write("\n".join(selection.header("redo")) + "\n")
    tally = _Tally()
    block: list[str] = []
    opened = False  # BEGIN already written for this transaction (a long one, written in parts)
    for event in events:
        if isinstance(event, Begin):
            block, opened = [], False
            tally.begin(event)
        elif isinstance(event, Change):
            statement = redo_statement(event)
            tally.change(event, statement)
            block.append(statement)
            if len(block) >= 10_000:
                out.write(("" if opened else "BEGIN;\n") + "\n".join(block) + "\n")
                block, opened = [], True
        else:
            tally.commit(event)
            if block or opened:
                head = "" if opened else "BEGIN;\n"
                body = "\n".join(block) + "\n" if block else ""
                out.write(head + body + "COMMIT;\n")
            block, opened = [], False
    summary = tally.summary()
    out.write("\n".join(summary.lines("redoes", "redo")) + "\n")
    return summary


def _write_undo(
    events: Iterable[Begin | Change | Commit], out: IO[str], selection: Selection
) -> Summary:
    """Undo statements, newest transaction first and newest change first within each.

    The statements are spooled first, so the header can say what the script undoes before any
    statement; the whole script is one transaction, so a statement that fails (a row that
    changed again since) leaves the table as it was instead of half undone.
    """
    tally = _Tally()
    offsets: list[tuple[int, int]] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        statements: list[str] = []
        for event in events:
            if isinstance(event, Begin):
                statements = []
                tally.begin(event)
            elif isinstance(event, Change):
                statement = undo_statement(event)
                tally.change(event, statement)
                statements.append(statement)
            else:
                ref = tally.commit(event)
                if statements and ref is not None:
                    text = (
                        f"-- undo transaction {ref.describe()}\n"
                        + "\n".join(reversed(statements))
                        + "\n"
                    )
                    start = spool.tell()
                    spool.write(text)
                    offsets.append((start, len(text)))
                statements = []
        summary = tally.summary()
        head = selection.header("undo") + summary.lines("undoes", "undo")
        head.append("-- newest first, in one transaction: it undoes all of this or nothing")
        out.write("\n".join(head) + "\nBEGIN;\n")
        for start, length in reversed(offsets):
            spool.seek(start)
            out.write(spool.read(length))
        out.write("COMMIT;\n")
    return summary


@dataclass(frozen=True)
class DecodeResult:
    """What ``walrecover decode`` wrote."""

    changes: int
    plugin: str
    warnings: tuple[str, ...] = ()
    #: Transactions, changes per operation, the range and what the script could not carry.
    summary: Summary = field(default_factory=Summary)


def decode_to(
    out: IO[str],
    *,
    dsn: str | None = None,
    slot: str | None = None,
    capture: str | None = None,
    plugin: str | None = None,
    tables: Iterable[TableName] = (),
    stop: StopPoint = NO_STOP,
    start: StartPoint = NO_START,
    fmt: str = "jsonl",
    options: Mapping[str, str] | None = None,
    via_plugin: str | None = None,
    progress: ProgressCallback | None = None,
    capture_settings: CaptureSettings | None = None,
) -> DecodeResult:
    """Decode a slot (through a copy) or a capture file and write its changes to ``out``.

    ``start`` and ``stop`` choose the transactions (``start`` inclusive, ``stop`` exclusive);
    ``fmt="undo-sql"`` needs a start: reversing every change the slot ever saw is never what an
    incident needs (after a bad DELETE, it empties the table).

    ``capture_settings`` are the output settings the capture was printed with: its values are
    checked against them, and the SQL formats start by setting them so the script's literals
    are read as they were printed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "undo-sql" and not start.is_set:
        raise StopPointError(
            "undo SQL needs a start (--xid XID for one transaction, or --start-at-lsn/-xid/"
            "-time): without one it reverses every change in the stream"
        )
    if start.lsn is not None and stop.lsn is not None and start.lsn >= stop.lsn:
        raise StopPointError(
            f"the start (LSN {start.lsn}) is not before the stop point (LSN {stop.lsn}): "
            "nothing lies between",
            lsn=start.lsn,
        )
    if start.time is not None and stop.time is not None and start.time >= stop.time:
        raise StopPointError(
            f"the start ({start.time.isoformat()}) is not before the stop point "
            f"({stop.time.isoformat()}): nothing lies between"
        )
    tables = tuple(tables)
    source: SlotSource | CaptureSource
    if capture is not None:
        if plugin is None:
            raise DecodeError("a capture file needs --plugin: the plugin pg_recvlogical used")
        source = CaptureSource(
            capture, plugin, options=options, progress=progress, settings=capture_settings
        )
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
    warnings: list[str] = []
    with source:
        _check_start(start, source)
        decoder = make_decoder(
            source.plugin,
            dict(source.options),
            two_phase=isinstance(source, CaptureSource) and source.two_phase,
        )
        cut: list[StreamCutShort] = []
        decoded = (
            _whole_transactions(source.decoded(decoder), cut)
            if isinstance(source, CaptureSource)
            else decode_all(decoder, source.messages())
        )
        if isinstance(source, CaptureSource):
            checker = ValueChecker(source.settings, source.plugin, tables)
            decoded = checker.events(decoded)
            warnings.extend(source.settings.warnings())
            if fmt != "jsonl" and source.settings.stated:
                out.write(_settings_prologue(source.settings))
        events = select(decoded, tables, stop, start)
        selection = Selection(source.describe(), tables, start, stop)
        try:
            summary = write(events, fmt, out, selection)
        except DecodeError as exc:
            if isinstance(source, CaptureSource):
                source.locate(exc)
            raise
        warnings[:0] = warnings_for(source.plugin, dict(source.options))
        warnings += [*decoder_notes(decoder), *(exc.message for exc in cut)]
        if isinstance(source, SlotSource):
            # What the server said while decoding (wal2json's changes it could not identify),
            # and what the slot read cannot carry.
            warnings += [*source.warnings, *source.unproven, *source.notices.warnings()]
            warnings += column_limits(source.plugin, source.server_version)
        else:
            warnings += column_limits(source.plugin, None)
        missing = sum(summary.not_carried.values())
        if missing and fmt != "jsonl":
            kind = "undone" if fmt == "undo-sql" else "redone"
            warnings.append(
                f"{missing} of the {summary.changes} row changes cannot be {kind}: the script "
                f"has a '-- cannot {kind[:4]}' comment for each (see its header)"
            )
        return DecodeResult(summary.changes, source.plugin, tuple(warnings), summary)


def _whole_transactions(events: Iterable[Event], cut: list[StreamCutShort]) -> Iterator[Event]:
    """``events`` a transaction at a time, so a capture that ends inside one (pg_recvlogical
    stopped while writing it) yields none of its changes; the :class:`StreamCutShort` that says
    so is put in ``cut``. Holds one transaction's events in memory."""
    held: list[Event] = []
    try:
        for event in events:
            held.append(event)
            if isinstance(event, Commit):
                yield from held
                held = []
    except StreamCutShort as exc:
        cut.append(exc)
        return
    yield from held


def _check_start(start: StartPoint, source: SlotSource | CaptureSource) -> None:
    """Refuse a start the slot cannot serve, before reading it."""
    if start.lsn is not None and source.start_lsn is not None and start.lsn < source.start_lsn:
        raise StopPointError(
            f"--start-at-lsn {start.lsn} is before the slot's start ({source.start_lsn}): "
            "transactions that committed in between are no longer in the slot, so the output "
            f"would miss them; start at {source.start_lsn} or later",
            lsn=start.lsn,
        )
    if start.lsn is not None and source.end_lsn is not None and start.lsn > source.end_lsn:
        raise StopPointError(
            f"--start-at-lsn {start.lsn} is after the end of the WAL ({source.end_lsn}): "
            "check the LSN",
            lsn=start.lsn,
        )
    if isinstance(source, SlotSource) and start.xid is not None:
        status = source.xid_status(start.xid)
        if status in ("aborted", "in progress"):
            option = "--xid" if start.only else "--start-at-xid"
            raise StopPointError(
                f"transaction {start.xid} is {status} on the source, so it never commits in "
                f"the stream: check {option}",
                xid=start.xid,
            )


def _settings_prologue(settings: CaptureSettings) -> str:
    """``SET`` statements that make a session read the script's literals as the capture's
    session printed them."""
    session = settings.session()
    lines = ["-- the capture's values were printed with these settings; read them the same way"]
    lines += [
        f"SET {name} = {_literal(session[name])};"
        for name in ("DateStyle", "IntervalStyle", "TimeZone")
    ]
    return "\n".join(lines) + "\n"
