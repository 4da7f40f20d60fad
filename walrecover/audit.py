"""The Parquet audit: one row per recovered row change, streamed in row groups.

Each row carries where the change came from (commit LSN, change LSN, xid, commit time), what it
was (op, relation, key), the after-image as typed Arrow columns (``new_<column>``: numeric as
``decimal128(p, s)``, timestamptz as ``timestamp[us, UTC]``, integers, text, booleans, JSON as
text), the exact canonical text of both images as JSON (``new_values``, ``old_values``: lossless
even where a typed column cannot hold a value, such as ``infinity``), and what replay did with it.
Run metadata (source without password, slot, plugin, LSN range, stop point, counts) goes into the
file's key-value metadata. The file is written as ``PATH.partial`` and renamed when complete, so a
file at PATH is always whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import AuditError
from .lsn import Lsn
from .model import Column, Relation, Values
from .replay import AppliedChange

ROW_GROUP_ROWS = 65_536
_NUMERIC_RE = re.compile(r"^numeric\((\d+),(\d+)\)$")
_Converter = Callable[[str], Any]

META_COLUMNS = (
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


def _base_type(type_name: str) -> str:
    return re.sub(r"\(.*\)", "", type_name).strip()


def arrow_type(column: Column) -> tuple[pa.DataType, _Converter]:
    """The Arrow type for a PostgreSQL column and a converter from its canonical text."""
    name = column.type_name.strip()
    if name.endswith("[]"):
        return pa.string(), str
    match = _NUMERIC_RE.match(name.replace(" ", ""))
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if precision <= 38:
            return pa.decimal128(precision, scale), _finite_decimal
        return pa.string(), str
    base = _base_type(name)
    simple: dict[str, tuple[pa.DataType, _Converter]] = {
        "smallint": (pa.int16(), int),
        "integer": (pa.int32(), int),
        "bigint": (pa.int64(), int),
        "oid": (pa.int64(), int),
        "real": (pa.float32(), float),
        "double precision": (pa.float64(), float),
        "boolean": (pa.bool_(), lambda text: text == "t"),
        "bytea": (pa.binary(), lambda text: bytes.fromhex(text[2:])),
        "date": (pa.date32(), date.fromisoformat),
        "timestamp with time zone": (pa.timestamp("us", tz="UTC"), datetime.fromisoformat),
        "timestamp without time zone": (pa.timestamp("us"), datetime.fromisoformat),
        "time without time zone": (pa.time64("us"), time.fromisoformat),
    }
    return simple.get(base, (pa.string(), str))


def _finite_decimal(text: str) -> Decimal:
    value = Decimal(text)
    if not value.is_finite():
        raise ValueError("NaN and infinity have no decimal128 form")
    return value


def audit_schema(relation: Relation) -> pa.Schema:
    """The audit's Arrow schema for one relation."""
    fields = [pa.field(name, type_) for name, type_ in META_COLUMNS]
    fields += [pa.field(f"new_{c.name}", arrow_type(c)[0]) for c in relation.columns]
    return pa.schema(fields)


def _json(values: Values | None) -> str | None:
    return None if values is None else json.dumps(dict(values), ensure_ascii=False)


class AuditWriter:
    """Streams applied changes into Parquet, in step with the target's commits.

    Rows go into part files under ``PATH.parts/``; :meth:`commit` seals the current part (named
    with the commit LSN it belongs to) just before replay commits the same changes to the target.
    A killed run leaves sealed parts for what the target committed, and maybe one part the target
    never committed: :meth:`start` removes parts past the target's progress, so a resumed run
    continues exactly where the target did. :meth:`close` merges the parts, in order, into PATH
    (through ``PATH.partial``), adding each row's SHA-256 and the chained hash.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.metadata = dict(metadata)
        self.rows = 0
        self._part_index = 0
        self._writer: pq.ParquetWriter | None = None
        self._open_files: list[Path] = []
        self._savepoint: tuple[int, int] | None = None
        self._schema: pa.Schema | None = None
        self._converters: list[tuple[str, _Converter]] = []
        self._columns: dict[str, list[Any]] = {}
        if self.path.is_dir():
            raise AuditError(f"--audit {self.path} is a directory: give a file path", path=path)
        if not self.path.parent.is_dir():
            raise AuditError(
                f"the directory of --audit {self.path} does not exist: create it first", path=path
            )

    # -- lifecycle driven by replay ----------------------------------------------------------

    def start(self, committed: Lsn | None, resuming: bool) -> None:
        """Keep the parts the target committed (up to ``committed``) when resuming; else none."""
        if not resuming:
            shutil.rmtree(self.parts, ignore_errors=True)
        try:
            self.parts.mkdir(exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create {self.parts}: {exc}", path=self.path) from None
        kept = 0
        for part in sorted(self.parts.iterdir()):
            upto = _part_lsn(part)
            if upto is None or committed is None or upto > committed:
                part.unlink()
                continue
            kept += pq.ParquetFile(part).metadata.num_rows
            self._part_index = max(self._part_index, _part_number(part) + 1)
        self.rows = kept

    def write(self, batch: Sequence[AppliedChange]) -> None:
        """Append a batch of applied changes to the open part."""
        for applied in batch:
            change = applied.change
            if self._schema is None:
                self._set_schema(change.relation)
            cols = self._columns
            cols["seq"].append(self.rows)
            cols["commit_lsn"].append(str(applied.commit_lsn) if applied.commit_lsn else None)
            cols["lsn"].append(str(change.lsn) if change.lsn is not None else None)
            cols["xid"].append(applied.xid)
            cols["commit_time"].append(applied.commit_time)
            cols["op"].append(change.op.value)
            cols["relation"].append(change.relation.qualified_name)
            key = change.key()
            cols["key"].append(
                json.dumps(
                    dict(zip(change.relation.key_columns, key, strict=True)), ensure_ascii=False
                )
                if key is not None
                else None
            )
            cols["outcome"].append(applied.outcome.value)
            after = applied.after if applied.after is not None else change.new
            cols["new_values"].append(_json(after))
            cols["old_values"].append(_json(change.old))
            for name, convert in self._converters:
                text = after.get(name) if after is not None else None
                cols[f"new_{name}"].append(_typed(text, convert))
            self.rows += 1
            if len(cols["seq"]) >= ROW_GROUP_ROWS:
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
        self._columns = {name: [] for name in self._columns}
        self._close_part_file()
        for tmp in self._open_files[files:]:
            tmp.unlink(missing_ok=True)
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
            _fsync(tmp)
            os.replace(tmp, final)
        _fsync_dir(self.parts)
        self._open_files.clear()

    # -- internals ---------------------------------------------------------------------------

    def _set_schema(self, relation: Relation) -> None:
        self._schema = audit_schema(relation)
        self._converters = [(c.name, arrow_type(c)[1]) for c in relation.columns]
        self._columns = {name: [] for name in self._schema.names}

    def _flush(self) -> None:
        if self._schema is None or not self._columns.get("seq"):
            return
        if self._writer is None:
            tmp = self.parts / f"open-{self._part_index + len(self._open_files):06d}.tmp"
            try:
                self._writer = pq.ParquetWriter(tmp, self._schema, compression="zstd")
            except OSError as exc:
                raise AuditError(f"cannot write the audit under {self.parts}: {exc}") from None
            self._open_files.append(tmp)
        try:
            table = pa.Table.from_pydict(self._columns, schema=self._schema)
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        except (pa.ArrowException, OSError) as exc:
            raise AuditError(f"writing the audit under {self.parts} failed: {exc}") from None
        self._columns = {name: [] for name in self._schema.names}

    def _close_part_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- the end -----------------------------------------------------------------------------

    def close(self, metadata: Mapping[str, Any] | None = None) -> int:
        """Merge the sealed parts into PATH with row and chain hashes, and remove the parts."""
        self._flush()
        self._close_part_file()
        parts = sorted(p for p in self.parts.iterdir() if _part_lsn(p) is not None)
        schema = self._schema
        if schema is None and parts:
            schema = pq.read_schema(parts[0]).remove_metadata()
        if schema is None:
            schema = audit_schema(Relation("", "", ()))
        out_schema = schema.append(pa.field("row_hash", pa.string())).append(
            pa.field("chain_hash", pa.string())
        )
        chain = CHAIN_SEED
        rows = 0
        try:
            writer = pq.ParquetWriter(self.partial, out_schema, compression="zstd")
        except OSError as exc:
            raise AuditError(f"cannot write the audit {self.partial}: {exc}") from None
        try:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=ROW_GROUP_ROWS):
                    table = pa.Table.from_batches([batch]).cast(schema)
                    row_hashes, chain_hashes, chain = hash_rows(table, chain)
                    table = table.append_column("row_hash", pa.array(row_hashes, pa.string()))
                    table = table.append_column("chain_hash", pa.array(chain_hashes, pa.string()))
                    writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                    rows += table.num_rows
            meta = {**self.metadata, **(metadata or {}), "rows": rows, "chain_head": chain}
            writer.add_key_value_metadata(
                {f"walrecover.{k}": json.dumps(v, default=str) for k, v in meta.items()}
            )
        finally:
            writer.close()
        _fsync(self.partial)
        os.replace(self.partial, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.rows = rows
        return rows

    def abort(self) -> None:
        """Stop after a failure: keep sealed parts (a rerun resumes), drop unsealed rows."""
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        self._writer = None
        for tmp in self._open_files:
            tmp.unlink(missing_ok=True)
        self._open_files.clear()
        self.partial.unlink(missing_ok=True)


#: The chain starts from a fixed value, so an empty audit has a known head.
CHAIN_SEED = hashlib.sha256(b"walrecover audit v1").hexdigest()
_HASHED = (
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

    The canonical content is the JSON array of the columns in ``_HASHED`` (times in ISO form),
    which holds every value exactly (the typed columns are derived from ``new_values``).
    """
    columns = [table.column(name).to_pylist() for name in _HASHED]
    row_hashes: list[str] = []
    chain_hashes: list[str] = []
    for values in zip(*columns, strict=True):
        content = json.dumps(
            [v.isoformat() if isinstance(v, datetime) else v for v in values],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        row_hash = hashlib.sha256(content.encode()).hexdigest()
        chain = hashlib.sha256((chain + row_hash).encode()).hexdigest()
        row_hashes.append(row_hash)
        chain_hashes.append(chain)
    return row_hashes, chain_hashes, chain


def _part_lsn(part: Path) -> Lsn | None:
    if not (part.name.startswith("part-") and part.suffix == ".parquet"):
        return None
    try:
        return Lsn(int(part.stem.split("-")[2], 16))
    except (IndexError, ValueError):
        return None


def _part_number(part: Path) -> int:
    return int(part.stem.split("-")[1])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)


def _typed(text: str | None, convert: _Converter) -> Any:
    if text is None:
        return None
    try:
        return convert(text)
    except (ValueError, InvalidOperation, ArithmeticError):
        return None  # e.g. 'infinity': the exact text stays in new_values


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run metadata of an audit file."""
    raw = pq.ParquetFile(path).metadata.metadata or {}
    return {
        key.decode()[len("walrecover.") :]: json.loads(value)
        for key, value in raw.items()
        if key.startswith(b"walrecover.")
    }
