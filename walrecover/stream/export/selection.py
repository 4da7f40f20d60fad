"""Which events a decode writes: the transactions from a start and before a stop point, and
only the changes of the tables asked for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ...errors import StopPointError
from ..model import (
    NO_START,
    NO_STOP,
    Begin,
    Change,
    Commit,
    Event,
    StartPoint,
    StopPoint,
    TableName,
)


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
        if isinstance(event, Change):
            if skipping or (wanted and (event.relation.schema, event.relation.name) not in wanted):
                continue
            if holding:
                held.append(event)
                continue
            yield event
        elif isinstance(event, Begin):
            action = _at_begin(event, stop, start, started)
            if action == "stop":
                break
            skipping, holding = action == "skip", action == "hold"
            held = [event] if holding else held
            if action == "pass":
                started = True
                yield event
        elif skipping:  # the Commit of a transaction before the start
            skipping = False
        else:
            release = _release(event, held, stop, start, started) if holding else [event]
            if release is None:
                break
            started = started or (holding and bool(release))
            held, holding = [], False
            yield from release
            if release and start.only:
                return
    if not started:
        raise _never_started(start, stop, tuple(tables))


def _at_begin(event: Begin, stop: StopPoint, start: StartPoint, started: bool) -> str:
    """What to do with a transaction at its Begin: ``stop`` (at or past the stop point),
    ``skip`` (before the start), ``hold`` until its Commit (which decides), or ``pass``."""
    at = (event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
    stops = stop.stops(*at)
    if stops:
        return "stop"
    begins = True if started else start.starts(*at)
    if begins is False and stops is False:
        return "skip"
    return "hold" if stops is None or begins is None else "pass"


def _release(
    event: Commit, held: list[Begin | Change], stop: StopPoint, start: StartPoint, started: bool
) -> list[Begin | Change | Commit] | None:
    """A held transaction at its Commit: None when it is at or past the stop point, else its
    events to yield (none when it lies before the start)."""
    begins = _at_commit(event, held, stop, start, started)
    if begins is None:
        return None
    return [*held, event] if begins else []


def _at_commit(
    event: Commit, held: list[Begin | Change], stop: StopPoint, start: StartPoint, started: bool
) -> bool | None:
    """For a transaction held until its Commit: None when it is at or past the stop point,
    else whether it lies in the range (from the start on)."""
    xid = event.xid if event.xid is not None else _held_xid(held)
    at = (event.commit_lsn, event.end_lsn, event.commit_time)
    stops = stop.stops(xid, *at)
    if stops is None:
        raise StopPointError(
            f"the stream does not say where or when transaction {xid} "
            f"committed, so stop point {stop.describe()} cannot be applied: "
            "use --stop-before-xid",
            xid=xid,
        )
    if stops:
        return None
    begins = True if started else start.starts(xid, *at)
    if begins is None:
        raise StopPointError(
            f"the stream does not say where or when transaction {xid} "
            f"committed, so the start {start.describe()} cannot be applied: "
            "use --start-at-xid or --xid",
            xid=xid,
        )
    return begins


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
