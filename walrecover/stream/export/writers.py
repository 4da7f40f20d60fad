"""Writers: selected events to JSON lines, a redo script or an undo script, and the summary of
what was written (the scripts' headers and closing comments).

All three stream: JSON lines and redo SQL are written as the changes arrive; undo SQL, which
must come out newest first, is written per transaction to a temporary file and read back in
reverse, so memory stays bounded whatever the stream's length.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO

from ..lsn import Lsn
from ..model import NO_START, NO_STOP, Begin, Change, Commit, Op, StartPoint, StopPoint, TableName
from .statements import change_record, comment, redo_statement, undo_statement

FORMATS = ("jsonl", "sql", "undo-sql")


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
            comment(f"-- source: {self.source or '-'}"),
            comment(f"-- tables: {tables}"),
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
