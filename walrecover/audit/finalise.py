"""Closing the audit: the sealed parts in seq order, each applied change's final outcome,
the typed columns and the hash chain, merged into the published file or dataset.

Two outcomes are only known once later changes have been seen (``superseded``, ``removed``):
:class:`FinalOutcomes` works them out in one pass over the parts with an on-disk SQLite index,
so memory stays bounded whatever the size of the recovery.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..stream.model import Outcome
from . import outcomes, safefiles
from .format import CHAIN_SEED, PART_SCHEMA, PRIVATE_COLUMNS, ROW_GROUP_ROWS, hash_rows
from .outputs import Output
from .pgarrow import TypedField, typed_arrays


class FinalOutcomes:
    """Which applied changes a later applied change superseded or removed.

    Built in one pass over the sealed parts into an on-disk SQLite database: every applied
    change leaves a *before* event on the identity it touched (update, delete) and an *after*
    event on the identity it left (insert, update). For each after event, the next event on the
    same identity (a window over identity, seq) says what happened to that version of the row:
    an update superseded it, a delete removed it. A truncate removes every version still live.
    :meth:`apply` then rewrites the outcome column batch by batch, reading the answers in seq
    order, so memory holds one batch and the list of truncates.
    """

    def __init__(self, parts: Sequence[Path], path: Path) -> None:
        safefiles.remove_file(path)
        safefiles.create(path).close()  # exclusively, so SQLite never opens a planted link
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;"
            "PRAGMA cache_size = -16000;"
            "CREATE TABLE ev (k TEXT NOT NULL, seq INTEGER NOT NULL, role INTEGER NOT NULL,"
            " op TEXT NOT NULL);"
        )
        self.truncates: list[int] = []
        self._cursor: sqlite3.Cursor | None = None
        self._pending: tuple[int, str, int] | None = None
        if _nothing_later(parts):
            return
        wanted = ["seq", "op", "outcome", *PRIVATE_COLUMNS]
        for part in parts:
            for batch in batches(part, columns=wanted):
                table = pa.Table.from_batches([batch])
                table = table.filter(pc.equal(table.column("outcome"), Outcome.APPLIED.value))
                truncates = table.filter(pc.equal(table.column("op"), "truncate"))
                self.truncates.extend(truncates.column("seq").to_pylist())
                for role, name in enumerate(PRIVATE_COLUMNS):
                    events = table.filter(pc.is_valid(table.column(name)))
                    self.db.executemany(
                        "INSERT INTO ev VALUES (?, ?, ?, ?)",
                        zip(
                            events.column(name).to_pylist(),
                            events.column("seq").to_pylist(),
                            itertools.repeat(role),
                            events.column("op").to_pylist(),
                        ),
                    )
        self.db.executescript(
            "CREATE INDEX ev_k ON ev (k, seq, role);"
            "CREATE TABLE nxt (seq INTEGER PRIMARY KEY, next_op TEXT NOT NULL,"
            " next_seq INTEGER NOT NULL);"
            "INSERT INTO nxt SELECT seq, next_op, next_seq FROM ("
            " SELECT seq, role, lead(op) OVER w AS next_op, lead(role) OVER w AS next_role,"
            " lead(seq) OVER w AS next_seq FROM ev"
            " WINDOW w AS (PARTITION BY k ORDER BY seq, role))"
            " WHERE role = 1 AND next_role = 0;"
        )
        self.db.commit()
        self.truncates.sort()
        self._cursor = self.db.execute("SELECT seq, next_op, next_seq FROM nxt ORDER BY seq")
        self._pending = self._cursor.fetchone()

    def _next_truncate(self, seq: int) -> int | None:
        i = bisect.bisect_right(self.truncates, seq)
        return self.truncates[i] if i < len(self.truncates) else None

    def apply(self, table: pa.Table) -> pa.Table:
        """The batch with each applied change's final outcome (batches come in seq order)."""
        if self._pending is None and not self.truncates:
            return table
        seqs = table.column("seq").to_pylist()
        ops = table.column("op").to_pylist()
        values = table.column("outcome").to_pylist()
        changed = False
        for i, seq in enumerate(seqs):
            while self._pending is not None and self._pending[0] < seq:
                assert self._cursor is not None  # a pending answer came from it
                self._pending = self._cursor.fetchone()
            if values[i] != Outcome.APPLIED or ops[i] not in outcomes.LIVE_OPS:
                continue
            cut = self._next_truncate(seq)
            final = None
            if self._pending is not None and self._pending[0] == seq:
                _, next_op, next_seq = self._pending
                if cut is not None and cut < next_seq:
                    final = Outcome.REMOVED.value
                else:
                    final = (
                        Outcome.REMOVED.value if next_op == "delete" else Outcome.SUPERSEDED.value
                    )
            elif cut is not None:
                final = Outcome.REMOVED.value
            if final is not None:
                values[i] = final
                changed = True
        if not changed:
            return table
        index = table.schema.get_field_index("outcome")
        return table.set_column(index, "outcome", pa.array(values, pa.string()))

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        safefiles.remove_file(self.path)


def _nothing_later(parts: Sequence[Path]) -> bool:
    """True if no applied change updated, deleted or truncated anything: then nothing was
    superseded or removed, and the index is not needed (an insert-only ledger, the common
    case). Reads two small dictionary-encoded columns."""
    for part in parts:
        for batch in batches(part, columns=["op", "outcome"]):
            applied = pc.equal(batch.column("outcome"), Outcome.APPLIED.value)
            changing = pc.is_in(batch.column("op"), pa.array(["update", "delete", "truncate"]))
            if pc.any(pc.and_(applied, changing)).as_py():
                return False
    return True


# -- outputs -------------------------------------------------------------------------------------


def batches(path: Path, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows in batches, holding one row group at a time.

    ``pre_buffer=False``: pre-buffering caches the column chunks it has read ahead until the
    reader is done, which makes memory grow with the file.
    """
    parquet = pq.ParquetFile(path, pre_buffer=False)
    yield from parquet.iter_batches(
        batch_size=ROW_GROUP_ROWS, columns=list(columns) if columns is not None else None
    )


def row_groups(parts: Sequence[Path]) -> Iterator[pa.Table]:
    """The parts' rows in seq order, regrouped into tables of :data:`ROW_GROUP_ROWS` rows (the
    last may be smaller).

    Parts are sealed at every target commit, so their size follows ``--batch-size`` and how
    often a run was resumed; the published audit's row groups must not: thousands of tiny row
    groups make the file several times larger and every reader of it slower.
    """
    pending: list[pa.Table] = []
    count = 0
    for part in parts:
        for batch in batches(part):
            table = pa.Table.from_batches([batch]).cast(PART_SCHEMA)
            while table.num_rows:
                piece = table.slice(0, ROW_GROUP_ROWS - count)
                table = table.slice(piece.num_rows)
                pending.append(piece)
                count += piece.num_rows
                if count == ROW_GROUP_ROWS:
                    yield pa.concat_tables(pending).combine_chunks()
                    pending, count = [], 0
    if pending:
        yield pa.concat_tables(pending).combine_chunks()


def merge(
    parts: Sequence[Path], fields: Sequence[TypedField], finals: FinalOutcomes, sink: Output
) -> tuple[int, str, dict[str, int]]:
    """Write the sealed ``parts`` into ``sink`` in seq order, each row with its final outcome,
    its typed columns, its row hash and the chain; return the rows, the chain head and the
    count per outcome."""
    chain = CHAIN_SEED
    rows = 0
    counts: dict[str, int] = {}
    for group in row_groups(parts):
        table = finals.apply(group).drop_columns(list(PRIVATE_COLUMNS))
        for typed, array in zip(fields, typed_arrays(table, fields), strict=True):
            table = table.append_column(typed.field(), array)
        row_hashes, chain_hashes, chain = hash_rows(table, chain)
        table = table.append_column("row_hash", pa.array(row_hashes, pa.string()))
        table = table.append_column("chain_hash", pa.array(chain_hashes, pa.string()))
        sink.write(table)
        rows += table.num_rows
        for value in table.column("outcome").to_pylist():
            counts[value] = counts.get(value, 0) + 1
    return rows, chain, dict(sorted(counts.items()))
