"""walrecover: rebuild a dropped PostgreSQL table from logical decoding.

The library is the product; the ``walrecover`` command is a thin shell over it. Rebuild
``public.transactions`` from the slot ``cdc`` into ``public.transactions_recovered``:

>>> from walrecover import TableName, recover
>>> result = recover("dbname=bank", "cdc", TableName.parse("public.transactions"))
>>> result.into, result.exact
('public.transactions_recovered', True)

Everything a user needs is importable from here (see ``__all__``): the entry points
(:func:`recover`, :func:`recover_capture`, :func:`reconcile`, :func:`rehearse`,
:func:`decode`, :func:`read_audit`, :func:`verify_audit`, :func:`swap`,
:func:`inspect_table`), what they take
(:class:`TableName`, :class:`StopPoint`, :class:`StartPoint`, :class:`Lsn`, ...), the results
they return, and the error family under :class:`WalrecoverError`.

The names are imported on first use, so ``import walrecover`` stays cheap (pandas, pyarrow,
psycopg and pglast load only with what needs them). ``recover`` and ``swap`` are also the
names of modules (``walrecover.rebuild.recover``, ``walrecover.rebuild.swap``), and ``reconcile``
of ``walrecover.ledger.reconcile``: here they always mean the functions; import from the modules
themselves with ``from walrecover.rebuild.recover import ...``.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

#: The version, in this one place: pyproject.toml reads it from here (setuptools' dynamic
#: ``attr``), and the CLI's ``--version`` and the audit's metadata print it.
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .audit.reader import read_audit
    from .audit.verify import Verification, verify_audit
    from .drill.rehearsal import RehearsalResult, rehearse
    from .errors import (
        AuditError,
        BaselineError,
        CaptureSettingError,
        ClusterError,
        ConfigurationError,
        ConnectionFailed,
        DecodeError,
        Interrupted,
        LedgerError,
        LostChanges,
        MigrationParseError,
        PrivilegeError,
        ProtectError,
        PublishedTarget,
        ReplayError,
        SlotError,
        StopPointError,
        SwapError,
        TableNotInStream,
        TargetBusy,
        TargetExists,
        WalrecoverError,
    )
    from .incident.events import DestructiveEvent, TableRelation
    from .incident.inspect import Inspection, inspect_table
    from .ledger.reconcile import (
        LedgerFile,
        LedgerQuery,
        RecoveredAudit,
        RecoveredTable,
        reconcile,
    )
    from .ledger.result import Explanation, Reconciliation
    from .ready.doctor import Diagnosis, TableDiagnosis, doctor
    from .ready.guard import GuardResult, guard
    from .ready.points import RecoveryPoint, TableBaseline, load_recovery_points
    from .ready.protect import ProtectResult, protect
    from .rebuild.recover import AuditSummary, LedgerCheck, RecoveryResult, recover, recover_capture
    from .rebuild.swap import SwapResult, swap
    from .stream.export import DecodeResult, decode, decode_to
    from .stream.lsn import Lsn
    from .stream.model import StartPoint, StopPoint, TableName
    from .stream.settings import CaptureSettings
    from .stream.sources import CaptureSource, SlotSource

#: Each public name and the module that defines it.
_WHERE = {
    # entry points
    "recover": "rebuild.recover",
    "recover_capture": "rebuild.recover",
    "reconcile": "ledger.reconcile",
    "rehearse": "drill.rehearsal",
    "decode": "stream.export",
    "decode_to": "stream.export",
    "SlotSource": "stream.sources",
    "CaptureSource": "stream.sources",
    "read_audit": "audit.reader",
    "verify_audit": "audit.verify",
    "swap": "rebuild.swap",
    "inspect_table": "incident.inspect",
    # what they take
    "TableName": "stream.model",
    "StopPoint": "stream.model",
    "StartPoint": "stream.model",
    "Lsn": "stream.lsn",
    "LedgerCheck": "rebuild.recover",
    "CaptureSettings": "stream.settings",
    "RecoveredTable": "ledger.reconcile",
    "RecoveredAudit": "ledger.reconcile",
    "LedgerQuery": "ledger.reconcile",
    "LedgerFile": "ledger.reconcile",
    # what they return
    "RecoveryResult": "rebuild.recover",
    "AuditSummary": "rebuild.recover",
    "Reconciliation": "ledger.result",
    "Explanation": "ledger.result",
    "RehearsalResult": "drill.rehearsal",
    "DecodeResult": "stream.export",
    "Verification": "audit.verify",
    "SwapResult": "rebuild.swap",
    "Inspection": "incident.inspect",
    "TableRelation": "incident.events",
    "DestructiveEvent": "incident.events",
    # what they raise
    "WalrecoverError": "errors",
    "ConnectionFailed": "errors",
    "SlotError": "errors",
    "PrivilegeError": "errors",
    "ReconcileFailed": "errors",
    "StreamCutShort": "errors",
    "WalUnavailable": "errors",
    "ConfigurationError": "errors",
    "DecodeError": "errors",
    "CaptureSettingError": "errors",
    "TableNotInStream": "errors",
    "TargetExists": "errors",
    "TargetBusy": "errors",
    "PublishedTarget": "errors",
    "StopPointError": "errors",
    "ReplayError": "errors",
    "LostChanges": "errors",
    "LedgerError": "errors",
    "AuditError": "errors",
    "BaselineError": "errors",
    "SwapError": "errors",
    "ClusterError": "errors",
    "Interrupted": "errors",
    # before the disaster (issue 11): protect, doctor, guard
    "protect": "ready.protect",
    "doctor": "ready.doctor",
    "guard": "ready.guard",
    "load_recovery_points": "ready.points",
    "ProtectResult": "ready.protect",
    "RecoveryPoint": "ready.points",
    "TableBaseline": "ready.points",
    "Diagnosis": "ready.doctor",
    "TableDiagnosis": "ready.doctor",
    "GuardResult": "ready.guard",
    "ProtectError": "errors",
    "MigrationParseError": "errors",
}

__all__ = [
    "AuditError",
    "AuditSummary",
    "BaselineError",
    "CaptureSettingError",
    "CaptureSettings",
    "CaptureSource",
    "ClusterError",
    "ConfigurationError",
    "ConnectionFailed",
    "DecodeError",
    "DecodeResult",
    "DestructiveEvent",
    "Diagnosis",
    "Explanation",
    "GuardResult",
    "Inspection",
    "Interrupted",
    "LedgerCheck",
    "LedgerError",
    "LedgerFile",
    "LedgerQuery",
    "LostChanges",
    "Lsn",
    "MigrationParseError",
    "PrivilegeError",
    "ProtectError",
    "ProtectResult",
    "PublishedTarget",
    "ReconcileFailed",
    "Reconciliation",
    "RecoveredAudit",
    "RecoveredTable",
    "RecoveryPoint",
    "RecoveryResult",
    "RehearsalResult",
    "ReplayError",
    "SlotError",
    "SlotSource",
    "StartPoint",
    "StopPoint",
    "StopPointError",
    "StreamCutShort",
    "SwapError",
    "SwapResult",
    "TableBaseline",
    "TableDiagnosis",
    "TableName",
    "TableNotInStream",
    "TableRelation",
    "TargetBusy",
    "TargetExists",
    "Verification",
    "WalUnavailable",
    "WalrecoverError",
    "__version__",
    "decode",
    "decode_to",
    "doctor",
    "guard",
    "inspect_table",
    "load_recovery_points",
    "protect",
    "read_audit",
    "reconcile",
    "recover",
    "recover_capture",
    "rehearse",
    "swap",
    "verify_audit",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'walrecover' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(ModuleType):
    """This package's module type: a submodule never hides the function of the same name.

    Importing a submodule sets it as an attribute of its package, so the first
    ``import walrecover.rebuild.recover`` (by the CLI, or by any ``from walrecover.rebuild.recover
    import ...``) would make ``walrecover.recover`` the module instead of the function, and
    ``from walrecover import recover`` would hand out the wrong object. The module stays in
    ``sys.modules``, where imports find it.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, ModuleType) and _WHERE.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
