"""The replay phase of a recovery: the source's events decoded, checked and watched on their
way into the target, then what the decoder, the source and the watches say about them.

The source -> events assembly lives here (:meth:`Reading._events`): the source decodes its own
stream (:meth:`~walrecover.stream.sources.Source.events`); the capture's value checks
(:class:`~walrecover.stream.value_check.ValueChecker`), the wal2json capture's identity watch, a
slot read's loss watch and a baseline's coverage check (:meth:`.baseline.Baseline.follow`) wrap
its events before :func:`.replay.replay` reads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from ..db import Connection, connect
from ..errors import DecodeError, ReplayError, StopPointError, TableNotInStream, WalrecoverError
from ..stream.decoders import column_limits, warnings_for
from ..stream.lsn import Lsn
from ..stream.model import Change, Event, StopPoint, TableName
from ..stream.notices import LossWatch
from ..stream.sources import CaptureSource, SlotSource
from ..stream.value_check import ValueChecker
from ..stream.walinspect import WalInspect
from .baseline import Baseline
from .identity import CaptureIdentityWatch
from .preflight import check_key_amount, table_column_types
from .recreation import RecreationJudge
from .recreation_reasons import format1_duplicate
from .replay import ReplayResult, replay
from .result import Asked, LedgerCheck
from .stoppoint import open_wal, xid_hint
from .target import Target
from .unseen import capture_publications, catalog_writers, replaced

if TYPE_CHECKING:
    from ..audit.writer import AuditWriter


class Reading:
    """Reads the source into the target, once its checks passed and its audit is open."""

    def __init__(
        self,
        ask: Asked,
        conn: Connection,
        *,
        stop: StopPoint,
        checker: ValueChecker | None,
        judge: RecreationJudge | None,
        audit: AuditWriter | None,
        audit_at: str | Path | None,
        batch_size: int,
        wal_dsn: str | None,
        began: Lsn | None,
        base: Baseline | None = None,
    ) -> None:
        self.ask, self.conn, self.stop, self.checker, self.judge = ask, conn, stop, checker, judge
        self.audit, self.audit_at, self.batch_size = audit, audit_at, batch_size
        self.wal_dsn, self.began, self.base = wal_dsn, began, base
        #: What the user should know, and why the table may not be exact, from the reading.
        self.warnings: list[str] = []
        self.unproven: list[str] = []
        #: Orphaned copies of the slot that the read swept.
        self.swept: tuple[str, ...] = ()

    def run(self) -> ReplayResult:
        """Decode the source's events and replay them; then what the stream could not show."""
        events, watch, identity = self._events()
        result = self._replay(events, watch)
        self._verdicts(result, watch, identity)
        return result

    def _events(self) -> tuple[Iterable[Event], LossWatch | None, CaptureIdentityWatch | None]:
        """The source's events, decoded, checked and watched on their way to replay."""
        src, checker, table, stop, ddl = (
            self.ask.src,
            self.checker,
            self.ask.table,
            self.stop,
            self.ask.ddl,
        )
        warnings = list(warnings_for(src.plugin, dict(src.options)))
        unproven: list[str] = []
        events = src.events()
        if checker is not None:
            warnings.extend(checker.settings.warnings())
            events = checker.events(events)
        watch: LossWatch | None = None
        identity: CaptureIdentityWatch | None = None
        if isinstance(src, CaptureSource) and src.plugin == "wal2json":
            identity = CaptureIdentityWatch(table, stop, dict(src.options))
            events = identity.follow(events)
        if isinstance(src, SlotSource):
            warnings.extend(src.warnings)
            unproven.extend(src.unproven)
            point = self.base.point if self.base is not None else None
            watch = LossWatch(src.notices, table, stop, src.plugin, point)
            events = watch.follow(events)
        if ddl is None:
            version = src.server_version if isinstance(src, SlotSource) else None
            warnings.extend(column_limits(src.plugin, version))
        if self.base is not None:
            start = src.start_lsn if isinstance(src, SlotSource) else None
            events = self.base.follow(events, start, stop)
        self.warnings += warnings
        self.unproven += unproven
        return events, watch, identity

    def _xid_hint(self, exc: StopPointError) -> StopPointError:
        """The missing stop xid's error, with what the source's WAL (when readable) says."""
        src = self.ask.src
        try:
            wal, _ = open_wal(self.wal_dsn, capture=isinstance(src, CaptureSource))
        except WalrecoverError:
            wal = None
        try:
            return xid_hint(exc, self.ask.stop, src, wal)
        finally:
            if wal is not None:
                wal.close()

    def _replay(self, events: Iterable[Event], watch: LossWatch | None = None) -> ReplayResult:
        ask, src, base = self.ask, self.ask.src, self.base
        try:
            return replay(
                self.conn,
                events,
                ask.table,
                ask.into,
                stop=self.stop,
                ddl=ask.ddl,
                force=ask.force,
                # Positions mean different things in different plugins (test_decoding's is
                # the end of the commit record): resume only through the same one.
                source=src.describe()
                if isinstance(src, CaptureSource)
                else f"{src.describe()} through {src.plugin}",
                batch_size=self.batch_size,
                sink=self.audit,
                audit_id=str(Path(self.audit_at).resolve()) if self.audit_at is not None else None,
                stream_start=src.start_lsn if isinstance(src, SlotSource) else None,
                judge=self.judge,
                cut_ok=isinstance(src, CaptureSource),
                command=ask.command,
                on_created=_on_created(_column_check(ask.ledger, ask.ddl), base),
                idempotent=base is not None and base.idempotent,
            )
        except StopPointError as exc:
            if exc.facts.get("missing") and ask.stop.xid is not None:
                raise self._xid_hint(exc) from None
            raise
        except TableNotInStream as exc:
            if base is not None:
                raise base.no_changes(exc) from None
            if isinstance(src, SlotSource) and not exc.facts.get("tables"):
                raise _with_tables(exc, ask.dsn, src) from None
            raise
        except DecodeError as exc:
            src.locate(exc)
            raise
        except ReplayError as exc:
            # A change the plugin said it left out explains the failure it caused.
            error = watch.explain(exc) if watch is not None else exc
            refused = exc.facts.get("refused")
            if error is exc and refused and self.judge is not None and self.judge.format1:
                error = format1_duplicate(exc, refused)
            raise error from None

    def _verdicts(
        self,
        result: ReplayResult,
        watch: LossWatch | None,
        identity: CaptureIdentityWatch | None,
    ) -> None:
        """What the decoder, the source and the watches say about the replayed stream."""
        src, table, warnings, unproven = self.ask.src, self.ask.table, self.warnings, self.unproven
        self.swept = tuple(src.swept)
        warnings.extend(src.notes())
        began = self.began if self.began else src.end_lsn
        if src.plugin == "pgoutput":
            hidden, noted = _unseen(
                src, self.wal_dsn, table, self.ask.into, self.stop, result, began
            )
            unproven.extend(hidden)
            warnings.extend(noted)
        elif self.judge is not None and self.judge.oid is not None:
            # The WAL named the stream's table: ask, as for pgoutput, whether it was replaced
            # after its last change with no change of the new table in the stream.
            unproven.extend(
                _replaced_after(
                    self.wal_dsn, isinstance(src, CaptureSource), self.judge.oid, table,
                    self.ask.into, self.stop, result, began,
                )
            )  # fmt: skip
        elif self.judge is not None:
            dsn = self.ask.dsn if isinstance(src, SlotSource) else self.wal_dsn
            warnings.extend(self.judge.unseen_after(self.stop, _explained(dsn)))
        if isinstance(src, SlotSource) and watch is not None:
            lost, after_stop = watch.verdict()
            unproven.extend(lost)
            warnings.extend(src.notices.warnings(skip=table))
            warnings.extend(after_stop)
        if identity is not None:
            lost, doubts = identity.verdict()
            unproven.extend(lost)
            warnings.extend(doubts)


def _unseen(
    src: SlotSource | CaptureSource,
    dsn: str | None,
    table: TableName,
    into: TableName,
    stop: StopPoint,
    result: ReplayResult,
    began: Lsn | None,
) -> tuple[list[str], list[str]]:
    """What the pgoutput stream could not show, asked of the source database ``dsn`` (a slot
    read's, or a capture's -d): a table replaced with no change of the new one in the stream,
    and (a capture) what its publications publish. See :mod:`walrecover.rebuild.unseen`."""
    capture = isinstance(src, CaptureSource)
    if dsn is None:
        return capture_publications(None, dict(src.options), table, result.relation)
    wal, _ = open_wal(dsn, capture=capture)
    try:
        with connect(dsn, autocommit=True, role="source") as conn:
            unproven, warnings = (
                capture_publications(conn, dict(src.options), table, result.relation)
                if capture
                else ([], [])
            )
            oid = result.relation.relation_id
            if oid is not None:
                unproven += _replaced(conn, wal, oid, table, into, stop, result, began)
    finally:
        if wal is not None:
            wal.close()
    return unproven, warnings


def _explained(dsn: str | None) -> Callable[[list[int]], frozenset[int]] | None:
    """What asks the source ``dsn`` which catalog changes it still shows as something else
    (:func:`walrecover.rebuild.unseen.catalog_writers`); None without a source."""
    if dsn is None:
        return None

    def ask(xids: list[int]) -> frozenset[int]:
        try:
            with connect(dsn, autocommit=True, role="source") as conn:
                return catalog_writers(conn, xids)
        except (psycopg.Error, WalrecoverError):
            return frozenset()  # nothing explained: the warning stands

    return ask


def _replaced_after(
    dsn: str | None,
    capture: bool,
    oid: int,
    table: TableName,
    into: TableName,
    stop: StopPoint,
    result: ReplayResult,
    began: Lsn | None,
) -> list[str]:
    """Why the stream's table ``oid`` may not be what ``table`` named at the stop point (see
    :func:`walrecover.rebuild.unseen.replaced`), asked of the source ``dsn``."""
    if dsn is None:
        return []
    wal, _ = open_wal(dsn, capture=capture)
    try:
        with connect(dsn, autocommit=True, role="source") as conn:
            return _replaced(conn, wal, oid, table, into, stop, result, began)
    finally:
        if wal is not None:
            wal.close()


def _replaced(
    conn: Connection,
    wal: WalInspect | None,
    oid: int,
    table: TableName,
    into: TableName,
    stop: StopPoint,
    result: ReplayResult,
    began: Lsn | None,
) -> list[str]:
    return replaced(
        conn,
        wal,
        table,
        into,
        oid,
        last_lsn=result.last_lsn,
        stop=stop,
        stopped_lsn=result.stopped_before[1] if result.stopped_before else None,
        until=began,
        own=result.dropped_files,
    )


def _column_check(ledger: LedgerCheck | None, ddl: str | None) -> Callable[[Target], None] | None:
    """The check of --key/--amount against the table just created (before its first commit)."""
    if ledger is None:
        return None

    def check(target: Target) -> None:
        origin = "the --ddl" if ddl is not None else "the stream's definition"
        check_key_amount(
            table_column_types(target.conn, target.into),
            ledger.key,
            ledger.amount,
            f"{target.into} (created from {origin})",
        )

    return check


def _on_created(
    check: Callable[[Target], None] | None, base: Baseline | None
) -> Callable[[Target], None] | None:
    """What to do when replay has created the table: load the baseline, then check it."""
    if base is None:
        return check

    def created(target: Target) -> None:
        base.load(target)
        if check is not None:
            check(target)

    return created


def _with_tables(exc: TableNotInStream, dsn: str | None, src: SlotSource) -> TableNotInStream:
    """The same error, listing the tables the slot does carry (one more pass, no filter)."""
    seen: set[str] = set()
    with (
        contextlib.suppress(WalrecoverError, psycopg.Error),
        SlotSource(dsn, src.slot, options=src.user_options, via_plugin=src.via_plugin) as again,
    ):
        for event in again.events():
            if isinstance(event, Change):
                seen.add(event.relation.qualified_name)
                if len(seen) >= 20:
                    break
    if not seen:
        return exc
    listed = ", ".join(sorted(seen))
    return TableNotInStream(
        f"{exc.message} (tables in the stream: {listed})",
        tables=sorted(seen),
        **{k: v for k, v in exc.facts.items() if k != "tables"},
    )
