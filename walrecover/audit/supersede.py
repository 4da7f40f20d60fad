"""Which applied changes a later applied change superseded or removed, worked out columnar.

Every applied change leaves a *before* event on the row identity it touched (update, delete) and
an *after* event on the identity it left (insert, update). Sorted by (identity, seq, role), the
event right after an after event on the same identity says what became of that version of the
row: a before event of an update superseded it, of a delete removed it; a truncate between the
two (or after it, when nothing followed) removed it.

Bounded memory, whatever the size of the recovery: the events (identity, seq, role, op) are
hash-partitioned by identity into Arrow IPC bucket files, so a bucket holds about
:data:`BUCKET_BYTES` of identities however many rows the audit has; each bucket is sorted and
compared with itself shifted by one (pyarrow), and the answers land in a file of one byte per
seq (a memory map), which :meth:`FinalOutcomes.apply` reads batch by batch in seq order. With a
single bucket (up to a few million keyed rows) the events stay in memory and no file is written.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import ipc

from ..errors import AuditError
from ..stream.model import Outcome
from . import outcomes, safefiles
from .format import PRIVATE_COLUMNS, ROW_GROUP_ROWS

#: About how many bytes of identities one bucket holds (sorting it takes a few times that).
BUCKET_BYTES: Final = 32 << 20
#: At most this many bucket files (open at once while the events are partitioned).
MAX_BUCKETS: Final = 256
#: The answer byte per seq: unchanged, superseded, removed.
_KEEP, _SUPERSEDED, _REMOVED = 0, 1, 2
_EVENTS: Final = pa.schema(
    [("k", pa.string()), ("seq", pa.int64()), ("role", pa.int8()), ("op", pa.string())]
)


def batches(path: Path, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows in batches, holding one row group at a time.

    ``pre_buffer=False``: pre-buffering caches the column chunks it has read ahead until the
    reader is done, which makes memory grow with the file.
    """
    parquet = pq.ParquetFile(path, pre_buffer=False)
    yield from parquet.iter_batches(
        batch_size=ROW_GROUP_ROWS, columns=list(columns) if columns is not None else None
    )


def _nothing_later(parts: Sequence[Path]) -> bool:
    """True if no applied change updated, deleted or truncated anything: then nothing was
    superseded or removed (an insert-only ledger, the common case). Reads two small
    dictionary-encoded columns, not the identities."""
    changing = pa.array(["update", "delete", "truncate"])
    for part in parts:
        for batch in batches(part, columns=["op", "outcome"]):
            applied = pc.equal(batch.column("outcome"), Outcome.APPLIED.value)
            if pc.any(pc.and_(applied, pc.is_in(batch.column("op"), changing))).as_py():
                return False
    return True


def _identity_bytes(parts: Sequence[Path]) -> int:
    """The identities' uncompressed size, from the parts' metadata (nothing is read)."""
    total = 0
    for part in parts:
        meta = pq.ParquetFile(part).metadata
        for group in range(meta.num_row_groups):
            row_group = meta.row_group(group)
            for index in range(row_group.num_columns):
                column = row_group.column(index)
                if column.path_in_schema in PRIVATE_COLUMNS:
                    total += column.total_uncompressed_size
    return total


def _bucket_of(keys: pa.Array, buckets: int) -> np.ndarray[Any, Any]:
    """Each identity's bucket: a hash of its UTF-8 bytes, computed with numpy over the buffer."""
    keys = keys.cast(pa.large_string())
    if len(keys) == 0:
        return np.empty(0, np.int64)
    _, offset_buffer, data_buffer = keys.buffers()
    offsets = np.frombuffer(offset_buffer, np.int64)[keys.offset : keys.offset + len(keys) + 1]
    raw = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    data = raw[offsets[0] : offsets[-1]].astype(np.uint64)
    starts = offsets[:-1] - offsets[0]
    ends = offsets[1:] - offsets[0]
    position = np.arange(len(data), dtype=np.uint64)
    position -= np.repeat(starts, ends - starts).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = data * (position * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019))
        # Sums of each string's bytes as differences of a running sum (modulo 2**64).
        running = np.zeros(len(data) + 1, np.uint64)
        np.cumsum(mixed, out=running[1:])
        sums = running[ends] - running[starts]
        sums ^= sums >> np.uint64(29)
        sums *= np.uint64(0xBF58476D1CE4E5B9)
        sums ^= sums >> np.uint64(32)
    bucket: np.ndarray[Any, Any] = (sums % np.uint64(buckets)).astype(np.int64)
    return bucket


def _events(table: pa.Table) -> pa.Table:
    """The before and after events of a batch's applied changes."""
    pieces = []
    for role, name in enumerate(PRIVATE_COLUMNS):
        rows = table.filter(pc.is_valid(table.column(name)))
        roles = pa.array(np.full(rows.num_rows, role, np.int8))
        pieces.append(
            pa.Table.from_arrays(
                [rows.column(name), rows.column("seq"), roles, rows.column("op")],
                schema=_EVENTS,
            )
        )
    return pa.concat_tables(pieces)


def _answers(events: pa.Table, truncates: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    """The seqs of a bucket's after events that later changes superseded or removed, and the
    answer byte of each."""
    if events.num_rows == 0:
        return np.empty(0, np.int64), np.empty(0, np.uint8)
    events = events.sort_by([("k", "ascending"), ("seq", "ascending"), ("role", "ascending")])
    keys = events.column("k")
    seq = events.column("seq").to_numpy()
    role = events.column("role").to_numpy()
    after = role == 1
    # The next event on the same identity, if it is a before event.
    followed = np.zeros(len(seq), bool)
    if len(seq) > 1:
        same = pc.equal(keys.slice(0, len(seq) - 1), keys.slice(1)).to_numpy(zero_copy_only=False)
        followed[:-1] = same & (role[1:] == 0)
    next_seq = np.full(len(seq), np.iinfo(np.int64).max, np.int64)
    next_seq[:-1] = seq[1:]
    next_deletes = np.zeros(len(seq), bool)
    if len(seq) > 1:
        next_ops = events.column("op").slice(1)
        next_deletes[:-1] = pc.equal(next_ops, "delete").to_numpy(zero_copy_only=False)
    answer = np.full(len(seq), _KEEP, np.uint8)
    answer[followed] = np.where(next_deletes[followed], _REMOVED, _SUPERSEDED)
    if len(truncates):
        # A truncate before the next change removed this version first. (One after it, when
        # nothing followed, is for :meth:`FinalOutcomes.apply` to see.)
        cut = np.searchsorted(truncates, seq, side="right")
        cut_seq = truncates[np.minimum(cut, len(truncates) - 1)]
        answer[followed & (cut < len(truncates)) & (cut_seq < next_seq)] = _REMOVED
    chosen = after & (answer != _KEEP)
    return seq[chosen], answer[chosen]


class FinalOutcomes:
    """Which applied changes a later applied change superseded or removed (see the module).

    ``workdir`` (the audit's ``PATH.parts``) receives the bucket files and the answer file,
    named ``outcomes-*``; :meth:`close` removes them.
    """

    def __init__(self, parts: Sequence[Path], workdir: Path) -> None:
        self.workdir = workdir
        self._files: list[Path] = []
        self._handles: list[BinaryIO] = []
        self._answers: mmap.mmap | None = None
        self._cuts = np.empty(0, np.int64)
        self._size = 0
        truncates: list[int] = []
        tables: list[pa.Table] = []
        if _nothing_later(parts):
            return
        buckets = max(1, min(MAX_BUCKETS, math.ceil(_identity_bytes(parts) / BUCKET_BYTES)))
        writers = [self._bucket_writer(i) for i in range(buckets)] if buckets > 1 else []
        try:
            for part in parts:
                for batch in batches(part, ["seq", "op", "outcome", *PRIVATE_COLUMNS]):
                    table = pa.Table.from_batches([batch])
                    self._size = max(self._size, (pc.max(table.column("seq")).as_py() or 0) + 1)
                    applied = pc.equal(table.column("outcome"), Outcome.APPLIED.value)
                    table = table.filter(applied)
                    ops = table.column("op")
                    truncates += table.filter(pc.equal(ops, "truncate"))["seq"].to_pylist()
                    events = _events(table)
                    if events.num_rows == 0:
                        continue
                    if not writers:
                        tables.append(events)
                        continue
                    where = _bucket_of(events.column("k").combine_chunks(), buckets)
                    order = np.argsort(where, kind="stable")
                    events = events.take(pa.array(order))
                    counts = np.bincount(where, minlength=buckets)
                    start = 0
                    for writer, count in zip(writers, counts.tolist(), strict=True):
                        if count:
                            writer.write_table(events.slice(start, count))
                        start += count
        finally:
            for writer in writers:
                writer.close()
            for handle in self._handles:
                handle.close()
            self._handles.clear()
        cuts = np.array(sorted(truncates), np.int64)
        #: Truncates remove every live row before them, with or without a row identity.
        self._cuts = cuts
        results = (
            [_answers(pa.concat_tables(tables, promote_options="none"), cuts)]
            if not writers
            else (self._bucket_answers(i, cuts) for i in range(buckets))
        )
        for seqs, answer in results:
            if len(seqs):
                self._store(seqs, answer)

    def _bucket_writer(self, index: int) -> ipc.RecordBatchFileWriter:
        path = self.workdir / f"outcomes-{index:04d}.arrow"
        safefiles.remove_file(path)
        self._files.append(path)
        try:
            self._handles.append(safefiles.create(path))
            return ipc.new_file(self._handles[-1], _EVENTS)
        except OSError as exc:
            raise AuditError(f"cannot write {path}: {exc}", path=str(path)) from None

    def _bucket_answers(self, index: int, cuts: np.ndarray[Any, Any]) -> tuple[Any, Any]:
        path = self._files[index]
        with pa.memory_map(str(path)) as source:
            events = ipc.open_file(source).read_all()
        answers = _answers(events, cuts)
        safefiles.remove_file(path)
        return answers

    def _store(self, seqs: np.ndarray[Any, Any], answer: np.ndarray[Any, Any]) -> None:
        """Write answers into the one-byte-per-seq file (made on the first answer)."""
        if self._answers is None:
            path = self.workdir / "outcomes.bin"
            safefiles.remove_file(path)
            self._files.append(path)
            with safefiles.create(path) as handle:
                handle.truncate(self._size)
            with path.open("r+b") as handle:
                self._answers = mmap.mmap(handle.fileno(), self._size)
        view = np.frombuffer(self._answers, np.uint8)
        view[seqs] = answer
        del view

    def apply(self, table: pa.Table) -> pa.Table:
        """The batch with each applied change's final outcome (any order of batches)."""
        if (self._answers is None and not len(self._cuts)) or table.num_rows == 0:
            return table
        seqs = table.column("seq").to_numpy()
        answer = np.zeros(len(seqs), np.uint8)
        if self._answers is not None:
            view = np.frombuffer(self._answers, np.uint8)
            inside = (seqs >= 0) & (seqs < self._size)
            answer[inside] = view[seqs[inside]]
            del view
        if len(self._cuts):
            cut_after = np.searchsorted(self._cuts, seqs, side="right") < len(self._cuts)
            answer[(answer == _KEEP) & cut_after] = _REMOVED
        live = pc.and_(
            pc.equal(table.column("outcome"), Outcome.APPLIED.value),
            pc.is_in(table.column("op"), pa.array(outcomes.LIVE_OPS)),
        ).to_numpy(zero_copy_only=False)
        answer[~live] = _KEEP
        if not answer.any():
            return table
        final = pc.if_else(
            pa.array(answer == _SUPERSEDED),
            Outcome.SUPERSEDED.value,
            pc.if_else(pa.array(answer == _REMOVED), Outcome.REMOVED.value, table["outcome"]),
        )
        index = table.schema.get_field_index("outcome")
        return table.set_column(index, "outcome", final)

    def close(self) -> None:
        """Release the answers and remove the work files."""
        if self._answers is not None:
            with contextlib.suppress(BufferError):
                self._answers.close()
            self._answers = None
        for path in self._files:
            with contextlib.suppress(OSError):
                safefiles.remove_file(path)
        self._files.clear()
