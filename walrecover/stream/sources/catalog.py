"""The catalog side of a slot read: the slot as ``pg_replication_slots`` shows it, the server's
readiness for logical decoding, the role's right to read slots, orphaned copies, and the WAL
position a read runs up to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from ...db import Connection, one
from ...errors import ConfigurationError, PrivilegeError, SlotError
from ..lsn import Lsn


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """A logical replication slot as ``pg_replication_slots`` shows it."""

    name: str
    plugin: str
    database: str
    restart_lsn: Lsn | None
    confirmed_flush_lsn: Lsn | None
    active: bool
    temporary: bool
    #: The backend consuming the slot while it is active.
    active_pid: int | None = None


def read_slot(conn: Connection, name: str) -> SlotInfo:
    """The slot ``name``; raise :class:`SlotError` naming the slots that exist if it does not."""
    row = conn.execute(
        "SELECT slot_name::text, plugin::text, slot_type, database::text, restart_lsn::text,"
        " confirmed_flush_lsn::text, active, temporary, active_pid"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (name,),
    ).fetchone()
    if row is None:
        others = [
            r[0]
            for r in conn.execute(
                "SELECT slot_name::text FROM pg_replication_slots"
                " WHERE slot_type = 'logical' AND slot_name NOT LIKE 'walrecover\\_%'"
                " ORDER BY 1"
            )
        ]
        hint = f"logical slots here: {', '.join(others)}" if others else "no logical slot exists"
        raise SlotError(
            f"replication slot {name!r} does not exist ({hint}): check --slot and the database",
            slot=name,
        )
    slot_name, plugin, slot_type, database, restart, confirmed, active, temporary, pid = row
    if slot_type != "logical":
        raise SlotError(
            f"slot {name!r} is a physical slot: walrecover needs a logical replication slot",
            slot=name,
        )
    return SlotInfo(
        name=slot_name,
        plugin=plugin,
        database=database,
        restart_lsn=Lsn.parse(restart) if restart else None,
        confirmed_flush_lsn=Lsn.parse(confirmed) if confirmed else None,
        active=bool(active),
        temporary=bool(temporary),
        active_pid=pid,
    )


def sweep_copies(conn: Connection) -> list[str]:
    """Drop copy slots left by crashed walrecover runs; return their names.

    A copy is ``walrecover_<backend pid>_<token>``; it is an orphan when it is inactive and no
    backend with that pid is alive.
    """
    rows = conn.execute(
        "SELECT slot_name::text FROM pg_replication_slots"
        " WHERE slot_name LIKE 'walrecover\\_%' AND NOT active"
        " AND database = current_database()"
        " AND split_part(slot_name, '_', 2) !~ '[^0-9]'"
        " AND NOT EXISTS (SELECT 1 FROM pg_stat_activity"
        "   WHERE pid::text = split_part(slot_name, '_', 2))"
    ).fetchall()
    dropped = []
    for (name,) in rows:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            dropped.append(name)
        except psycopg.Error:
            continue  # it became active, or another run swept it first
    return dropped


def wait_for_flush(conn: Connection, timeout: float = 30.0) -> Lsn:
    """The WAL insert position now, once it is flushed (decoding only reads flushed WAL).

    ``pg_current_wal_lsn()`` is the *write* position: with asynchronous commits it can lag
    commits that already happened, which would silently leave them out.
    """
    (insert,) = one(conn, "SELECT pg_current_wal_insert_lsn()::text")
    end = Lsn.parse(insert)
    deadline = time.monotonic() + timeout
    while True:
        (flushed,) = one(conn, "SELECT pg_current_wal_flush_lsn()::text")
        if Lsn.parse(flushed) >= end:
            return end
        if time.monotonic() > deadline:
            raise SlotError(
                f"the source's WAL flush did not reach {end} within {timeout:.0f}s: "
                "the server is overloaded or stuck; retry when it has caught up"
            )
        time.sleep(0.05)


def wait_released(conn: Connection, slot: str, timeout: float = 10.0) -> None:
    """Wait until no walsender holds ``slot`` (one whose connection just closed may take a
    moment to exit), so it can be dropped; give up quietly after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is None or not row[0]:
            return
        time.sleep(0.02)


def check_server(conn: Connection) -> None:
    """Raise :class:`ConfigurationError` unless the server can do logical decoding."""
    (level,) = one(conn, "SHOW wal_level")
    if level != "logical":
        raise ConfigurationError(
            f"wal_level is {level!r} on the source: logical decoding needs wal_level = logical"
            " (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )


def check_replication_privilege(conn: Connection, slot: str) -> None:
    """Raise :class:`PrivilegeError` unless the role may copy and read replication slots."""
    row = conn.execute(
        "SELECT rolname::text, rolsuper OR rolreplication FROM pg_roles"
        " WHERE rolname = current_user"
    ).fetchone()
    if row is not None and not row[1]:
        raise PrivilegeError(
            f"role {row[0]!r} may not read replication slots: it needs the REPLICATION attribute"
            f" (ALTER ROLE {row[0]} REPLICATION) or superuser",
            slot=slot,
            role=row[0],
        )


def active_warning(conn: Connection, info: SlotInfo, copied_at: Lsn | None) -> str:
    """Slot ``info`` is in use by another consumer: say who, and what that means."""
    who = ""
    if info.active_pid is not None:
        row = conn.execute(
            "SELECT coalesce(application_name, ''), coalesce(client_addr::text, 'local')"
            " FROM pg_stat_activity WHERE pid = %s",
            (info.active_pid,),
        ).fetchone()
        detail = f" ({row[0] or 'no application_name'}, {row[1]})" if row else ""
        who = f" by backend pid {info.active_pid}{detail}"
    return (
        f"slot {info.name!r} is active: it is being consumed{who}, so its position may move "
        f"during the incident; walrecover read a copy taken at {copied_at}, but a later run "
        "reads the slot from wherever its consumer has moved it (and a resume is refused if "
        "that is past what was applied): keep the history with your own copy now, "
        f"SELECT pg_copy_logical_replication_slot('{info.name}', '{info.name}_incident'), and "
        "read that one"
    )


def widen_xid(conn: Connection, xid: int) -> int | None:
    """The xid8 (epoch and xid) the server means by the 32-bit ``xid`` now; None if unknown.

    Widened with the current epoch from the snapshot (so no xid is assigned): the xid
    nearest before the next one to be assigned.
    """
    try:
        with conn.transaction():
            (xmax,) = one(conn, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
    except psycopg.Error:
        return None
    full = (xmax >> 32 << 32) | (xid & 0xFFFFFFFF)
    if full >= xmax:
        full -= 1 << 32
    return full if full >= 0 else None


def xid_status(conn: Connection, xid: int) -> str | None:
    """``committed``, ``aborted`` or ``in progress``; None if unknown.

    ``xid`` is an xid8 when it is above 32 bits, else widened with :func:`widen_xid`.
    """
    full = xid if xid > 0xFFFFFFFF else widen_xid(conn, xid)
    if full is None:
        return None
    try:
        with conn.transaction():
            (status,) = one(conn, "SELECT pg_xact_status(%s::text::xid8)", (str(full),))
    except psycopg.Error:
        return None  # too old for the commit log, in the future, or an older server
    return str(status) if status is not None else None
