"""The Parquet audit: one row per recovered row change, tamper-evident, typed, streamed.

Each row carries where the change came from (``seq``, commit LSN, change LSN, xid, commit time),
what it was (op, relation, key), what became of it (``outcome``, see
:mod:`walrecover.audit.outcomes`), the exact canonical text of both images as JSON (``new_values``,
``old_values``: lossless, whatever the type), and both images again as typed Arrow columns
(``new_<column>``, ``old_<column>``) for pandas, DuckDB and Spark:

=================================  ============================================================
PostgreSQL                         Arrow
=================================  ============================================================
smallint, integer, bigint, oid     int16, int32, int64, int64
numeric(p, s), p <= 38, 0<=s<=p    decimal128(p, s)
numeric, numeric(p > 38, s)        string: the exact text (no Arrow decimal holds every value)
real, double precision             float32, float64
boolean                            bool
bytea                              binary
date                               date32
time                               time64[us]
timestamp                          timestamp[us]
timestamptz                        timestamp[us, UTC]
interval                           struct<months int32, days int32, microseconds int64>
X[] (one dimension)                list<the type of X>
text, varchar, char, uuid, json,   string (uuid: Spark cannot read Parquet's UUID type; JSON is
jsonb, timetz, inet, enums, ...    text anyway)
=================================  ============================================================

A value a typed column cannot hold (``infinity``, numeric ``NaN``, a year past 9999, a
multi-dimensional array) is NULL there and exact in ``new_values``/``old_values``. Every typed
field carries its PostgreSQL type in the field metadata (``walrecover.pg_type``).

Tamper evidence: ``row_hash`` is the SHA-256 of the row's canonical content (the JSON array of
the columns in :data:`HASHED`, see :func:`hash_rows`) and ``chain_hash`` chains them in ``seq``
order from :data:`CHAIN_SEED`, so an edited, deleted or reordered row breaks the chain;
:func:`verify_audit` recomputes everything, checks that every typed value is the one its exact
text gives, and names the first bad row. A manifest (JSON) beside the audit records each file's
SHA-256, the row count and the chain head.

Layouts: a single file (``--audit PATH``, manifest ``PATH.manifest.json``), or a Hive-partitioned
dataset by commit date (``--audit-dir DIR``: ``DIR/commit_date=2024-05-01/part-000000.parquet``,
manifest ``DIR/_manifest.json``, ignored by readers as an underscore file) that pandas, pyarrow,
DuckDB and Spark read as one table. Either is built beside its final place (``PATH.partial``) and
renamed when complete, so what is at PATH is always whole.

Files: the audit never replaces anything without ``force`` except the audit of the unfinished
recovery it resumes (its bookkeeping, ``PATH.parts/walrecover-run.json``, names the target it
belongs to and whether publishing began), never writes over the capture it reads, creates every
work file exclusively without following a symlink, and deletes only files it wrote
(:mod:`walrecover.audit.safefiles`). Every refusal happens when the writer is made, before any row.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .. import __version__
from ..errors import AuditError
from ..rebuild.replay import AppliedChange
from ..stream.lsn import Lsn
from ..stream.model import Column, Op, Relation, Values
from . import outcomes, safefiles
from .pgarrow import INTERVAL_TYPE, TypedField, arrow_type, typed_arrays

#: Rows per Parquet row group (and per batch in the merge and verify passes).
ROW_GROUP_ROWS = 65_536
#: Rows per file of a partitioned dataset, at most.
DATASET_FILE_ROWS = 1_000_000
#: What this module writes; kept in the metadata and the manifest.
AUDIT_FORMAT: Final = "walrecover-audit/2"
MANIFEST_FORMAT: Final = "walrecover-audit-manifest/1"
#: The manifest of a partitioned dataset, inside it (underscore files are hidden from readers).
DATASET_MANIFEST: Final = "_manifest.json"
PARTITION: Final = "commit_date"
#: The partition of rows without a commit time. Not Hive's ``__HIVE_DEFAULT_PARTITION__``:
#: pandas cannot read a dataset whose partition column has NULLs in some files.
NO_DATE: Final = "unknown"
#: The bookkeeping file in ``PATH.parts``: which recovery the parts belong to, and whether
#: publishing began (then ``PATH.partial`` and the other work files beside PATH are its own).
RUN_FILE: Final = "walrecover-run.json"
RUN_FORMAT: Final = "walrecover-audit-run/1"
#: The names walrecover gives the files in ``PATH.parts``.
_PART_FILES: Final = (
    re.compile(r"part-\d{6,}-[0-9A-F]{16}\.parquet"),
    re.compile(r"open-\d{6,}\.tmp"),
    re.compile(r"outcomes\.sqlite"),
    re.compile(re.escape(RUN_FILE) + r"(\.tmp)?"),
)
#: The names walrecover gives the files and directories of a partitioned audit.
_PARTITION_DIR: Final = re.compile(r"commit_date=[0-9A-Za-z_-]+")
_DATASET_PART: Final = re.compile(r"part-\d{6,}\.parquet")
_DATASET_FILES: Final = (re.compile(r"_manifest\.json(\.tmp)?"),)
#: Rows per batch when verifying (each batch's values become Python objects).
VERIFY_BATCH_ROWS = 16_384
#: How many problems :func:`verify_audit` reports word for word (it counts all of them).
PROBLEM_LIMIT = 20

META_COLUMNS: Final[tuple[tuple[str, pa.DataType], ...]] = (
    ("seq", pa.int64()),
    ("commit_lsn", pa.string()),
    ("lsn", pa.string()),
    ("xid", pa.int64()),
    ("commit_time", pa.timestamp("us", tz="UTC")),
    ("op", pa.string()),
    ("relation", pa.string()),
    ("key", pa.string()),
    ("outcome", pa.string()),
    ("new_values", pa.string()),
    ("old_values", pa.string()),
)
#: Columns that only live in the part files: each row's identity before and after its change,
#: for working out ``superseded`` and ``removed`` when the audit closes.
_PRIVATE: Final = ("_before_identity", "_after_identity")
HASH_COLUMNS: Final = ("row_hash", "chain_hash")


def typed_fields(relation: Relation) -> list[TypedField]:
    """The typed columns for a relation: ``new_<column>`` for each column, then ``old_``."""
    taken = {name for name, _ in META_COLUMNS} | set(HASH_COLUMNS) | set(_PRIVATE)
    fields: list[TypedField] = []
    for image in ("new", "old"):
        for column in relation.columns:
            name = f"{image}_{column.name}"
            while name in taken:  # a table column called "values" would clash with new_values
                name += "_"
            taken.add(name)
            arrow, convert = arrow_type(column)
            fields.append(TypedField(name, column.name, image, column.type_name, arrow, convert))
    return fields


def audit_schema(relation: Relation) -> pa.Schema:
    """The audit's Arrow schema for one relation (without the two hash columns)."""
    fields = [pa.field(name, type_) for name, type_ in META_COLUMNS]
    fields += [f.field() for f in typed_fields(relation)]
    return pa.schema(fields)


#: The part files hold the exact text only; typed columns are derived when the audit closes,
#: from every column the stream showed (so a truncate first, or an ALTER TABLE, loses none).
PART_SCHEMA: Final = pa.schema(
    [pa.field(name, type_) for name, type_ in META_COLUMNS]
    + [pa.field(name, pa.string()) for name in _PRIVATE]
)


#: Encoders made once: ``json.dumps`` with options builds a new encoder on every call.
_encode = json.JSONEncoder(ensure_ascii=False).encode
_encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json(values: Values | None) -> str | None:
    return None if values is None else _encode(dict(values))


def _identity(change_key: tuple[str | None, ...] | None) -> str | None:
    return None if change_key is None else _encode(list(change_key))


def _row_identity(values: Values | None, relation: Relation) -> str | None:
    """A keyless table's row identity: the whole row, when the image carries every column."""
    if values is None or not relation.columns:
        return None
    names = relation.column_names
    if any(name not in values for name in names):
        return None
    return _encode([values[name] for name in names])


# -- the writer ----------------------------------------------------------------------------------


class AuditWriter:
    """Streams applied changes into Parquet, in step with the target's commits.

    Rows go into part files under ``PATH.parts/``; :meth:`commit` seals the current part (named
    with the commit LSN it belongs to) just before replay commits the same changes to the target.
    A killed run leaves sealed parts for what the target committed, and maybe one part the target
    never committed: :meth:`start` removes parts past the target's progress, so a resumed run
    continues exactly where the target did. Parts hold the exact text of each change; each part
    records the columns the stream had shown so far. :meth:`close` works out which applied
    changes were later superseded or removed (an on-disk SQLite index, so memory stays bounded),
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
        self.partitioned = partitioned
        self.option = "--audit-dir" if partitioned else "--audit"
        self.path = _audit_path(path, self.option, partitioned)
        self.force = force
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._publishing = False
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.manifest = manifest_path(self.path, partitioned)
        #: Where a replaced partitioned audit is moved while the new one takes its place.
        self.old = self.path.with_name(self.path.name + ".old")
        self.metadata = dict(metadata)
        #: Which recovery the parts belong to (the bookkeeping compares it on a rerun).
        self.owner = {"target": self.metadata.get("target"), "into": self.metadata.get("into")}
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
        self._columns: dict[str, list[Any]] = {name: [] for name in PART_SCHEMA.names}
        #: The columns of the latest relation that showed the table whole, and every column
        #: the stream showed (latest definition of each), for the typed columns.
        self._latest: tuple[Column, ...] = ()
        self._seen: dict[str, Column] = {}
        self._relation: Relation | None = None
        #: The bookkeeping of an earlier run found in ``PATH.parts`` (None: no earlier run).
        self._run: dict[str, Any] | None = None
        #: Work files beside PATH left by the run this one resumes (removed before publishing).
        self._stale: list[Path] = []
        #: PATH exists and may be replaced only because the run this one resumes replaced it.
        self._replaces_resumed = False
        #: start() ran: ``PATH.parts`` holds this run's bookkeeping.
        self._started = False
        self._check_destination([Path(p) for p in protect])

    def _check_destination(self, protect: list[Path]) -> None:
        """Refuse, before anything is written, every path the audit must not touch."""
        path, option = self.path, self.option
        if not safefiles.is_dir(safefiles.lstat(path.parent)):
            raise AuditError(
                f"the directory of {option} {path} does not exist: create it first", path=path
            )
        for source in protect:
            if _same_file(source, path) or (
                not self.partitioned
                and (_same_file(source, self.manifest) or _same_file(source, self.partial))
            ):
                raise AuditError(
                    f"{option} {path} is the capture file being read (--from-file): give the "
                    "audit another path",
                    path=path,
                )
            if self.partitioned and _inside(source, path):
                raise AuditError(
                    f"{option} {path} holds the capture file being read ({source}): give the "
                    "audit a directory of its own",
                    path=path,
                )
        ours = self._check_parts()
        # Work files beside PATH: the run this one resumes may have left them while publishing;
        # anything else there is not walrecover's to remove or overwrite.
        beside = [(self.partial, self.partitioned)]  # (path, a directory)
        if self.partitioned:
            beside.append((self.old, True))
        else:
            beside.append((self.manifest.with_name(self.manifest.name + ".tmp"), False))
        for work, directory in beside:
            info = safefiles.lstat(work)
            if info is None:
                continue
            kind_ok = safefiles.is_dir(info) if directory else safefiles.is_file(info)
            if not (ours and kind_ok):
                raise AuditError(
                    f"{work} exists and walrecover did not leave it there for this recovery: "
                    "move it away (walrecover works under that name and will not overwrite, "
                    "follow or delete what it did not write)",
                    path=path,
                )
            self._stale.append(work)
        self._check_existing(ours)

    def _check_parts(self) -> bool:
        """Check ``PATH.parts``; True if it is the bookkeeping of an earlier run that had begun
        publishing (its work files beside PATH are then its own), a run of this same recovery
        or one that ``force`` discards."""
        parts = self.parts
        info = safefiles.lstat(parts)
        if info is None:
            return False
        if safefiles.is_symlink(info) or not safefiles.is_dir(info):
            raise AuditError(
                f"{parts} exists and is not a directory walrecover made (a symbolic link or a "
                "file): walrecover keeps the audit's work files there and will not follow or "
                "replace it; move it away",
                path=self.path,
            )
        foreign = safefiles.foreign_entries(parts, _PART_FILES)
        if not foreign and clear_published(parts):
            return False
        run = _read_run(parts / RUN_FILE)
        if foreign or (run is None and os.listdir(parts)):
            named = ", ".join(foreign[:3]) if foreign else "files without walrecover's record"
            raise AuditError(
                f"{parts} holds files walrecover did not write ({named}): move them away; "
                "walrecover deletes only its own work files",
                path=self.path,
            )
        if run is None:
            return False
        if run.get("owner") != self.owner and not self.force:
            owner = run.get("owner") or {}
            raise AuditError(
                f"{parts} holds the unfinished audit of the recovery into {owner.get('into')} "
                f"on {owner.get('target')}: rerun that recovery to finish it, pass --force to "
                f"discard it, or give another {self.option}",
                path=self.path,
            )
        self._run = run
        return bool(run.get("publishing"))

    def _check_existing(self, ours: bool) -> None:
        """PATH itself: replaced only with ``force``, or when the resumed run replaced it."""
        path, option = self.path, self.option
        info = safefiles.lstat(path)
        if self.partitioned:
            if info is None:
                return
            if safefiles.is_symlink(info):
                raise AuditError(
                    f"{option} {path} is a symbolic link: give the directory itself", path=path
                )
            if not safefiles.is_dir(info):
                raise AuditError(f"{option} {path} is a file: give a directory", path=path)
            if not os.listdir(path):
                return  # an empty directory: nothing to keep
            if not safefiles.is_file(safefiles.lstat(path / DATASET_MANIFEST)):
                raise AuditError(
                    f"{option} {path} is not empty and holds no walrecover audit: give a new "
                    "or empty directory",
                    path=path,
                )
            foreign = _foreign_in_dataset(path)
            if foreign:
                raise AuditError(
                    f"{option} {path} holds {', '.join(foreign[:3])}, which walrecover did not "
                    "write: move it away or give another directory (walrecover replaces only "
                    "the audit it wrote)",
                    path=path,
                )
            existing = "holds a walrecover audit"
        else:
            if safefiles.is_dir(info):
                raise AuditError(f"{option} {path} is a directory: give a file path", path=path)
            manifest = safefiles.lstat(self.manifest)
            if info is None and manifest is None:
                return
            if safefiles.is_dir(manifest):
                raise AuditError(
                    f"{self.manifest} (where the audit's manifest goes) is a directory: "
                    f"give another {option}",
                    path=path,
                )
            existing = "already exists" if info is not None else "has a manifest beside it"
        if ours:
            self._replaces_resumed = True
            return
        if not self.force:
            raise AuditError(
                f"{option} {path} {existing}: give another path, or pass --force to replace it",
                path=path,
            )

    # -- lifecycle driven by replay ----------------------------------------------------------

    def start(self, committed: Lsn | None, resuming: bool) -> None:
        """Keep the parts the target committed (up to ``committed``) when resuming; else none."""
        self._started = True
        if not resuming:
            if self._replaces_resumed and not self.force:
                raise AuditError(
                    f"{self.option} {self.path} already exists and this recovery starts afresh:"
                    " give another path, or pass --force to replace it",
                    path=self.path,
                )
            # The run being replaced is this recovery's own (or --force discards it).
            for work in self._stale:
                _remove_work(work)
            self._stale = []
            self._run = None
        if safefiles.lstat(self.parts) is None:
            try:
                self.parts.mkdir()
            except OSError as exc:
                raise AuditError(f"cannot create {self.parts}: {exc}", path=self.path) from None
        kept = 0
        last: Path | None = None
        for name in sorted(os.listdir(self.parts)):
            part = self.parts / name
            upto = _part_lsn(part)
            if name == RUN_FILE:
                continue
            if upto is None or committed is None or upto > committed or not resuming:
                if any(p.fullmatch(name) for p in _PART_FILES):
                    safefiles.remove_file(part)
                continue
            kept += pq.ParquetFile(part).metadata.num_rows
            self._part_index = max(self._part_index, _part_number(part) + 1)
            last = part
        self.rows = kept
        if last is not None:
            self._restore_columns(last)
        publishing = bool(self._run and self._run.get("publishing"))
        self._write_run(publishing=publishing)

    def _write_run(self, *, publishing: bool, published: bool = False) -> None:
        """Record in ``PATH.parts`` whose parts these are, whether publishing began, and
        whether it ended (the parts left are then only waiting to be deleted)."""
        content = {
            "format": RUN_FORMAT,
            "audit": str(Path(os.path.abspath(self.path))),
            "owner": self.owner,
            "publishing": publishing,
            "published": published,
        }
        run = self.parts / RUN_FILE
        tmp = run.with_name(RUN_FILE + ".tmp")
        safefiles.remove_file(tmp)
        try:
            safefiles.write_new(tmp, (json.dumps(content) + "\n").encode())
            os.replace(tmp, run)
        except OSError as exc:
            raise AuditError(f"cannot write {run}: {exc}", path=self.path) from None
        _fsync_dir(self.parts)
        self._run = content

    def unpublished(self) -> Lsn | None:
        """The last commit LSN sealed in parts that were never merged into PATH, or None.

        A run killed after the target's last commit but before :meth:`close` published the
        audit leaves exactly that: a rerun can then ``start(lsn, resuming=True)`` and ``close``
        without replaying anything.
        """
        if not safefiles.is_dir(safefiles.lstat(self.parts)) or clear_published(self.parts):
            return None
        sealed = [lsn for p in self.parts.iterdir() if (lsn := _part_lsn(p)) is not None]
        return max(sealed, default=None)

    def write(self, batch: Sequence[AppliedChange]) -> None:
        """Append a batch of applied changes to the open part."""
        for applied in batch:
            self._append(applied)

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
        self._columns = {name: [] for name in PART_SCHEMA.names}
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
        _fsync_dir(self.parts)
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

    def _append(self, applied: AppliedChange) -> None:
        change = applied.change
        relation = change.relation
        self._see(relation)
        cols = self._columns
        cols["seq"].append(self.rows)
        cols["commit_lsn"].append(str(applied.commit_lsn) if applied.commit_lsn else None)
        cols["lsn"].append(str(change.lsn) if change.lsn is not None else None)
        cols["xid"].append(applied.xid)
        cols["commit_time"].append(applied.commit_time)
        cols["op"].append(change.op.value)
        cols["relation"].append(relation.qualified_name)
        key = change.key()
        cols["key"].append(
            _encode(dict(zip(relation.key_columns, key, strict=True))) if key is not None else None
        )
        cols["outcome"].append(str(applied.outcome.value))
        after = applied.after if applied.after is not None else change.new
        before = change.old
        cols["new_values"].append(_json(after))
        cols["old_values"].append(_json(before))
        op = change.op
        if relation.key_columns:
            cols["_before_identity"].append(
                _identity(key) if op in (Op.UPDATE, Op.DELETE) else None
            )
            cols["_after_identity"].append(
                _identity(change.new_key()) if op in (Op.INSERT, Op.UPDATE) else None
            )
        else:
            cols["_before_identity"].append(
                _row_identity(before, relation) if op in (Op.UPDATE, Op.DELETE) else None
            )
            cols["_after_identity"].append(
                _row_identity(after, relation) if op in (Op.INSERT, Op.UPDATE) else None
            )
        self.rows += 1
        if len(cols["seq"]) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._columns["seq"]:
            return
        if self._writer is None:
            tmp = self.parts / f"open-{self._part_index + len(self._open_files):06d}.tmp"
            try:
                self._writer_file = safefiles.create(tmp)
                self._writer = pq.ParquetWriter(self._writer_file, PART_SCHEMA, compression="zstd")
            except OSError as exc:
                raise AuditError(f"cannot write the audit under {self.parts}: {exc}") from None
            self._open_files.append(tmp)
        try:
            table = pa.Table.from_pydict(self._columns, schema=PART_SCHEMA)
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        except (pa.ArrowException, OSError) as exc:
            raise AuditError(f"writing the audit under {self.parts} failed: {exc}") from None
        self._columns = {name: [] for name in PART_SCHEMA.names}

    def _close_part_file(self) -> None:
        if self._writer is not None:
            state = {
                "latest": [_column_json(c) for c in self._latest],
                "seen": [_column_json(c) for c in self._seen.values()],
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
        self._latest = tuple(_column_of(c) for c in state["latest"])
        self._seen = {c[0]: _column_of(c) for c in state["seen"]}

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
        self._write_run(publishing=True)
        self._publishing = True
        for work in self._stale:
            _remove_work(work)
        self._stale = []
        parts = sorted(p for p in self.parts.iterdir() if _part_lsn(p) is not None)
        columns = self.final_columns()
        fields = typed_fields(Relation("", "", columns))
        out_schema = pa.schema(
            [pa.field(name, type_) for name, type_ in META_COLUMNS]
            + [f.field() for f in fields]
            + [pa.field(name, pa.string()) for name in HASH_COLUMNS]
        )
        finals = _FinalOutcomes(parts, self.parts / "outcomes.sqlite")
        meta: dict[str, Any] = {
            **self.metadata,
            **(metadata or {}),
            "format": AUDIT_FORMAT,
            "tool": self.metadata.get("tool", f"walrecover {__version__}"),
            "chain_seed": CHAIN_SEED,
            "columns": [_column_json(c) for c in columns],
        }
        sink: _Output = (
            _DatasetOutput(self.partial, out_schema, meta)
            if self.partitioned
            else _FileOutput(self.partial, out_schema)
        )
        chain = CHAIN_SEED
        rows = 0
        counts: dict[str, int] = {}
        try:
            for group in _row_groups(parts):
                table = finals.apply(group).drop_columns(list(_PRIVATE))
                for typed, array in zip(fields, typed_arrays(table, fields), strict=True):
                    table = table.append_column(typed.field(), array)
                row_hashes, chain_hashes, chain = hash_rows(table, chain)
                table = table.append_column("row_hash", pa.array(row_hashes, pa.string()))
                table = table.append_column("chain_hash", pa.array(chain_hashes, pa.string()))
                sink.write(table)
                rows += table.num_rows
                for value in table.column("outcome").to_pylist():
                    counts[value] = counts.get(value, 0) + 1
            counts = dict(sorted(counts.items()))
            meta.update(rows=rows, outcomes=counts, chain_head=chain)
            files = sink.finish(meta)
            manifest = {
                "format": MANIFEST_FORMAT,
                "layout": "hive" if self.partitioned else "file",
                "audit": self.path.name,
                "rows": rows,
                "chain_seed": CHAIN_SEED,
                "chain_head": chain,
                "outcomes": counts,
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
            if self.partitioned:
                # Inside the dataset before it moves into place: what is at PATH is whole.
                self.manifest_sha256 = _write_manifest(self.partial / DATASET_MANIFEST, manifest)
        except BaseException:
            sink.discard()
            raise
        finally:
            finals.close()
        self._publish()
        if not self.partitioned:
            self.manifest_sha256 = _write_manifest(self.manifest, manifest)
        # Published: a run killed while the parts are deleted must not publish the rest again.
        self._write_run(publishing=True, published=True)
        left = safefiles.remove_own_files(self.parts, _PART_FILES)
        if not left:
            safefiles.remove_dir_if_empty(self.parts)
        self.rows = rows
        self.chain_head = chain
        self.outcome_counts = counts
        return rows

    def _publish(self) -> None:
        """Move the finished ``.partial`` file or directory into place."""
        if not self.partitioned:
            safefiles.fsync(self.partial)
            os.replace(self.partial, self.path)
            _fsync_dir(self.path.parent)
            return
        info = safefiles.lstat(self.path)
        if safefiles.is_dir(info) and os.listdir(self.path):
            # A walrecover audit (checked when the writer was made): out of the way first.
            os.replace(self.path, self.old)
        os.replace(self.partial, self.path)
        _fsync_dir(self.path.parent)
        _remove_dataset(self.old)

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
            _remove_work(self.partial)
            return self.parts
        # Before publishing, PATH.partial, if any, belongs to another run (one refused by the
        # lock), and PATH.parts is this run's only once start() made it its own.
        if not self._started or not safefiles.is_dir(safefiles.lstat(self.parts)):
            return None
        if self.unpublished() is not None or (self._run or {}).get("publishing"):
            return self.parts
        safefiles.remove_own_files(self.parts, _PART_FILES)
        safefiles.remove_dir_if_empty(self.parts)
        return None


def _column_json(column: Column) -> list[Any]:
    return [column.name, column.type_name, column.is_key]


def _column_of(item: Sequence[Any]) -> Column:
    return Column(str(item[0]), str(item[1]), is_key=bool(item[2]))


class _FinalOutcomes:
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
        wanted = ["seq", "op", "outcome", *_PRIVATE]
        for part in parts:
            for batch in _batches(part, columns=wanted):
                events: list[tuple[str, int, int, str]] = []
                data = batch.to_pydict()
                for seq, op, outcome, before, after in zip(
                    data["seq"],
                    data["op"],
                    data["outcome"],
                    data["_before_identity"],
                    data["_after_identity"],
                    strict=True,
                ):
                    if outcome != outcomes.APPLIED:
                        continue
                    if op == "truncate":
                        self.truncates.append(seq)
                    if before is not None:
                        events.append((before, seq, 0, op))
                    if after is not None:
                        events.append((after, seq, 1, op))
                self.db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?)", events)
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
        self._pending: tuple[int, str, int] | None = self._cursor.fetchone()

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
                self._pending = self._cursor.fetchone()
            if values[i] != outcomes.APPLIED or ops[i] not in outcomes.LIVE_OPS:
                continue
            cut = self._next_truncate(seq)
            final = None
            if self._pending is not None and self._pending[0] == seq:
                _, next_op, next_seq = self._pending
                if cut is not None and cut < next_seq:
                    final = outcomes.REMOVED
                else:
                    final = outcomes.REMOVED if next_op == "delete" else outcomes.SUPERSEDED
            elif cut is not None:
                final = outcomes.REMOVED
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


# -- outputs -------------------------------------------------------------------------------------


class _Output:
    """Where the merge pass writes: a single file, or a partitioned dataset."""

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def finish(self, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Close everything; return the manifest's file entries (without checksums)."""
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


def _kv(meta: Mapping[str, Any]) -> dict[str, str]:
    return {f"walrecover.{k}": json.dumps(v, default=str) for k, v in meta.items()}


class _FileOutput(_Output):
    def __init__(self, partial: Path, schema: pa.Schema) -> None:
        self.partial = partial
        self.rows = 0
        try:
            self.file = safefiles.create(partial)
        except OSError as exc:
            raise AuditError(f"cannot write the audit {partial}: {exc}") from None
        self.writer = pq.ParquetWriter(self.file, schema, compression="zstd")

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


class _DatasetOutput(_Output):
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
        self.writer = pq.ParquetWriter(self.file, self.schema, compression="zstd")
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
        _remove_dataset(self.root)


def manifest_path(path: str | os.PathLike[str], partitioned: bool | None = None) -> Path:
    """Where the manifest of the audit at ``path`` lives."""
    path = Path(path)
    if partitioned is None:
        partitioned = path.is_dir()
    return path / DATASET_MANIFEST if partitioned else path.with_name(path.name + ".manifest.json")


def _write_manifest(path: Path, content: Mapping[str, Any]) -> str:
    data = (json.dumps(content, indent=2, default=str, ensure_ascii=False) + "\n").encode()
    tmp = path.with_name(path.name + ".tmp")
    try:
        safefiles.write_new(tmp, data)  # exclusively: a stale one was removed, or refused
    except OSError as exc:
        raise AuditError(f"cannot write the manifest {path}: {exc}", path=str(path)) from None
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- hashing -------------------------------------------------------------------------------------

#: The chain starts from a fixed value, so an empty audit has a known head.
CHAIN_SEED = hashlib.sha256(b"walrecover audit v1").hexdigest()
#: The columns a row's hash covers, in this order. They hold every value exactly; the typed
#: columns are derived from ``new_values``/``old_values`` and verified against them.
HASHED: Final = (
    "seq",
    "commit_lsn",
    "lsn",
    "xid",
    "commit_time",
    "op",
    "relation",
    "key",
    "outcome",
    "new_values",
    "old_values",
)


def hash_rows(table: pa.Table, chain: str) -> tuple[list[str], list[str], str]:
    """Each row's SHA-256 over its canonical content, and the chain continuing from ``chain``.

    The canonical content is the compact JSON array (``separators=(",", ":")``, UTF-8, not
    ASCII-escaped) of the columns in :data:`HASHED`, with ``commit_time`` in ISO form
    (``2024-05-01T10:00:00.123456+00:00``). ``row_hash = sha256(content)``; ``chain_hash =
    sha256(previous chain_hash + row_hash)`` as hex text, starting from :data:`CHAIN_SEED`.
    """
    columns = [table.column(name).to_pylist() for name in HASHED]
    row_hashes: list[str] = []
    chain_hashes: list[str] = []
    sha256 = hashlib.sha256
    times = columns[HASHED.index("commit_time")]
    columns[HASHED.index("commit_time")] = [None if t is None else t.isoformat() for t in times]
    for values in zip(*columns, strict=True):
        content = _encode_compact(values)
        row_hash = sha256(content.encode()).hexdigest()
        chain = sha256((chain + row_hash).encode()).hexdigest()
        row_hashes.append(row_hash)
        chain_hashes.append(chain)
    return row_hashes, chain_hashes, chain


def _batches(path: Path, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows in batches, holding one row group at a time.

    ``pre_buffer=False``: pre-buffering caches the column chunks it has read ahead until the
    reader is done, which makes memory grow with the file.
    """
    parquet = pq.ParquetFile(path, pre_buffer=False)
    yield from parquet.iter_batches(
        batch_size=ROW_GROUP_ROWS, columns=list(columns) if columns is not None else None
    )


def _row_groups(parts: Sequence[Path]) -> Iterator[pa.Table]:
    """The parts' rows in seq order, regrouped into tables of :data:`ROW_GROUP_ROWS` rows (the
    last may be smaller).

    Parts are sealed at every target commit, so their size follows ``--batch-size`` and how
    often a run was resumed; the published audit's row groups must not: thousands of tiny row
    groups make the file several times larger and every reader of it slower.
    """
    pending: list[pa.Table] = []
    count = 0
    for part in parts:
        for batch in _batches(part):
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


def _part_lsn(part: Path) -> Lsn | None:
    if not (part.name.startswith("part-") and part.suffix == ".parquet"):
        return None
    try:
        return Lsn(int(part.stem.split("-")[2], 16))
    except (IndexError, ValueError):
        return None


def _part_number(part: Path) -> int:
    return int(part.stem.split("-")[1])


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- where the audit goes, and what is walrecover's there -----------------------------------------


def _audit_path(path: str | os.PathLike[str], option: str, partitioned: bool) -> Path:
    """The audit's path, refusing ``.``, ``..`` and ``/`` (names of no file of its own)."""
    given = Path(path)
    absolute = Path(os.path.abspath(given))
    if not absolute.name:
        raise AuditError(f"{option} {given} is the root directory: give a path", path=str(given))
    if partitioned:
        cwd = Path(os.path.abspath(Path.cwd()))
        if absolute == cwd or absolute in cwd.parents:
            raise AuditError(
                f"{option} {given} is the current directory (or holds it): walrecover builds "
                f"the audit beside its directory and moves it into place; give a new "
                f"directory, e.g. {option} ./audit",
                path=str(given),
            )
    return absolute if given.name in ("", ".", "..") else given


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _inside(path: Path, directory: Path) -> bool:
    resolved, root = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return resolved == root or root in resolved.parents


def clear_published(parts: Path) -> bool:
    """Delete what a run killed after publishing its audit left in ``PATH.parts`` (its run
    record says the audit was published); True if that is what the directory held."""
    run = _read_run(parts / RUN_FILE)
    if run is None or not run.get("published"):
        return False
    if not safefiles.remove_own_files(parts, _PART_FILES):
        safefiles.remove_dir_if_empty(parts)
    return True


def _read_run(path: Path) -> dict[str, Any] | None:
    """The bookkeeping of an earlier run, or None if there is none walrecover wrote."""
    if not safefiles.is_file(safefiles.lstat(path)):
        return None
    try:
        with open(path, "rb") as handle:
            content = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != RUN_FORMAT:
        return None
    return content


def _foreign_in_dataset(root: Path) -> list[str]:
    """Entries of a partitioned audit that its manifest does not list as written by walrecover
    (or that are links, or named unlike anything walrecover writes)."""
    try:
        with open(root / DATASET_MANIFEST, "rb") as handle:
            listed = {str(f["path"]) for f in json.loads(handle.read()).get("files", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return [DATASET_MANIFEST + " (not a walrecover manifest)"]
    foreign: list[str] = []
    for entry in sorted(os.listdir(root)):
        sub = root / entry
        if entry == DATASET_MANIFEST and safefiles.is_file(safefiles.lstat(sub)):
            continue
        if _PARTITION_DIR.fullmatch(entry) and safefiles.is_dir(safefiles.lstat(sub)):
            for name in sorted(os.listdir(sub)):
                relative = f"{entry}/{name}"
                if not (
                    relative in listed
                    and _DATASET_PART.fullmatch(name)
                    and safefiles.is_file(safefiles.lstat(sub / name))
                ):
                    foreign.append(relative)
            continue
        foreign.append(entry)
    return foreign


def _remove_dataset(root: Path) -> None:
    """Remove what walrecover writes in a partitioned audit (part files, manifest), then its
    directories if that left them empty; anything else stays."""
    if not safefiles.is_dir(safefiles.lstat(root)):
        return
    for entry in sorted(os.listdir(root)):
        sub = root / entry
        if _PARTITION_DIR.fullmatch(entry) and safefiles.is_dir(safefiles.lstat(sub)):
            safefiles.remove_own_files(sub, (_DATASET_PART,))
            safefiles.remove_dir_if_empty(sub)
    safefiles.remove_own_files(root, _DATASET_FILES)
    safefiles.remove_dir_if_empty(root)


def _remove_work(path: Path) -> None:
    """Remove a work file or partial dataset walrecover left beside the audit."""
    if safefiles.is_dir(safefiles.lstat(path)):
        _remove_dataset(path)
    else:
        safefiles.remove_file(path)


# -- reading -------------------------------------------------------------------------------------


def kv_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    return {
        key.decode()[len("walrecover.") :]: json.loads(value)
        for key, value in (raw or {}).items()
        if key.startswith(b"walrecover.")
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run metadata of an audit file, or of a partitioned audit (from its manifest)."""
    path = Path(path)
    if path.is_dir():
        manifest = load_manifest(path / DATASET_MANIFEST)
        return dict(manifest.get("metadata", {}))
    try:
        return kv_metadata(pq.ParquetFile(path).metadata.metadata)
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read the audit {path}: {exc}", path=str(path)) from None


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(f"the manifest {path} does not exist", path=str(path)) from None
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the manifest {path}: {exc}", path=str(path)) from None
    return content


def audit_dataset(path: str | os.PathLike[str]) -> ds.Dataset:
    """The audit at ``path`` (a file or a partitioned directory) as a pyarrow dataset."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"the audit {path} does not exist", path=str(path))
    try:
        if path.is_dir():
            return ds.dataset(
                path,
                format="parquet",
                partitioning=ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
            )
        return ds.dataset(path, format="parquet")
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read the audit {path}: {exc}", path=str(path)) from None


def read_audit(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,
) -> pd.DataFrame:
    """The audit at ``path`` (file or partitioned directory) as a pandas DataFrame, in seq order.

    Every column is Arrow-backed (``pd.ArrowDtype``): numeric stays ``decimal128(p, s)``
    (exact ``Decimal`` values, never floats), timestamptz stays ``timestamp[us, tz=UTC]``, and
    intervals become ``month_day_nano_interval``. ``columns`` and ``filter`` (a
    ``pyarrow.dataset`` expression) read only part of a large audit.
    """
    dataset = audit_dataset(path)
    wanted = list(columns) if columns is not None else None
    read: list[str] | None = wanted
    if wanted is not None and "seq" not in wanted and "seq" in dataset.schema.names:
        read = [*wanted, "seq"]
    try:
        table = dataset.to_table(columns=read, filter=filter)
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read the audit {path}: {exc}", path=str(path)) from None
    if "seq" in table.column_names:
        table = table.sort_by("seq")
        if wanted is not None and "seq" not in wanted:
            table = table.drop_columns(["seq"])
    for index, item in enumerate(table.schema):
        if item.name == PARTITION and pa.types.is_string(item.type):
            column = table.column(index)
            dates = pc.cast(pc.if_else(pc.equal(column, NO_DATE), None, column), pa.date32())
            table = table.set_column(index, pa.field(PARTITION, pa.date32()), dates)
        elif item.type == INTERVAL_TYPE:
            converted = _as_month_day_nano(table.column(index))
            table = table.set_column(index, pa.field(item.name, converted.type), converted)
    frame: pd.DataFrame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return frame


def _as_month_day_nano(column: pa.ChunkedArray) -> pa.Array:
    return pa.array(
        [
            None
            if v is None
            else pa.MonthDayNano([v["months"], v["days"], v["microseconds"] * 1000])
            for v in column.to_pylist()
        ],
        pa.month_day_nano_interval(),
    )
