"""What the server says about its logical slots: position, retained WAL and what it costs.

Shared by ``protect`` (the cost of its own slots) and ``doctor`` (every slot of the database).
Read-only: nothing here changes a slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..db import Connection, one
from ..stream.lsn import Lsn


@dataclass(frozen=True, slots=True)
class SlotState:
    """A logical slot of the current database as ``pg_replication_slots`` shows it.

    ``retained_wal_bytes`` is the WAL the server keeps for it (current LSN minus its restart
    LSN); ``catalog_xmin_age`` how many transactions the slot holds catalog rows back for (a
    growing number means catalog bloat and, at about 2 billion, wraparound);
    ``wal_status`` and ``safe_wal_size`` are PostgreSQL 13+'s (``lost``: the WAL is gone, the
    slot cannot be read; ``unreserved``: it will be removed at the next checkpoint).
    """

    name: str
    plugin: str
    active: bool
    restart_lsn: Lsn | None
    confirmed_flush_lsn: Lsn | None
    retained_wal_bytes: int | None
    catalog_xmin_age: int | None
    wal_status: str | None
    safe_wal_size: int | None
    temporary: bool

    @property
    def lost(self) -> bool:
        """True if the slot can no longer be read (its WAL was removed)."""
        return self.wal_status == "lost" or self.restart_lsn is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.name,
            "plugin": self.plugin,
            "active": self.active,
            "restart_lsn": str(self.restart_lsn) if self.restart_lsn else None,
            "confirmed_flush_lsn": (
                str(self.confirmed_flush_lsn) if self.confirmed_flush_lsn else None
            ),
            "retained_wal_bytes": self.retained_wal_bytes,
            "catalog_xmin_age": self.catalog_xmin_age,
            "wal_status": self.wal_status,
            "safe_wal_size": self.safe_wal_size,
            "temporary": self.temporary,
        }


def server_version(conn: Connection) -> int:
    """``server_version_num`` as an int (150004 for 15.4)."""
    return int(one(conn, "SELECT current_setting('server_version_num')")[0])


def slot_states(conn: Connection) -> tuple[SlotState, ...]:
    """The logical slots of the connection's database, by name."""
    modern = server_version(conn) >= 130000
    status = sql.SQL(
        "wal_status::text, safe_wal_size::bigint" if modern else "NULL::text, NULL::bigint"
    )
    # pg_current_wal_lsn() is not available on a standby; the retained WAL is unknown there.
    query = sql.SQL(
        "SELECT slot_name::text, plugin::text, active, restart_lsn::text,"
        " confirmed_flush_lsn::text,"
        " pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()"
        " END, restart_lsn)::bigint,"
        " age(catalog_xmin)::bigint, {}, temporary"
        " FROM pg_replication_slots"
        " WHERE slot_type = 'logical' AND database = current_database()"
        " ORDER BY slot_name"
    ).format(status)
    rows = conn.execute(query).fetchall()
    return tuple(
        SlotState(
            name=r[0],
            plugin=r[1],
            active=bool(r[2]),
            restart_lsn=Lsn.parse(r[3]) if r[3] else None,
            confirmed_flush_lsn=Lsn.parse(r[4]) if r[4] else None,
            retained_wal_bytes=r[5],
            catalog_xmin_age=r[6],
            wal_status=r[7],
            safe_wal_size=r[8],
            temporary=bool(r[9]),
        )
        for r in rows
    )


def human_bytes(value: int | None) -> str:
    """``123.4 MB`` (powers of 1024, as pg_size_pretty); ``unknown`` for None."""
    if value is None:
        return "unknown"
    size = float(value)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{value} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} bytes"  # pragma: no cover
