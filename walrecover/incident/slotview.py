"""What a slot says about one table, read through a copy (the slot never moves).

Every committed transaction that changed the table, with its changes counted by operation and
the relation it wrote (pgoutput's relation id; for the other plugins the LSN of its first change,
whose WAL record names the relation file), and what came after the table's last change: how many
transactions, the first of them, and those without any change (wal2json and test_decoding show
a ``DROP TABLE`` as such an empty transaction; pgoutput shows nothing of it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..stream.decoders import decode_all, make_decoder
from ..stream.lsn import Lsn
from ..stream.model import Begin, Change, Commit, Event, Op, TableName
from ..stream.sources import SlotSource

#: How many transactions without changes after the table's last change are kept as candidates.
MAX_CANDIDATES = 20


@dataclass(frozen=True, slots=True)
class StreamTransaction:
    """A committed transaction of the stream, as inspect uses it."""

    xid: int | None
    commit_lsn: Lsn | None
    end_lsn: Lsn | None
    time: datetime | None
    #: Changes of the table by operation (empty for a transaction that did not change it).
    counts: Mapping[str, int] = field(default_factory=dict)
    #: pgoutput's relation id of the table's changes (the first one's), else None.
    relation_id: int | None = None
    #: The LSN of the transaction's first change of the table, and of its TRUNCATE if any.
    first_change: Lsn | None = None
    truncate_lsn: Lsn | None = None

    @property
    def lsn(self) -> Lsn | None:
        """The commit LSN, or the commit's end where the plugin gives only that."""
        return self.commit_lsn if self.commit_lsn is not None else self.end_lsn


@dataclass(frozen=True, slots=True)
class SlotView:
    """The table's transactions in the slot and what followed its last change."""

    slot: str
    plugin: str
    start_lsn: Lsn | None
    end_lsn: Lsn | None
    transactions: tuple[StreamTransaction, ...]
    #: Transactions committed after the table's last change: how many, the first, and the
    #: first ones without any change (the DROP is one of them in wal2json and test_decoding).
    after_last: int
    first_after: StreamTransaction | None
    empty_after: tuple[StreamTransaction, ...]
    warnings: tuple[str, ...] = ()


def read_slot_view(
    dsn: str | None,
    slot: str,
    table: TableName,
    *,
    options: Mapping[str, str] | None = None,
    via_plugin: str | None = None,
) -> SlotView:
    """Read ``slot`` through a copy and keep what :class:`SlotView` holds about ``table``."""
    tally = _Tally(table)
    # Unfiltered: a transaction without any change (a DROP, in wal2json and test_decoding) is
    # told from one that changed only other tables.
    with SlotSource(dsn, slot, options=options, via_plugin=via_plugin) as source:
        decoder = make_decoder(source.plugin, dict(source.options))
        for event in decode_all(decoder, source.messages()):
            tally.feed(event)
        plugin, start, end = source.plugin, source.start_lsn, source.end_lsn
        warnings = tuple(source.warnings)
    return SlotView(
        slot=slot,
        plugin=plugin,
        start_lsn=start,
        end_lsn=end,
        transactions=tuple(tally.found),
        after_last=tally.after_count,
        first_after=tally.first_after,
        empty_after=tuple(tally.empty),
        warnings=warnings,
    )


class _Tally:
    """The stream's events, folded into the table's transactions and what followed them."""

    def __init__(self, table: TableName) -> None:
        self.table = table
        self.found: list[StreamTransaction] = []
        self.empty: list[StreamTransaction] = []
        self.first_after: StreamTransaction | None = None
        self.after_count = 0
        self._begin = Begin(None)
        self._counts: Counter[str] = Counter()
        self._relation_id: int | None = None
        self._first: Lsn | None = None
        self._truncate: Lsn | None = None
        self._events = 0

    def feed(self, event: Event) -> None:
        if isinstance(event, Begin):
            self._begin, self._counts, self._events = event, Counter(), 0
            self._relation_id = self._first = self._truncate = None
        elif isinstance(event, Change):
            self._events += 1
            relation = event.relation
            if (relation.schema, relation.name) != (self.table.schema, self.table.name):
                return
            self._counts[str(event.op)] += 1
            if self._relation_id is None:
                self._relation_id = relation.relation_id
            if self._first is None:
                self._first = event.lsn
            if event.op is Op.TRUNCATE and self._truncate is None:
                self._truncate = event.lsn
        else:
            self._commit(event)

    def _commit(self, event: Commit) -> None:
        begin = self._begin
        txn = StreamTransaction(
            event.xid if event.xid is not None else begin.xid,
            event.commit_lsn or begin.commit_lsn,
            event.end_lsn or begin.end_lsn,
            event.commit_time or begin.commit_time,
            dict(self._counts),
            self._relation_id,
            self._first,
            self._truncate,
        )
        if self._counts:
            self.found.append(txn)
            self.empty, self.first_after, self.after_count = [], None, 0
        elif self.found:
            self.after_count += 1
            self.first_after = self.first_after or txn
            if self._events == 0 and len(self.empty) < MAX_CANDIDATES:
                self.empty.append(txn)
