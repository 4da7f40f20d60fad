"""What a recovery returns (:class:`RecoveryResult`, as ``walrecover recover --json`` prints
it) and what it is asked to reconcile against (:class:`LedgerCheck`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..incident.events import DestructiveEvent
from ..stream.lsn import Lsn
from ..stream.model import StopPoint, TableName
from ..stream.sources import CaptureSource, SlotSource
from .baseline import BaselineOptions
from .progress import Counted, Counts

if TYPE_CHECKING:
    from ..ledger.reconcile import Reconciliation


@dataclass(frozen=True)
class Asked:
    """What a recovery was asked to do (the arguments of :func:`.recover.recover` and
    :func:`.recover.recover_capture`, with the source built)."""

    src: SlotSource | CaptureSource
    dsn: str | None
    slot: str | None
    table: TableName
    into: TableName
    target_dsn: str | None
    #: The stop point as given (the recovery may resolve a subtransaction's xid).
    stop: StopPoint
    ddl: str | None
    force: bool
    ledger: LedgerCheck | None
    command: str
    #: The older copy the table starts from (``--baseline``), if any.
    baseline: BaselineOptions | None = None


@dataclass(frozen=True)
class LedgerCheck:
    """How to reconcile: sum ``amount`` per ``key`` and compare with ``query`` on the source."""

    key: str
    amount: str
    query: str


@dataclass(frozen=True)
class AuditSummary:
    """Where the audit went and how many rows it holds."""

    path: str
    rows: int
    #: The manifest beside it, the last row's chained hash (record it with the incident:
    #: ``walrecover audit verify --chain-head`` proves the audit is that one) and the rows per
    #: outcome.
    manifest: str | None = None
    chain_head: str | None = None
    outcomes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": self.path,
            "rows": self.rows,
            "manifest": self.manifest,
            "chain_head": self.chain_head,
            "outcomes": dict(self.outcomes),
        }


@dataclass(frozen=True)
class RecoveryResult(Counted):
    """What a recovery did, as ``walrecover recover --json`` prints it."""

    table: str
    into: str
    plugin: str
    slot: str
    #: Transactions and row changes applied, and their commit LSNs (also readable as
    #: ``transactions``, ``changes``, ``no_row``, ``first_lsn``, ``last_lsn``).
    counts: Counts
    rows: int
    stop: str
    stopped_before: tuple[int | None, Lsn | None] | None
    resumed_from: Lsn | None
    seconds: dict[str, float]
    reconciliation: Reconciliation | None
    audit: AuditSummary | None
    swept_slots: tuple[str, ...] = field(default=())
    #: What the user should know about how the stream was read (plugin limits).
    warnings: tuple[str, ...] = field(default=())
    #: Why the rebuilt table may differ from the table at the stop point. Empty means exact;
    #: anything here makes ``walrecover recover`` exit with code 4 (``EXIT_UNPROVEN``).
    unproven: tuple[str, ...] = field(default=())
    #: The capture file read (``--from-file``), or None for a slot.
    capture: str | None = None
    #: What ``first_lsn``, ``last_lsn`` and ``stopped_before`` hold: ``"commit"`` (where each
    #: commit record starts) or ``"end"`` (where it ends: test_decoding gives no commit LSN).
    lsn_kind: str = "commit"
    #: An earlier run of the same command had finished this recovery: nothing was read or
    #: written, the result is the one it recorded (the reconciliation, if asked, is new).
    already_complete: bool = False
    #: The baseline the table was started from (``--baseline``): source, point, rows, hash.
    baseline: dict[str, Any] | None = None
    #: The event ``--stop-before drop|truncate|auto`` found and stopped before, if given.
    stop_event: DestructiveEvent | None = None

    @property
    def exact(self) -> bool:
        """True when walrecover could prove the rebuilt table is the table at the stop point."""
        return not self.unproven

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (LSNs as text, Decimals as strings)."""
        return {
            "table": self.table,
            "into": self.into,
            "plugin": self.plugin,
            "slot": self.slot,
            "transactions": self.transactions,
            "changes": self.changes,
            "rows": self.rows,
            "no_row": self.no_row,
            "first_lsn": lsn_text(self.first_lsn),
            "last_lsn": lsn_text(self.last_lsn),
            "stop": self.stop,
            "stopped_before": (
                {"xid": self.stopped_before[0], "lsn": lsn_text(self.stopped_before[1])}
                if self.stopped_before
                else None
            ),
            "resumed_from": lsn_text(self.resumed_from),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "reconciliation": self.reconciliation.to_dict() if self.reconciliation else None,
            "audit": self.audit.to_dict() if self.audit else None,
            "swept_slots": list(self.swept_slots),
            "warnings": list(self.warnings),
            "unproven": list(self.unproven),
            "exact": self.exact,
            "capture": self.capture,
            "lsn_kind": self.lsn_kind,
            "already_complete": self.already_complete,
            "baseline": self.baseline,
            "stop_event": self.stop_event.to_dict() if self.stop_event else None,
        }


def lsn_text(value: Lsn | None) -> str | None:
    return None if value is None else str(value)
