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
from dataclasses import replace
from pathlib import Path

from ..errors import StopPointError, WalrecoverError
from ..incident.events import DestructiveEvent
from ..incident.inspect import resolve_stop_before, settled
from ..stream.model import NO_STOP, StopPoint, TableName
from ..stream.settings import CaptureSettings
from ..stream.sources import CaptureSource, ProgressCallback, SlotSource
from .baseline import BaselineOptions
from .command import (
    audit_identity,
    capture_command,
    capture_settings_of,
    default_into,
    slot_command,
)
from .phases import Recovery
from .preflight import check_into
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
    baseline: BaselineOptions | None = None,
    stop_before: str | None = None,
    wal_dir: str | Path | None = None,
    stop_event: DestructiveEvent | None = None,
) -> RecoveryResult:
    """Rebuild ``table`` from ``slot`` on ``dsn`` into ``into`` on ``target`` (default ``dsn``).

    ``options`` are plugin options (``-o NAME=VALUE``) on top of walrecover's; ``via_plugin``
    reads the slot through another output plugin (the copy is made with it); ``baseline``
    starts the table from an older copy of it (see :mod:`.baseline`). ``stop_before``
    (``drop``, ``truncate``, ``auto``) finds that event of the table in the WAL (pg_walinspect,
    or pg_waldump on ``wal_dir`` or the server's own pg_wal) and stops exactly before it;
    ``stop_event`` is such an event found already (:func:`.from_protect.find_event`).
    """
    event = stop_event
    if event is not None:
        if (stop.is_set and stop != event.stop_point()) or stop_before is not None:
            raise StopPointError("give --stop-before or a --stop-before-lsn/-xid/-time, not both")
        stop = event.stop_point()
    elif stop_before is not None:
        stop, event = _stop_before(
            dsn, slot, table, stop, stop_before, wal_dir, options, via_plugin
        )
    source = SlotSource(
        dsn, slot, tables=[table], options=options, via_plugin=via_plugin, progress=progress,
        stop_lsn=stop.lsn, thin_others=True,
    )  # fmt: skip
    command = slot_command(
        dsn, slot, table, via_plugin, options, stop, ddl, audit_identity(audit_path, audit_dir),
        baseline,
    )  # fmt: skip
    result = _recover(
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
        baseline=baseline,
    )
    if event is None:
        return result
    return replace(result, stop_event=event, unproven=settled(result.unproven, table, event))


def _stop_before(
    dsn: str | None,
    slot: str,
    table: TableName,
    stop: StopPoint,
    stop_before: str,
    wal_dir: str | Path | None,
    options: Mapping[str, str] | None,
    via_plugin: str | None,
) -> tuple[StopPoint, DestructiveEvent]:
    """The stop point just before the table's ``stop_before`` event (``--stop-before``)."""
    if stop.is_set:
        raise StopPointError("give --stop-before or a --stop-before-lsn/-xid/-time, not both")
    return resolve_stop_before(
        dsn, slot, table, stop_before, wal_dir=wal_dir, options=options, via_plugin=via_plugin
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
    baseline: BaselineOptions | None = None,
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
        tables=[table],
    )
    command = capture_command(
        source, table, stop, ddl, audit_identity(audit_path, audit_dir), baseline
    )
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
        baseline=baseline,
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
    baseline: BaselineOptions | None = None,
) -> RecoveryResult:
    """The recovery proper, from any source."""
    into = into or default_into(table)
    check_into(into, table, target, dsn)
    if audit_path is not None and audit_dir is not None:
        raise WalrecoverError("give --audit FILE or --audit-dir DIR, not both")
    ask = Asked(src, dsn, slot, table, into, target, stop, ddl, force, ledger, command, baseline)
    return Recovery(ask, target_role, audit_path, audit_dir, batch_size, wal_dsn).run()
