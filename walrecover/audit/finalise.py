"""Closing the audit: the sealed parts in seq order, each applied change's final outcome,
the typed columns and the hash chain, merged into the published file or dataset.

Two outcomes are only known once later changes have been seen (``superseded``, ``removed``):
:class:`~walrecover.audit.supersede.FinalOutcomes` works them out columnar, in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .format import (
    BUFFER_ROWS,
    CHAIN_SEED,
    PART_SCHEMA,
    PRIVATE_COLUMNS,
    ROW_GROUP_ROWS,
    hash_rows,
)
from .outputs import Output
from .pgarrow import TypedField, typed_arrays
from .supersede import FinalOutcomes, batches

__all__ = ["FinalOutcomes", "batches", "merge", "row_groups"]


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
        table, chain = finished(group, fields, finals, chain)
        sink.write(table)
        rows += table.num_rows
        for item in pc.value_counts(table.column("outcome")).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        # Let go of this group before the next is read and finished: a row group held across
        # the next one's work was about 20 MiB of a recovery's peak RSS.
        del group, table
    return rows, chain, dict(sorted(counts.items()))


def finished(
    group: pa.Table, fields: Sequence[TypedField], finals: FinalOutcomes, chain: str
) -> tuple[pa.Table, str]:
    """A row group as published: final outcomes, typed columns, row and chain hashes (the
    chain continued from ``chain``); and the chain's new head."""
    table = finals.apply(group).drop_columns(list(PRIVATE_COLUMNS))
    # Typed columns and hashes slice by slice (:data:`BUFFER_ROWS`): the Python objects
    # they are made from stay small; the row group is written whole.
    typed: list[list[pa.Array]] = [[] for _ in fields]
    row_hashes: list[pa.Array] = []
    chain_hashes: list[pa.Array] = []
    for start in range(0, table.num_rows, BUFFER_ROWS):
        piece = table.slice(start, BUFFER_ROWS)
        for arrays, array in zip(typed, typed_arrays(piece, fields), strict=True):
            arrays.append(array)
        rows_of, chains_of, chain = hash_rows(piece, chain)
        row_hashes.append(pa.array(rows_of, pa.string()))
        chain_hashes.append(pa.array(chains_of, pa.string()))
    for field, arrays in zip(fields, typed, strict=True):
        table = table.append_column(field.field(), pa.chunked_array(arrays, field.arrow))
    table = table.append_column("row_hash", pa.chunked_array(row_hashes, pa.string()))
    table = table.append_column("chain_hash", pa.chunked_array(chain_hashes, pa.string()))
    return table, chain
