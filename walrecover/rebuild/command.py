"""What names a recovery before it runs: its default ``--into``, the identity of the command
that the progress row keeps (so a rerun can tell the same command from another), the audit's
identity, the capture's output settings, and whether a table exists.

Shared by :mod:`.recover` and :mod:`.plan` (``walrecover check`` names the same things).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from psycopg import sql

from ..db import Connection, one
from ..errors import WalrecoverError
from ..stream.model import StopPoint, TableName
from ..stream.settings import CaptureSettings
from ..stream.sources import CaptureSource
from .baseline import BaselineOptions
from .preflight import command_identity, database_identity, ddl_identity


def default_into(table: TableName) -> TableName:
    """``<table>_recovered`` in the table's schema (the default ``--into``)."""
    return TableName(table.schema, f"{table.name}_recovered")


def capture_settings_of(given: CaptureSettings | Mapping[str, str] | None) -> CaptureSettings:
    """``given`` as :class:`CaptureSettings`; raise :class:`WalrecoverError` for a bad one."""
    if isinstance(given, CaptureSettings):
        return given
    try:
        return CaptureSettings.parse(given)
    except ValueError as exc:
        raise WalrecoverError(f"--capture-setting: {exc}") from None


def slot_command(
    dsn: str | None,
    slot: str,
    table: TableName,
    via_plugin: str | None,
    options: Mapping[str, str] | None,
    stop: StopPoint,
    ddl: str | None,
    audit: str | None,
    baseline: BaselineOptions | None = None,
) -> str:
    """The identity of a recovery from a slot (see :func:`.preflight.command_identity`)."""
    return command_identity(
        database=database_identity(dsn),
        slot=slot,
        via_plugin=via_plugin,
        options=dict(options or {}),
        table=str(table),
        stop=stop.describe(),
        ddl=ddl_identity(ddl),
        audit=audit,
        baseline=baseline.identity() if baseline is not None else None,
    )


def capture_command(
    source: CaptureSource,
    table: TableName,
    stop: StopPoint,
    ddl: str | None,
    audit: str | None,
    baseline: BaselineOptions | None = None,
) -> str:
    """The identity of a recovery from a capture file."""
    return command_identity(
        capture=str(source.path.resolve()),
        plugin=source.plugin,
        options=dict(source.user_options),
        capture_settings=source.settings.describe() or None,
        table=str(table),
        stop=stop.describe(),
        ddl=ddl_identity(ddl),
        audit=audit,
        baseline=baseline.identity() if baseline is not None else None,
    )


def audit_identity(audit_path: str | Path | None, audit_dir: str | Path | None) -> str | None:
    """The audit a recovery writes, as its progress row records it (an absolute path)."""
    audit_at = audit_dir if audit_dir is not None else audit_path
    return str(Path(audit_at).resolve()) if audit_at is not None else None


def table_exists(conn: Connection, table: TableName) -> bool:
    """True if ``table`` exists on ``conn``."""
    (oid,) = one(
        conn,
        "SELECT to_regclass(%s)::oid",
        (sql.Identifier(table.schema, table.name).as_string(conn),),
    )
    return oid is not None
