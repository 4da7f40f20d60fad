"""Buffered transactions: a streamed or prepared transaction waiting for its outcome, with at
most a threshold of changes in memory and the rest pickled to an anonymous temporary file
(unlinked at creation, so nothing is left behind even if the process dies), streamed back in
order when the transaction commits."""

from __future__ import annotations

import pickle
import tempfile
import weakref
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import IO, overload

from ...lsn import Lsn
from ...model import Begin, Change, Commit, Event, Relation

#: A buffered change and the (sub)transaction that made it.
_Entry = tuple[int, Change]


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One pickled batch of entries in a spill file: where it starts, how many per subxid."""

    offset: int
    counts: Counter[int]


@dataclass(slots=True)
class Pending:
    """A streamed or prepared transaction waiting for its outcome, with bounded memory.

    At most ``threshold`` entries stay in ``memory``; each full batch is pickled to an anonymous
    temporary file. Aborted subtransactions are dropped from memory at once and filtered out of
    the spilled batches when they are read back.
    """

    xid: int
    #: The LSN of the message that opened it (Stream Start or Begin Prepare): its Begin's ``lsn``.
    lsn: Lsn | None
    #: False when the stream began after the transaction's first stream segment.
    complete: bool
    threshold: int
    spill_dir: str | None
    gid: str | None = None
    #: Relation messages sent inside its stream blocks (they only count if it commits).
    relations: dict[int, Relation] = field(default_factory=dict)
    memory: list[_Entry] = field(default_factory=list)
    chunks: list[_Chunk] = field(default_factory=list)
    file: IO[bytes] | None = None
    aborted: set[int] = field(default_factory=set)
    spilled: int = 0

    def add(self, subxid: int, change: Change) -> None:
        if subxid in self.aborted:
            return
        self.memory.append((subxid, change))
        if len(self.memory) >= self.threshold:
            self._spill()

    def _spill(self) -> None:
        if self.file is None:
            # Lives as long as the transaction (or its lazy events): closed by discard() or
            # by SpilledTransaction; anonymous, so the OS reclaims it even after a crash.
            self.file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="walrecover-pgoutput-", dir=self.spill_dir
            )
        offset = self.file.seek(0, 2)
        pickle.dump(self.memory, self.file, protocol=pickle.HIGHEST_PROTOCOL)
        self.chunks.append(_Chunk(offset, Counter(subxid for subxid, _ in self.memory)))
        self.spilled += len(self.memory)
        self.memory = []

    def abort_subtransaction(self, subxid: int) -> None:
        self.aborted.add(subxid)
        self.memory = [entry for entry in self.memory if entry[0] != subxid]

    def events(self, begin: Begin, commit: Commit) -> Sequence[Event]:
        """Begin, the surviving changes in order, Commit; lazy when part of it is on disk."""
        if self.file is None:
            return [begin, *(change for _, change in self.memory), commit]
        tail = [change for _, change in self.memory]
        return SpilledTransaction(begin, commit, self.file, self.chunks, tail, self.aborted)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()


class SpilledTransaction(Sequence[Event]):
    """A committed transaction whose changes partly live in a spill file, read back lazily.

    Iterating reads one batch at a time, so memory stays bounded however big the transaction;
    indexing loads the one batch that holds the item. The file is closed (and, being anonymous,
    gone) when this object is garbage-collected or :meth:`close` is called.
    """

    def __init__(
        self,
        begin: Begin,
        commit: Commit,
        file: IO[bytes],
        chunks: list[_Chunk],
        tail: list[Change],
        aborted: set[int],
    ) -> None:
        self._begin, self._commit, self._file, self._chunks = begin, commit, file, chunks
        self._tail = tail
        self._aborted = frozenset(aborted)
        kept = (sum(n for sub, n in c.counts.items() if sub not in self._aborted) for c in chunks)
        #: Index (among the changes) of each batch's first change; the last is the spilled total.
        self._starts = [0, *accumulate(kept)]
        self._length = 2 + self._starts[-1] + len(tail)
        self._finalizer = weakref.finalize(self, file.close)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Event]:
        yield self._begin
        for index in range(len(self._chunks)):
            yield from self._load(index)
        yield from self._tail
        yield self._commit

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | Sequence[Event]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        position = index + self._length if index < 0 else index
        if not 0 <= position < self._length:
            raise IndexError("transaction event index out of range")
        if position == 0:
            return self._begin
        if position == self._length - 1:
            return self._commit
        position -= 1
        if position >= self._starts[-1]:
            return self._tail[position - self._starts[-1]]
        chunk = bisect_right(self._starts, position) - 1
        return self._load(chunk)[position - self._starts[chunk]]

    def _load(self, index: int) -> list[Change]:
        self._file.seek(self._chunks[index].offset)
        entries: list[_Entry] = pickle.load(self._file)
        return [change for subxid, change in entries if subxid not in self._aborted]

    def close(self) -> None:
        """Close the spill file now instead of at garbage collection."""
        self._finalizer()
