"""The Parquet audit's writer: one row per recovered row change, streamed in step with the
target's commits, then published whole.

What the rows hold, how they are typed and hashed: :mod:`walrecover.audit.format`. Where the
audit goes and what it may touch: :mod:`walrecover.audit.workspace`. How it is closed (final
outcomes, typed columns, the chain): :mod:`walrecover.audit.finalise`. Reading it back:
:mod:`walrecover.audit.reader`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..errors import AuditError
from ..rebuild.replay import AppliedChange
from ..stream.lsn import Lsn
from ..stream.model import Column, Relation
from . import safefiles
from .finalise import FinalOutcomes, merge
from .format import (
    AUDIT_FORMAT,
    BUFFER_ROWS,
    CHAIN_SEED,
    DATASET_MANIFEST,
    HASH_COLUMNS,
    MANIFEST_FORMAT,
    META_COLUMNS,
    PART_SCHEMA,
    ROW_GROUP_ROWS,
    column_json,
    column_of,
    sha256_of,
    typed_fields,
)
from .outputs import DatasetOutput, FileOutput, Output, write_manifest
from .parts import PartRows
from .workspace import (
    PART_FILES,
    RUN_FILE,
    Destination,
    clear_published,
    fsync_dir,
    part_lsn,
    part_number,
    remove_dataset,
    remove_work,
)

#: The part files' columns worth a dictionary.
PART_DICTIONARY: Final = ["commit_lsn", "xid", "commit_time", "op", "relation", "outcome"]


class AuditWriter:
    """Streams applied changes into Parquet, in step with the target's commits.

    Rows go into part files under ``PATH.parts/``; :meth:`commit` seals the current part (named
    with the commit LSN it belongs to) just before replay commits the same changes to the target.
    A killed run leaves sealed parts for what the target committed, and maybe one part the target
    never committed: :meth:`start` removes parts past the target's progress, so a resumed run
    continues exactly where the target did. Parts hold the exact text of each change; each part
    records the columns the stream had shown so far. :meth:`close` works out which applied
    changes were later superseded or removed (columnar, in buckets on disk, so memory stays
    bounded: :mod:`walrecover.audit.supersede`),
    then merges the parts in order into PATH (through ``PATH.partial``), adding the typed columns
    of every column the stream showed, each row's SHA-256 and the chained hash, and writes the
    manifest.

    ``partitioned=True`` makes PATH a directory holding a Hive-partitioned dataset by commit
    date instead of a single file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, Any],
        *,
        partitioned: bool = False,
        force: bool = False,
        protect: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.metadata = dict(metadata)
        owner = {"target": self.metadata.get("target"), "into": self.metadata.get("into")}
        self.dest = Destination(path, owner, partitioned=partitioned, force=force)
        self.partitioned = partitioned
        self.option = self.dest.option
        self.path = self.dest.path
        self.force = force
        self.partial = self.dest.partial
        self.parts = self.dest.parts
        self.manifest = self.dest.manifest
        self._publishing = False
        self.rows = 0
        #: After :meth:`close`: the chain head, the count per outcome, the manifest's SHA-256.
        self.chain_head = CHAIN_SEED
        self.outcome_counts: dict[str, int] = {}
        self.manifest_sha256: str | None = None
        self._part_index = 0
        self._writer: pq.ParquetWriter | None = None
        self._writer_file: BinaryIO | None = None
        self._open_files: list[Path] = []
        self._savepoint: tuple[int, int] | None = None
        #: The rows not yet written to the open part.
        self._maker = PartRows()
        #: The columns of the latest relation that showed the table whole, and every column
        #: the stream showed (latest definition of each), for the typed columns.
        self._latest: tuple[Column, ...] = ()
        self._seen: dict[str, Column] = {}
        self._relation: Relation | None = None
        #: start() ran: ``PATH.parts`` holds this run's bookkeeping.
        self._started = False
        self.dest.check([Path(p) for p in protect])

    def start(self, committed: Lsn | None, resuming: bool) -> None:
        """Keep the parts the target committed (up to ``committed``) when resuming; else none."""
        self._started = True
        if not resuming:
            if self.dest.replaces_resumed and not self.force:
                raise AuditError(
                    f"{self.option} {self.path} already exists and this recovery starts afresh:"
                    " give another path, or pass --force to replace it",
                    path=self.path,
                )
            # The run being replaced is this recovery's own (or --force discards it).
            for work in self.dest.stale:
                remove_work(work)
            self.dest.stale = []
            self.dest.run = None
        if safefiles.lstat(self.parts) is None:
            try:
                self.parts.mkdir()
            except OSError as exc:
                raise AuditError(f"cannot create {self.parts}: {exc}", path=self.path) from None
        kept = 0
        last: Path | None = None
        for name in sorted(os.listdir(self.parts)):
            part = self.parts / name
            upto = part_lsn(part)
            if name == RUN_FILE:
                continue
            if upto is None or committed is None or upto > committed or not resuming:
                if any(p.fullmatch(name) for p in PART_FILES):
                    safefiles.remove_file(part)
                continue
            kept += pq.ParquetFile(part).metadata.num_rows
            self._part_index = max(self._part_index, part_number(part) + 1)
            last = part
        self.rows = kept
        if last is not None:
            self._restore_columns(last)
        publishing = bool(self.dest.run and self.dest.run.get("publishing"))
        self.dest.write_run(publishing=publishing)

    def unpublished(self) -> Lsn | None:
        """The last commit LSN sealed in parts that were never merged into PATH, or None.

        A run killed after the target's last commit but before :meth:`close` published the
        audit leaves exactly that: a rerun can then ``start(lsn, resuming=True)`` and ``close``
        without replaying anything.
        """
        if not safefiles.is_dir(safefiles.lstat(self.parts)) or clear_published(self.parts):
            return None
        sealed = [lsn for p in self.parts.iterdir() if (lsn := part_lsn(p)) is not None]
        return max(sealed, default=None)

    def write(self, batch: Sequence[AppliedChange]) -> None:
        """Append a batch of applied changes to the open part."""
        maker = self._maker
        start, end = 0, len(batch)
        while start < end:
            stop = min(end, start + BUFFER_ROWS - len(maker))
            maker.add(batch[start:stop] if start or stop < end else batch, self._see)
            self.rows += stop - start
            start = stop
            if len(maker) >= BUFFER_ROWS:
                self._flush()

    def savepoint(self) -> None:
        """Rows from here on may be taken back (a transaction not yet known to be in)."""
        self._flush()
        self._close_part_file()
        self._savepoint = (self.rows, len(self._open_files))

    def rollback_to_savepoint(self) -> None:
        """Forget the rows written since :meth:`savepoint`."""
        if self._savepoint is None:
            return
        rows, files = self._savepoint
        self._maker.clear()
        self._close_part_file()
        for tmp in self._open_files[files:]:
            safefiles.remove_file(tmp)
        del self._open_files[files:]
        self.rows = rows
        self._savepoint = None

    def release_savepoint(self) -> None:
        """Keep the rows written since :meth:`savepoint`."""
        self._savepoint = None

    def commit(self, upto: Lsn | None) -> None:
        """Seal what was written as belonging to the target commit at ``upto``."""
        self._flush()
        self._close_part_file()
        if upto is None or not self._open_files:
            return
        for tmp in self._open_files:
            final = self.parts / f"part-{self._part_index:06d}-{int(upto):016X}.parquet"
            self._part_index += 1
            safefiles.fsync(tmp)
            os.replace(tmp, final)
        fsync_dir(self.parts)
        self._open_files.clear()

    # -- internals ---------------------------------------------------------------------------

    def _see(self, relation: Relation) -> None:
        """Remember the columns a change's relation shows (the latest definition wins)."""
        if relation is self._relation:
            return
        self._relation = relation
        if relation.complete and relation.columns:
            self._latest = relation.columns
        for column in relation.columns:
            self._seen[column.name] = column

    def _flush(self) -> None:
        if not len(self._maker):
            return
        if self._writer is None:
            tmp = self.parts / f"open-{self._part_index + len(self._open_files):06d}.tmp"
            try:
                self._writer_file = safefiles.create(tmp)
                self._writer = pq.ParquetWriter(
                    self._writer_file,
                    PART_SCHEMA,
                    compression="zstd",
                    # Per-transaction and few-valued columns only: dictionaries of unique
                    # values (images, LSNs, identities) cost time and save nothing.
                    use_dictionary=PART_DICTIONARY,
                )
            except OSError as exc:
                raise AuditError(f"cannot write the audit under {self.parts}: {exc}") from None
            self._open_files.append(tmp)
        try:
            table = self._maker.table(self.rows - len(self._maker))
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        except (pa.ArrowException, OSError) as exc:
            raise AuditError(f"writing the audit under {self.parts} failed: {exc}") from None

    def _close_part_file(self) -> None:
        if self._writer is not None:
            state = {
                "latest": [column_json(c) for c in self._latest],
                "seen": [column_json(c) for c in self._seen.values()],
            }
            self._writer.add_key_value_metadata({"walrecover.columns": json.dumps(state)})
            self._writer.close()
            self._writer = None
        if self._writer_file is not None:
            self._writer_file.close()
            self._writer_file = None

    def _restore_columns(self, part: Path) -> None:
        raw = (pq.ParquetFile(part).metadata.metadata or {}).get(b"walrecover.columns")
        if raw is None:
            return
        state = json.loads(raw)
        self._latest = tuple(column_of(c) for c in state["latest"])
        self._seen = {c[0]: column_of(c) for c in state["seen"]}

    def final_columns(self) -> tuple[Column, ...]:
        """The columns the typed images show: the table as last seen whole, then any column
        seen only before (dropped by an ALTER TABLE), each with its latest type."""
        names = {c.name for c in self._latest}
        first = [self._seen.get(c.name, c) for c in self._latest]
        return tuple(first + [c for name, c in self._seen.items() if name not in names])

    # -- the end -----------------------------------------------------------------------------

    def close(self, metadata: Mapping[str, Any] | None = None) -> int:
        """Finish: final outcomes, typed columns, row and chain hashes, the file or dataset,
        the manifest."""
        self._flush()
        self._close_part_file()
        # From here the work files beside PATH are this recovery's: a rerun may remove them.
        self.dest.write_run(publishing=True)
        self._publishing = True
        for work in self.dest.stale:
            remove_work(work)
        self.dest.stale = []
        parts = sorted(p for p in self.parts.iterdir() if part_lsn(p) is not None)
        columns = self.final_columns()
        fields = typed_fields(Relation("", "", columns))
        out_schema = pa.schema(
            [pa.field(name, type_) for name, type_ in META_COLUMNS]
            + [f.field() for f in fields]
            + [pa.field(name, pa.string()) for name in HASH_COLUMNS]
        )
        finals = FinalOutcomes(parts, self.parts)
        meta: dict[str, Any] = {
            **self.metadata,
            **(metadata or {}),
            "format": AUDIT_FORMAT,
            "tool": self.metadata.get("tool", f"walrecover {__version__}"),
            "chain_seed": CHAIN_SEED,
            "columns": [column_json(c) for c in columns],
        }
        sink: Output = (
            DatasetOutput(self.partial, out_schema, meta)
            if self.partitioned
            else FileOutput(self.partial, out_schema)
        )
        try:
            rows, chain, counts = merge(parts, fields, finals, sink)
            meta.update(rows=rows, outcomes=counts, chain_head=chain)
            manifest = self._manifest(sink.finish(meta), meta)
            if self.partitioned:
                # Inside the dataset before it moves into place: what is at PATH is whole.
                self.manifest_sha256 = write_manifest(self.partial / DATASET_MANIFEST, manifest)
        except BaseException:
            sink.discard()
            raise
        finally:
            finals.close()
        self._publish()
        if not self.partitioned:
            self.manifest_sha256 = write_manifest(self.manifest, manifest)
        # Published: a run killed while the parts are deleted must not publish the rest again.
        self.dest.write_run(publishing=True, published=True)
        left = safefiles.remove_own_files(self.parts, PART_FILES)
        if not left:
            safefiles.remove_dir_if_empty(self.parts)
        self.rows = rows
        self.chain_head = chain
        self.outcome_counts = counts
        return rows

    def _manifest(self, files: list[dict[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's content: each written file with its SHA-256, the counts, the chain."""
        return {
            "format": MANIFEST_FORMAT,
            "layout": "hive" if self.partitioned else "file",
            "audit": self.path.name,
            "rows": meta["rows"],
            "chain_seed": CHAIN_SEED,
            "chain_head": meta["chain_head"],
            "outcomes": meta["outcomes"],
            "files": [
                {
                    **entry,
                    "sha256": sha256_of(
                        self.partial / entry["path"] if self.partitioned else self.partial
                    ),
                }
                for entry in files
            ],
            "metadata": meta,
        }

    def _publish(self) -> None:
        """Move the finished ``.partial`` file or directory into place."""
        if not self.partitioned:
            safefiles.fsync(self.partial)
            os.replace(self.partial, self.path)
            fsync_dir(self.path.parent)
            return
        info = safefiles.lstat(self.path)
        if safefiles.is_dir(info) and os.listdir(self.path):
            # A walrecover audit (checked when the writer was made): out of the way first.
            os.replace(self.path, self.dest.old)
        os.replace(self.partial, self.path)
        fsync_dir(self.path.parent)
        remove_dataset(self.dest.old)

    def abort(self) -> Path | None:
        """Stop after a failure: keep sealed parts (a rerun resumes), drop unsealed rows.

        Returns ``PATH.parts`` if it holds work a rerun resumes. When nothing was sealed (and
        publishing had not begun), this run's own bookkeeping is removed with the directory,
        so a failed run leaves nothing behind.
        """
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        with contextlib.suppress(Exception):
            if self._writer_file is not None:
                self._writer_file.close()
        self._writer = None
        self._writer_file = None
        for tmp in self._open_files:
            safefiles.remove_file(tmp)
        self._open_files.clear()
        if self._publishing:
            remove_work(self.partial)
            return self.parts
        # Before publishing, PATH.partial, if any, belongs to another run (one refused by the
        # lock), and PATH.parts is this run's only once start() made it its own.
        if not self._started or not safefiles.is_dir(safefiles.lstat(self.parts)):
            return None
        if self.unpublished() is not None or (self.dest.run or {}).get("publishing"):
            return self.parts
        safefiles.remove_own_files(self.parts, PART_FILES)
        safefiles.remove_dir_if_empty(self.parts)
        return None
