"""How much work a recovery has, for ``walrecover check`` and ``recover --dry-run``.

:class:`Estimate` reads a sample at the stream's start (a page of the slot's copy, or the first
messages of a capture file), counts the table's changes in it and extrapolates to the whole
stream; :mod:`walrecover.rebuild.plan` reports it, labelled as an estimate.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from ..stream.decoders import decode_all, make_decoder
from ..stream.model import Change, RawMessage, Relation, StopPoint, TableName
from ..stream.sources import CaptureSource, SlotSource

#: Messages read from the start of the stream to estimate the work (one page of a slot copy).
SAMPLE_MESSAGES = 5_000
#: The apply rate the estimate assumes (row changes per second into the target).
APPLY_RATE = 20_000


class Estimate:
    """Changes of the table in a sample at the stream's start, extrapolated to the stream."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.changes: int | None = None
        self.seconds: float | None = None
        self.basis = "no estimate (the source could not be read)"
        self.relation: Relation | None = None
        #: Messages read, and the stream position (LSN or byte offset) the last one reached.
        self._read = 0
        self._last = 0

    def read(
        self, src: SlotSource | CaptureSource, table: TableName, stop: StopPoint, sample: int
    ) -> str:
        """Read up to ``sample`` messages of ``src`` and set the estimate from them."""
        start = self._span(src, stop)
        self._read = 0
        self._last = start
        began = time.monotonic()
        decoder = make_decoder(src.plugin, dict(src.options))
        events = decode_all(decoder, self._messages(src, sample))
        count = 0
        try:
            for event in events:
                if isinstance(event, Change) and event.relation.same_table(
                    table.schema, table.name
                ):
                    count += 1
                    if self.relation is None:
                        self.relation = event.relation
        finally:
            with contextlib.suppress(Exception):
                events.close()  # type: ignore[attr-defined]
        self._extrapolate(table, count, time.monotonic() - began, start, sample)
        return self.basis

    def _span(self, src: SlotSource | CaptureSource, stop: StopPoint) -> int:
        """Set :attr:`total` (bytes to read) and return the stream position it starts at."""
        if isinstance(src, SlotSource):
            start = int(src.start_lsn or 0)
            end = int(src.end_lsn or 0)
            if stop.lsn is not None and int(stop.lsn) < end:
                end = int(stop.lsn)
            self.total = max(end - start, 0)
            return start
        self.total = src.path.stat().st_size
        return 0

    def _messages(self, src: SlotSource | CaptureSource, sample: int) -> Iterator[RawMessage]:
        """The source's first ``sample`` messages, tracking how far into the stream they reach."""
        for message in src.messages():
            self._read += 1
            if isinstance(src, SlotSource) and message.lsn is not None:
                self._last = int(message.lsn)
            elif isinstance(src, CaptureSource):
                self._last += len(_raw(message)) + 1
            yield message
            if self._read >= sample:
                return

    def _extrapolate(
        self, table: TableName, count: int, spent: float, start: int, sample: int
    ) -> None:
        read = self._read
        total = self.total or 0
        covered = max(self._last - start, 0)
        whole = read < sample
        if whole or covered >= total:
            self.changes = count
            self.seconds = spent + count / APPLY_RATE
            self.basis = (
                f"the whole stream was read ({read} messages): {count} changes of {table}; "
                f"the time is an estimate (applying at about {APPLY_RATE} changes/s)"
            )
        else:
            scale = total / covered if covered else 0.0
            self.changes = round(count * scale)
            self.seconds = spent * scale + self.changes / APPLY_RATE
            self.basis = (
                f"estimate: extrapolated from a sample of the first {read} messages ({covered} of "
                f"{total} bytes, {count} changes of {table}, read in {spent:.1f}s), "
                f"applying at about {APPLY_RATE} changes/s"
            )


def _raw(message: RawMessage) -> bytes:
    data = message.data
    return data.encode() if isinstance(data, str) else bytes(data)
