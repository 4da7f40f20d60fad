"""``walrecover decode``: read one source and write the changes chosen by a start, a stop point
and a table filter, as JSON lines, redo SQL or undo SQL."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

from ...errors import DecodeError, StopPointError, StreamCutShort
from ..decoders import column_limits, warnings_for
from ..model import NO_START, NO_STOP, Commit, Event, StartPoint, StopPoint, TableName
from ..settings import CaptureSettings
from ..sources import CaptureSource, ProgressCallback, SlotSource, Source
from ..value_check import ValueChecker
from .selection import select
from .statements import literal
from .writers import FORMATS, Selection, Summary, write


@dataclass(frozen=True)
class DecodeResult:
    """What ``walrecover decode`` wrote."""

    changes: int
    plugin: str
    warnings: tuple[str, ...] = ()
    #: Transactions, changes per operation, the range and what the script could not carry.
    summary: Summary = field(default_factory=Summary)


def check_request(fmt: str, start: StartPoint, stop: StopPoint) -> None:
    """Refuse a format, start or stop that cannot make a script, before reading anything.

    ``fmt="undo-sql"`` needs a start: reversing every change the slot ever saw is never what an
    incident needs (after a bad DELETE, it empties the table).
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

    Builds the source and hands it to :func:`decode`; ``capture_settings`` are the output
    settings the capture was printed with.
    """
    check_request(fmt, start, stop)
    tables = tuple(tables)
    source: Source
    if capture is not None:
        if plugin is None:
            raise DecodeError("a capture file needs --plugin: the plugin pg_recvlogical used")
        source = CaptureSource(
            capture,
            plugin,
            options=options,
            progress=progress,
            settings=capture_settings,
            tables=tables,
        )
    elif slot is not None:
        source = SlotSource(
            dsn, slot, tables=tables, options=options, via_plugin=via_plugin, progress=progress
        )
    else:
        raise DecodeError("give a slot (-d and --slot) or a capture file (--from-file)")
    return decode(source, out, tables=tables, stop=stop, start=start, fmt=fmt)


def decode(
    source: Source,
    out: IO[str],
    *,
    tables: Iterable[TableName] = (),
    stop: StopPoint = NO_STOP,
    start: StartPoint = NO_START,
    fmt: str = "jsonl",
) -> DecodeResult:
    """Read ``source`` (not yet opened) and write its changes to ``out`` in ``fmt``.

    ``start`` and ``stop`` choose the transactions (``start`` inclusive, ``stop`` exclusive);
    ``fmt="undo-sql"`` needs a start. A capture's values are checked against the output
    settings it was printed with, and the SQL formats start by setting them so the script's
    literals are read as they were printed.
    """
    check_request(fmt, start, stop)
    tables = tuple(tables)
    warnings: list[str] = []
    with source:
        _check_start(start, source)
        cut: list[StreamCutShort] = []
        decoded = source.events()
        if isinstance(source, CaptureSource):
            checker = ValueChecker(source.settings, source.plugin, tables)
            decoded = checker.events(_whole_transactions(decoded, cut))
            warnings.extend(source.settings.warnings())
            if fmt != "jsonl" and source.settings.stated:
                out.write(_settings_prologue(source.settings))
        events = select(decoded, tables, stop, start)
        try:
            summary = write(events, fmt, out, Selection(source.describe(), tables, start, stop))
        except DecodeError as exc:
            source.locate(exc)
            raise
        warnings[:0] = warnings_for(source.plugin, dict(source.options))
        warnings += [*source.notes(), *(exc.message for exc in cut)]
        # What the server said while decoding (wal2json's changes it could not identify), and
        # what the slot read cannot carry.
        warnings += [*source.warnings, *source.unproven]
        if isinstance(source, SlotSource):
            warnings += source.notices.warnings()
        warnings += column_limits(source.plugin, source.server_version)
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


def _check_start(start: StartPoint, source: Source) -> None:
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
    if start.xid is not None:
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
        f"SET {name} = {literal(session[name])};"
        for name in ("DateStyle", "IntervalStyle", "TimeZone")
    ]
    return "\n".join(lines) + "\n"
