"""The stop point checked against the source before replay: an LSN inside what the slot can
still decode, an xid that commits (a subtransaction's resolved to its top-level transaction
through pg_walinspect, when the user installed it), and the hint when it never commits.
"""

from __future__ import annotations

from ..db import connect
from ..errors import StopPointError, WalUnavailable
from ..stream.model import StopPoint
from ..stream.sources import CaptureSource, SlotSource
from ..stream.walinspect import WalInspect, waldump_command


def check_stop_range(stop: StopPoint, source: SlotSource | CaptureSource) -> None:
    """Refuse an LSN stop point outside what the slot can still decode."""
    if stop.lsn is None:
        return
    start, end = source.start_lsn, source.end_lsn
    if start is not None and stop.lsn <= start:
        raise StopPointError(
            f"--stop-before-lsn {stop.lsn} is at or before the slot's start ({start}): nothing "
            "could be recovered; the slot only holds changes after it",
            lsn=stop.lsn,
        )
    if end is not None and stop.lsn > end:
        raise StopPointError(
            f"--stop-before-lsn {stop.lsn} is after the end of the WAL ({end}): check the LSN",
            lsn=stop.lsn,
        )


def open_wal(dsn: str | None, *, capture: bool) -> tuple[WalInspect | None, str]:
    """pg_walinspect on the source's server, or None and why not (for the user's advice)."""
    if dsn is None and capture:
        return None, (
            "no source database was given (-d) to read the WAL of the server that wrote the capture"
        )
    conn = connect(dsn, autocommit=True, role="source")
    try:
        return WalInspect.open(conn), ""
    except WalUnavailable as exc:
        conn.close()
        return None, exc.message


def resolve_stop_xid(
    stop: StopPoint, src: SlotSource | CaptureSource, wal: WalInspect | None, notes: list[str]
) -> StopPoint:
    """Check an xid stop point against the source and resolve a subtransaction to its
    top-level transaction (the stream shows only those): the stop point to use."""
    if stop.xid is None or stop.xid32 is None:
        return stop
    xid, xid32 = stop.xid, stop.xid32
    if not isinstance(src, SlotSource):
        if stop.epoch is not None:
            notes.append(
                f"a capture records no epochs: --stop-before-xid {xid} is matched as xid {xid32}"
                f" (epoch {stop.epoch} is not checked)"
            )
        return stop
    if stop.epoch is not None:
        here = src.widen_xid(xid32)
        if here is not None and here != xid:
            when = (
                "has not been assigned yet"
                if xid > here
                else "is older than anything the slot can hold (a slot holds at most the last"
                " 2^31 transactions)"
            )
            raise StopPointError(
                f"--stop-before-xid {xid} is xid {xid32} of epoch {stop.epoch}, but the server "
                f"is in epoch {here >> 32}, where xid {xid32} is {here}: transaction {xid} "
                f"{when}; check --stop-before-xid",
                xid=xid,
            )
    status = src.xid_status(xid)
    if status in ("aborted", "in progress"):
        raise StopPointError(
            f"transaction {xid} is {status} on the source, so it never commits "
            "in the stream: check --stop-before-xid",
            xid=xid,
        )
    if status == "committed" and wal is not None and src.start_lsn is not None:
        try:
            record = wal.top_level(xid32, src.start_lsn, src.end_lsn)
        except WalUnavailable:
            record = None
        if record is not None and record.xid != xid32:
            notes.append(
                f"transaction {xid} is a subtransaction of transaction {record.xid} (commit LSN "
                f"{record.lsn}): a subtransaction commits with its top-level transaction, so "
                f"the recovery stops before transaction {record.xid}"
            )
            return StopPoint(xid=record.xid)
    return stop


def xid_hint(
    exc: StopPointError,
    stop: StopPoint,
    src: SlotSource | CaptureSource,
    wal: WalInspect | None = None,
) -> StopPointError:
    """The 'does not commit in the stream' error, with what the xid may be: a transaction the
    WAL shows committed, none of whose changes the stream carries (its LSN is the same stop
    point), or a subtransaction."""
    assert stop.xid32 is not None
    record = None
    if wal is not None and src.start_lsn is not None:
        try:
            record = wal.top_level(stop.xid32, src.start_lsn, src.end_lsn)
        except WalUnavailable:
            record = None
    if record is not None and record.xid == stop.xid32:
        return StopPointError(
            f"{exc.message}: it committed at LSN {record.lsn}, but the stream carries none of "
            f"its changes{_left_out(src)}; the same stop point is --stop-before-lsn "
            f"{record.lsn}",
            **exc.facts,
        )
    check = waldump_command(src.start_lsn, src.end_lsn, f"subxacts:.* {stop.xid32}( |$)")
    left_out = (
        f". If it committed, {_PGOUTPUT_SKIPS}: stop before its commit with --stop-before-lsn"
        if src.plugin == "pgoutput"
        else ""
    )
    message = (
        f"{exc.message}{left_out}. If it is a subtransaction (the stream shows only top-level "
        f"xids), stop at its top-level transaction. With pg_walinspect in the source database "
        f"(CREATE EXTENSION pg_walinspect, PostgreSQL 15+) walrecover finds either itself; or "
        f"find it on the server with: {check}"
    )
    return StopPointError(message, **exc.facts)


#: Why a committed transaction may be missing from a pgoutput stream.
_PGOUTPUT_SKIPS = (
    "pgoutput sends no transaction whose every change its publications leave out (an UPDATE or"
    " DELETE under a publication that does not publish them)"
)


def _left_out(src: SlotSource | CaptureSource) -> str:
    return f" ({_PGOUTPUT_SKIPS})" if src.plugin == "pgoutput" else ""
