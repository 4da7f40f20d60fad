"""walrecover: rebuild a dropped PostgreSQL table from logical decoding.

The library is the product; the ``walrecover`` command is a thin shell over it. Rebuild
``public.transactions`` from the slot ``cdc`` into ``public.transactions_recovered``:

>>> from walrecover import TableName, recover
>>> result = recover("dbname=bank", "cdc", TableName.parse("public.transactions"))
>>> result.into, result.exact
('public.transactions_recovered', True)

Everything a user needs is importable from here (see ``__all__``): the entry points
(:func:`recover`, :func:`recover_capture`, :func:`reconcile`, :func:`rehearse`,
:func:`decode_to`, :func:`read_audit`, :func:`verify_audit`, :func:`swap`), what they take
(:class:`TableName`, :class:`StopPoint`, :class:`StartPoint`, :class:`Lsn`, ...), the results
they return, and the error family under :class:`WalrecoverError`.

The names are imported on first use, so ``import walrecover`` stays cheap (pandas, pyarrow,
psycopg and pglast load only with what needs them). ``recover``, ``reconcile`` and ``swap`` are
also the names of modules of this package: here they always mean the functions; import from the
modules themselves with ``from walrecover.recover import ...``.
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
    from .audit import read_audit
    from .errors import (
        AuditError,
        CaptureSettingError,
        ClusterError,
        ConfigurationError,
        ConnectionFailed,
        DecodeError,
        Interrupted,
        LedgerError,
        LostChanges,
        PrivilegeError,
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
    from .export import DecodeResult, decode_to
    from .lsn import Lsn
    from .model import StartPoint, StopPoint, TableName
    from .reconcile import (
        Explanation,
        LedgerFile,
        LedgerQuery,
        Reconciliation,
        RecoveredAudit,
        RecoveredTable,
        reconcile,
    )
    from .recover import AuditSummary, LedgerCheck, RecoveryResult, recover, recover_capture
    from .rehearsal import RehearsalResult, rehearse
    from .settings import CaptureSettings
    from .swap import SwapResult, swap
    from .verify import Verification, verify_audit

#: Each public name and the module that defines it.
_WHERE = {
    # entry points
    "recover": "recover",
    "recover_capture": "recover",
    "reconcile": "reconcile",
    "rehearse": "rehearsal",
    "decode_to": "export",
    "read_audit": "audit",
    "verify_audit": "verify",
    "swap": "swap",
    # what they take
    "TableName": "model",
    "StopPoint": "model",
    "StartPoint": "model",
    "Lsn": "lsn",
    "LedgerCheck": "recover",
    "CaptureSettings": "settings",
    "RecoveredTable": "reconcile",
    "RecoveredAudit": "reconcile",
    "LedgerQuery": "reconcile",
    "LedgerFile": "reconcile",
    # what they return
    "RecoveryResult": "recover",
    "AuditSummary": "recover",
    "Reconciliation": "reconcile",
    "Explanation": "reconcile",
    "RehearsalResult": "rehearsal",
    "DecodeResult": "export",
    "Verification": "verify",
    "SwapResult": "swap",
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
    "SwapError": "errors",
    "ClusterError": "errors",
    "Interrupted": "errors",
}

__all__ = [
    "AuditError",
    "AuditSummary",
    "CaptureSettingError",
    "CaptureSettings",
    "ClusterError",
    "ConfigurationError",
    "ConnectionFailed",
    "DecodeError",
    "DecodeResult",
    "Explanation",
    "Interrupted",
    "LedgerCheck",
    "LedgerError",
    "LedgerFile",
    "LedgerQuery",
    "LostChanges",
    "Lsn",
    "PrivilegeError",
    "PublishedTarget",
    "ReconcileFailed",
    "Reconciliation",
    "RecoveredAudit",
    "RecoveredTable",
    "RecoveryResult",
    "RehearsalResult",
    "ReplayError",
    "SlotError",
    "StartPoint",
    "StopPoint",
    "StopPointError",
    "StreamCutShort",
    "SwapError",
    "SwapResult",
    "TableName",
    "TableNotInStream",
    "TargetBusy",
    "TargetExists",
    "Verification",
    "WalUnavailable",
    "WalrecoverError",
    "__version__",
    "decode_to",
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
    ``import walrecover.recover`` (by the CLI, or by any ``from walrecover.recover import ...``)
    would make ``walrecover.recover`` the module instead of the function, and
    ``from walrecover import recover`` would hand out the wrong object. The module stays in
    ``sys.modules``, where imports find it.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, ModuleType) and _WHERE.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
