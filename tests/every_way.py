"""Recover one dropped table through one plugin and one path: a copy of a slot, or a capture.

A test parametrized over :data:`WAYS` runs its workload once per way on a fresh database, with a
slot of that plugin created before the workload writes (and, for pgoutput, a publication of the
table), then rebuilds the table with :func:`recover_way` and compares it with the truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fault_helpers import peek_capture
from helpers import Database, recover_table
from psycopg import sql

from walrecover.rebuild.recover import RecoveryResult, recover_capture
from walrecover.stream.model import TableName

PLUGINS = ("wal2json", "pgoutput", "test_decoding")
#: (plugin, path): every plugin through a copy of its slot and through a pg_recvlogical capture.
WAYS = [(plugin, kind) for plugin in PLUGINS for kind in ("slot", "capture")]
WAY_IDS = [f"{plugin}-{kind}" for plugin, kind in WAYS]
PUBLICATION = "pub"


def slot_name(db: Database, plugin: str) -> str:
    return f"{db.name}_{plugin}"


def user_options(plugin: str) -> dict[str, str]:
    return {"publication_names": PUBLICATION} if plugin == "pgoutput" else {}


def create_source(db: Database, plugin: str, *tables: str) -> str:
    """The slot of ``plugin`` (and a publication of ``tables`` for pgoutput); its name."""
    if plugin == "pgoutput":
        db.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}")
            .format(
                sql.Identifier(PUBLICATION),
                sql.SQL(", ").join(map(sql.Identifier, tables or ("t",))),
            )
            .as_string(None)
        )
    name = slot_name(db, plugin)
    db.create_slot(name, plugin)
    return name


def capture_of(db: Database, plugin: str, path: Path) -> Path:
    """What ``pg_recvlogical -f`` would write from the slot (peeked, never moved)."""
    peek_capture(db.dsn, slot_name(db, plugin), plugin, path, options=user_options(plugin))
    return path


def recover_way(
    db: Database,
    plugin: str,
    kind: str,
    directory: Path,
    table: str = "t",
    *,
    plugin_options: dict[str, str] | None = None,
    **options: Any,
) -> RecoveryResult:
    """Rebuild ``table`` (into ``<table>_recovered`` unless ``into`` is given) through ``kind``;
    ``plugin_options`` are given to the slot read on top of the plugin's usual ones."""
    if kind == "slot":
        return recover_table(
            db,
            table,
            slot=slot_name(db, plugin),
            options={**user_options(plugin), **(plugin_options or {})},
            **options,
        )
    capture = directory / f"{plugin}.capture"
    if not capture.exists():
        capture_of(db, plugin, capture)
    return recover_capture(
        capture,
        plugin,
        TableName("public", table),
        target=db.dsn,
        options=user_options(plugin),
        wal_dsn=db.dsn,
        **options,
    )
