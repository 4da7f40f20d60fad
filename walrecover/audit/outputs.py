"""Where the audit's merge pass writes: one Parquet file, or a Hive-partitioned dataset by
commit date; and the manifest beside it.

Both are built under ``PATH.partial`` (see :mod:`walrecover.audit.workspace`) and moved into
place by the writer once whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import AuditError
from . import safefiles
from .format import DATASET_FILE_ROWS, NO_DATE, PARTITION, ROW_GROUP_ROWS
from .workspace import remove_dataset

#: The published columns worth a dictionary: per transaction or few-valued. Dictionaries of
#: unique values (images, LSNs, keys, hashes, most typed columns) cost the write a third of
#: its time and made the file larger than zstd over the plain values (bench/close_bench.py).
DICTIONARY_COLUMNS: Final = ["commit_lsn", "xid", "commit_time", "op", "relation", "outcome"]


def parquet_writer(sink: BinaryIO, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer of the audit: zstd, dictionaries only for :data:`DICTIONARY_COLUMNS`."""
    return pq.ParquetWriter(
        sink,
        schema,
        compression="zstd",
        use_dictionary=[name for name in DICTIONARY_COLUMNS if name in schema.names],
    )


class Output:
    """Where the merge pass writes: a single file, or a partitioned dataset."""

    def write(self, table: pa.Table) -> None:
        """Append a batch of finished rows (in seq order)."""
        raise NotImplementedError

    def finish(self, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Close everything; return the manifest's file entries (without checksums)."""
        raise NotImplementedError

    def discard(self) -> None:
        """Remove what was written (the merge failed)."""
        raise NotImplementedError


def _kv(meta: Mapping[str, Any]) -> dict[str, str]:
    """Run metadata as Parquet key-value metadata: ``walrecover.<name>`` -> JSON."""
    return {f"walrecover.{k}": json.dumps(v, default=str) for k, v in meta.items()}


class FileOutput(Output):
    """A single Parquet file, its run metadata in the footer."""

    def __init__(self, partial: Path, schema: pa.Schema) -> None:
        self.partial = partial
        self.rows = 0
        try:
            self.file = safefiles.create(partial)
        except OSError as exc:
            raise AuditError(f"cannot write the audit {partial}: {exc}") from None
        self.writer = parquet_writer(self.file, schema)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def finish(self, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.writer.add_key_value_metadata(_kv(meta))
        self.writer.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        last = self.rows - 1
        return [
            {
                "path": self.partial.name.removesuffix(".partial"),
                "rows": self.rows,
                "first_seq": 0 if self.rows else None,
                "last_seq": last if self.rows else None,
            }
        ]

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.file.close()
        safefiles.remove_file(self.partial)


class DatasetOutput(Output):
    """Hive partitions by commit date (UTC); each file holds a run of consecutive seqs."""

    def __init__(self, root: Path, schema: pa.Schema, meta: Mapping[str, Any]) -> None:
        try:
            root.mkdir()  # fails if anything, even a dangling link, is there
        except OSError as exc:
            raise AuditError(f"cannot create the audit directory {root}: {exc}") from None
        self.root = root
        self.schema = schema
        self.meta = dict(meta)
        self.files: list[dict[str, Any]] = []
        self.writer: pq.ParquetWriter | None = None
        self.file: BinaryIO | None = None
        self.current: dict[str, Any] | None = None
        self.number = 0

    def write(self, table: pa.Table) -> None:
        times = table.column("commit_time").to_pylist()
        labels = [NO_DATE if t is None else t.date().isoformat() for t in times]
        start = 0
        while start < len(labels):
            label = labels[start]
            end = start
            while end < len(labels) and labels[end] == label:
                end += 1
            self._write_run(label, table.slice(start, end - start))
            start = end

    def _write_run(self, label: str, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            current = self.current
            if (
                current is None
                or current["partition"] != label
                or current["rows"] >= DATASET_FILE_ROWS
            ):
                self._close_file()
                current = self._open_file(label)
            room = DATASET_FILE_ROWS - current["rows"]
            piece = table.slice(offset, room)
            assert self.writer is not None
            self.writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)
            seqs = piece.column("seq")
            chains = piece.column("chain_hash")
            if current["first_seq"] is None:
                current["first_seq"] = seqs[0].as_py()
            current["last_seq"] = seqs[-1].as_py()
            current["chain_head"] = chains[-1].as_py()
            current["rows"] += piece.num_rows
            offset += piece.num_rows

    def _open_file(self, label: str) -> dict[str, Any]:
        directory = self.root / f"{PARTITION}={label}"
        relative = f"{PARTITION}={label}/part-{self.number:06d}.parquet"
        self.number += 1
        try:
            if safefiles.lstat(directory) is None:
                directory.mkdir()
            elif not safefiles.is_dir(safefiles.lstat(directory)):
                raise FileExistsError(f"{directory} is not a directory walrecover made")
            self.file = safefiles.create(self.root / relative)
        except OSError as exc:
            raise AuditError(f"cannot write the audit {self.root / relative}: {exc}") from None
        self.writer = parquet_writer(self.file, self.schema)
        self.current = {
            "path": relative,
            "partition": label,
            "rows": 0,
            "first_seq": None,
            "last_seq": None,
            "chain_head": None,
        }
        return self.current

    def _close_file(self) -> None:
        if self.writer is None or self.current is None:
            return
        entry = self.current
        file_meta = {
            **self.meta,
            "file_rows": entry["rows"],
            "first_seq": entry["first_seq"],
            "last_seq": entry["last_seq"],
            "file_chain_head": entry["chain_head"],
        }
        self.writer.add_key_value_metadata(_kv(file_meta))
        self.writer.close()
        self.writer = None
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
        self.files.append({k: v for k, v in entry.items() if k != "partition"})
        self.current = None

    def finish(self, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        self._close_file()
        return self.files

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self.writer is not None:
                self.writer.close()
        with contextlib.suppress(Exception):
            if self.file is not None:
                self.file.close()
        remove_dataset(self.root)


def write_manifest(path: Path, content: Mapping[str, Any]) -> str:
    """Write the manifest exclusively through ``PATH.tmp``; return its SHA-256."""
    data = (json.dumps(content, indent=2, default=str, ensure_ascii=False) + "\n").encode()
    tmp = path.with_name(path.name + ".tmp")
    try:
        safefiles.write_new(tmp, data)  # exclusively: a stale one was removed, or refused
    except OSError as exc:
        raise AuditError(f"cannot write the manifest {path}: {exc}", path=str(path)) from None
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()
