"""The whole recovery as one call: read the slot, replay, audit, reconcile.

:func:`recover` is what ``walrecover recover`` runs. It checks everything it can before writing
anything (names, files, the slot, the stop point's range, the target), reads the user's slot only
through a copy, and returns a :class:`RecoveryResult`. A failure raises a
:class:`~walrecover.errors.WalrecoverError`; what was committed to the target is then an
unfinished recovery that rerunning the same command resumes.

A run goes through its phases in order (:class:`.phases.Recovery`): preflight, the source's
checks, audit setup, replay (:mod:`.reading`), audit close, reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import (
    WalrecoverError,
)
from ..stream.model import NO_STOP, StopPoint, TableName
from ..stream.settings import CaptureSettings
from ..stream.sources import CaptureSource, ProgressCallback, SlotSource
from .command import (
    audit_identity,
    capture_command,
    capture_settings_of,
    default_into,
    slot_command,
)
from .phases import Recovery
from .result import Asked, AuditSummary, LedgerCheck, RecoveryResult

__all__ = [
    "AuditSummary",
    "LedgerCheck",
    "RecoveryResult",
    "default_into",
    "recover",
    "recover_capture",
]


def recover(
    dsn: str | None,
    slot: str,
    table: TableName,
    *,
    into: TableName | None = None,
    target: str | None = None,
    stop: StopPoint = NO_STOP,
    ddl: str | None = None,
    force: bool = False,
    ledger: LedgerCheck | None = None,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 20_000,
    options: Mapping[str, str] | None = None,
    audit_dir: str | Path | None = None,
    via_plugin: str | None = None,
) -> RecoveryResult:
    """Rebuild ``table`` from ``slot`` on ``dsn`` into ``into`` on ``target`` (default ``dsn``).

    ``options`` are plugin options (``-o NAME=VALUE``) on top of walrecover's; ``via_plugin``
    reads the slot through another output plugin (the copy is made with it).
    """
    source = SlotSource(
        dsn,
        slot,
        tables=[table],
        options=options,
        via_plugin=via_plugin,
        progress=progress,
        stop_lsn=stop.lsn,
    )
    command = slot_command(
        dsn, slot, table, via_plugin, options, stop, ddl, audit_identity(audit_path, audit_dir)
    )
    return _recover(
        source,
        dsn,
        slot,
        table,
        command=command,
        into=into,
        target=target if target is not None else dsn,
        target_role="target" if target is not None else "source",
        stop=stop,
        ddl=ddl,
        force=force,
        ledger=ledger,
        audit_path=audit_path,
        audit_dir=audit_dir,
        batch_size=batch_size,
        wal_dsn=dsn,
    )


def recover_capture(
    path: str | Path,
    plugin: str,
    table: TableName,
    *,
    target: str | None,
    into: TableName | None = None,
    options: Mapping[str, str] | None = None,
    stop: StopPoint = NO_STOP,
    ddl: str | None = None,
    force: bool = False,
    ledger: LedgerCheck | None = None,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 20_000,
    audit_dir: str | Path | None = None,
    capture_settings: CaptureSettings | Mapping[str, str] | None = None,
    wal_dsn: str | None = None,
) -> RecoveryResult:
    """Rebuild ``table`` from a ``pg_recvlogical -f`` capture into ``into`` on ``target``.

    ``plugin`` and ``options`` say what produced the file (pg_recvlogical's ``-P`` and ``-o``);
    ``capture_settings`` the output settings its session had (``{"DateStyle": "SQL, DMY"}``;
    PostgreSQL's built-in defaults for those not given), which the target session parses the
    values with. The ledger query, if any, runs on ``target``. ``wal_dsn`` is a database of the
    server that wrote the capture, where pg_walinspect may read its WAL (to tell a re-created
    table).
    """
    source = CaptureSource(
        path,
        plugin,
        options=options,
        progress=progress,
        settings=capture_settings_of(capture_settings),
    )
    command = capture_command(source, table, stop, ddl, audit_identity(audit_path, audit_dir))
    return _recover(
        source,
        target,
        None,
        table,
        command=command,
        into=into,
        target=target,
        target_role="target",
        stop=stop,
        ddl=ddl,
        force=force,
        ledger=ledger,
        audit_path=audit_path,
        audit_dir=audit_dir,
        batch_size=batch_size,
        wal_dsn=wal_dsn,
    )


def _recover(
    src: SlotSource | CaptureSource,
    dsn: str | None,
    slot: str | None,
    table: TableName,
    *,
    command: str,
    into: TableName | None,
    target: str | None,
    target_role: str,
    stop: StopPoint,
    ddl: str | None,
    force: bool,
    ledger: LedgerCheck | None,
    audit_path: str | Path | None,
    batch_size: int,
    audit_dir: str | Path | None = None,
    wal_dsn: str | None = None,
) -> RecoveryResult:
    """The recovery proper, from any source."""
    into = into or default_into(table)
    if into == table and target == dsn:
        raise WalrecoverError(
            f"--into {into} is the table being recovered: build into a new table and swap it in"
        )
    if audit_path is not None and audit_dir is not None:
        raise WalrecoverError("give --audit FILE or --audit-dir DIR, not both")
    ask = Asked(src, dsn, slot, table, into, target, stop, ddl, force, ledger, command)
    return Recovery(ask, target_role, audit_path, audit_dir, batch_size, wal_dsn).run()
