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
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import AuditError
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
    """Streams :class:`~walrecover.replay.AppliedChange` batches into a Parquet file."""

    def __init__(self, path: str | os.PathLike[str], metadata: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.metadata = dict(metadata)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._converters: list[tuple[str, _Converter]] = []
        self._columns: dict[str, list[Any]] = {}
        self._relation: Relation | None = None
        if self.path.is_dir():
            raise AuditError(f"--audit {self.path} is a directory: give a file path", path=path)
        if not self.path.parent.exists():
            raise AuditError(
                f"the directory of --audit {self.path} does not exist: create it first", path=path
            )

    def _open(self, relation: Relation) -> None:
        self._relation = relation
        self._schema = audit_schema(relation)
        self._converters = [(c.name, arrow_type(c)[1]) for c in relation.columns]
        self._columns = {name: [] for name in self._schema.names}
        try:
            self._writer = pq.ParquetWriter(
                self.partial, self._schema, compression="zstd", write_statistics=True
            )
        except OSError as exc:
            raise AuditError(
                f"cannot write the audit {self.partial}: {exc}", path=self.path
            ) from None

    def write(self, batch: Sequence[AppliedChange]) -> None:
        """Append a batch of applied changes (the replay sink)."""
        for applied in batch:
            change = applied.change
            if self._writer is None:
                self._open(change.relation)
            cols = self._columns
            cols["seq"].append(self.rows)
            cols["commit_lsn"].append(str(applied.commit_lsn) if applied.commit_lsn else None)
            cols["lsn"].append(str(change.lsn) if change.lsn is not None else None)
            cols["xid"].append(applied.xid)
            cols["commit_time"].append(applied.commit_time)
            cols["op"].append(change.op.value)
            cols["relation"].append(change.relation.qualified_name)
            key_names = change.relation.key_columns
            key = change.key()
            cols["key"].append(
                json.dumps(dict(zip(key_names, key, strict=True)), ensure_ascii=False)
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

    def _flush(self) -> None:
        if self._writer is None or not self._columns["seq"]:
            return
        assert self._schema is not None
        try:
            table = pa.Table.from_pydict(self._columns, schema=self._schema)
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        except (pa.ArrowException, OSError) as exc:
            raise AuditError(f"writing the audit {self.partial} failed: {exc}") from None
        self._columns = {name: [] for name in self._schema.names}

    def close(self, metadata: Mapping[str, Any] | None = None) -> int:
        """Write the last row group and the run metadata, then move the file into place."""
        if self._writer is None:
            self._open(Relation("", "", ()))
        assert self._writer is not None
        self._flush()
        meta = {**self.metadata, **(metadata or {}), "rows": self.rows}
        self._writer.add_key_value_metadata(
            {f"walrecover.{k}": json.dumps(v, default=str) for k, v in meta.items()}
        )
        self._writer.close()
        self._writer = None
        os.replace(self.partial, self.path)
        return self.rows

    def abort(self) -> None:
        """Discard a partial file after a failure."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        with contextlib.suppress(OSError):
            self.partial.unlink()


def _typed(text: str | None, convert: _Converter) -> Any:
    if text is None:
        return None
    try:
        return convert(text)
    except (ValueError, InvalidOperation, ArithmeticError):
        return None  # e.g. 'infinity': the exact text stays in new_values


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run metadata of an audit file."""
    raw = pq.read_schema(path).metadata or {}
    return {
        key.decode()[len("walrecover.") :]: json.loads(value)
        for key, value in raw.items()
        if key.startswith(b"walrecover.")
    }
