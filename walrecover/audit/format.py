"""What an audit is on disk: its columns, its hashes, its manifest, its constants.

The writer, the reader and :mod:`walrecover.audit.verify` share this module, so an auditor's
check depends on the format, not on the code that wrote it.

Each row carries where the change came from (``seq``, commit LSN, change LSN, xid, commit time),
what it was (op, relation, key), what became of it (``outcome``, see
:mod:`walrecover.audit.outcomes`), the exact canonical text of both images as JSON (``new_values``,
``old_values``: lossless, whatever the type), and both images again as typed Arrow columns
(``new_<column>``, ``old_<column>``) for pandas, DuckDB and Spark, typed by the table in
:mod:`walrecover.audit.pgarrow` (numeric as ``decimal128`` or its exact text, never a float).

A value a typed column cannot hold (``infinity``, numeric ``NaN``, a year past 9999, a
multi-dimensional array) is NULL there and exact in ``new_values``/``old_values``. Every typed
field carries its PostgreSQL type in the field metadata (``walrecover.pg_type``).

Tamper evidence: ``row_hash`` is the SHA-256 of the row's canonical content (the JSON array of
the columns in :data:`HASHED`, see :func:`hash_rows`) and ``chain_hash`` chains them in ``seq``
order from :data:`CHAIN_SEED`, so an edited, deleted or reordered row breaks the chain;
:func:`~walrecover.audit.verify.verify_audit` recomputes everything, checks that every typed
value is the one its exact text gives, and names the first bad row. A manifest (JSON) beside
the audit records each file's SHA-256, the row count and the chain head.

Layouts: a single file (``--audit PATH``, manifest ``PATH.manifest.json``), or a Hive-partitioned
dataset by commit date (``--audit-dir DIR``: ``DIR/commit_date=2024-05-01/part-000000.parquet``,
manifest ``DIR/_manifest.json``, ignored by readers as an underscore file) that pandas, pyarrow,
DuckDB and Spark read as one table.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import AuditError
from ..stream.model import Column, Relation, Values
from .pgarrow import TypedField, arrow_type

#: Rows per Parquet row group (and per batch in the merge and verify passes).
ROW_GROUP_ROWS = 65_536
#: Rows held as Python objects at a time: the writer's buffer before it writes them to its part
#: file, and the slice of a row group the close converts to typed columns and hashes. A whole
#: row group of Python row tuples or parsed images was about 100 MB of a recovery's peak RSS;
#: the published row groups stay :data:`ROW_GROUP_ROWS` (the close regroups the parts).
BUFFER_ROWS = 8_192
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
#: Rows per batch when verifying (each batch's values become Python objects).
VERIFY_BATCH_ROWS = 16_384
#: How many problems verify_audit reports word for word (it counts all of them).
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
PRIVATE_COLUMNS: Final = ("_before_identity", "_after_identity")
HASH_COLUMNS: Final = ("row_hash", "chain_hash")


def typed_fields(relation: Relation) -> list[TypedField]:
    """The typed columns for a relation: ``new_<column>`` for each column, then ``old_``."""
    taken = {name for name, _ in META_COLUMNS} | set(HASH_COLUMNS) | set(PRIVATE_COLUMNS)
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
    + [pa.field(name, pa.string()) for name in PRIVATE_COLUMNS]
)

#: Encoders made once: ``json.dumps`` with options builds a new encoder on every call.
encode = json.JSONEncoder(ensure_ascii=False).encode
encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: One string as JSON, the way both encoders above write it (the C function they call).
_quote: Final = json.encoder.encode_basestring
#: A text as a JSON string, the way the stdlib encoder writes it (non-ASCII kept).
quote_text: Final = _quote
#: ``"name": `` for each column name seen, so an image's JSON is one join.
_KEY_PREFIX: dict[str, str] = {}


def pairs_json(items: Iterable[tuple[str, str | None]]) -> str:
    """``{"a": "1", "b": null}``: exactly :data:`encode` of the dict, several times faster.

    The audit's images and keys are dicts of text (or NULL) by column name; building their JSON
    from the quoted pieces skips the encoder's per-call set-up, and the bytes are the same
    (tests compare them with :data:`encode` over every code point).
    """
    prefix = _KEY_PREFIX
    parts = []
    for name, value in items:
        head = prefix.get(name)
        if head is None:
            head = prefix[name] = _quote(name) + ": "
        parts.append(head + ("null" if value is None else _quote(value)))
    return "{" + ", ".join(parts) + "}"


def list_json(values: Iterable[str | None]) -> str:
    """``["1", null]``: exactly :data:`encode` of the list of texts."""
    return "[" + ", ".join(["null" if v is None else _quote(v) for v in values]) + "]"


#: ``"name": `` for each key set an image showed, so an image's JSON is one comprehension.
_HEADS: dict[tuple[str, ...], list[str]] = {}


def values_json(values: Values | None) -> str | None:
    """An image's exact text as the audit's ``new_values``/``old_values`` JSON: the bytes of
    :func:`pairs_json` over its items, with each key set's quoted names made once (an image
    per change is the audit's hot path)."""
    if values is None:
        return None
    keys = tuple(values)
    heads = _HEADS.get(keys)
    if heads is None:
        if len(_HEADS) >= 1024:
            _HEADS.clear()  # a stream of ever new column sets: keep memory bounded
        heads = _HEADS[keys] = [_quote(name) + ": " for name in keys]
    quote = _quote
    return (
        "{"
        + ", ".join(
            [
                head + ("null" if value is None else quote(value))
                for head, value in zip(heads, values.values(), strict=True)
            ]
        )
        + "}"
    )


def column_json(column: Column) -> list[Any]:
    """A column as the audit's metadata records it: ``[name, type, is_key]``."""
    return [column.name, column.type_name, column.is_key]


def column_of(item: Any) -> Column:
    """The column :func:`column_json` recorded."""
    return Column(str(item[0]), str(item[1]), is_key=bool(item[2]))


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


def iso_times(times: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """UTC timestamps as ``datetime.isoformat`` writes them (``2024-05-01T10:00:00+00:00``,
    ``.123456`` only when there are microseconds), computed over the column at once, each
    distinct time once (the rows of a transaction share its commit time)."""
    if len(times) == 0:
        return []
    distinct = pc.unique(times)
    years = pc.year(distinct)
    low, high = pc.min(years).as_py(), pc.max(years).as_py()
    if low is None or (low >= 1000 and high <= 9999):
        # Arrow's cast prints ``2024-05-01 10:00:00.000000`` (all six fractional digits, ten
        # times cheaper than its strftime); isoformat writes a "T" and drops ".000000".
        text = distinct.cast(pa.timestamp("us")).cast(pa.string())
        text = pc.replace_substring(text, pattern=" ", replacement="T", max_replacements=1)
        whole = pc.ends_with(text, ".000000")
        text = pc.if_else(whole, pc.utf8_slice_codeunits(text, 0, 19), text)
        text = pc.binary_join_element_wise(text, "+00:00", "")
    else:
        text = pa.array([None if t is None else t.isoformat() for t in distinct.to_pylist()])
    return pc.take(text, pc.index_in(times, value_set=distinct)).to_pylist()  # type: ignore[no-any-return]


def hash_rows(table: pa.Table, chain: str) -> tuple[list[str], list[str], str]:
    """Each row's SHA-256 over its canonical content, and the chain continuing from ``chain``.

    The canonical content is the compact JSON array (``separators=(",", ":")``, UTF-8, not
    ASCII-escaped) of the columns in :data:`HASHED`, with ``commit_time`` in ISO form
    (``2024-05-01T10:00:00.123456+00:00``). ``row_hash = sha256(content)``; ``chain_hash =
    sha256(previous chain_hash + row_hash)`` as hex text, starting from :data:`CHAIN_SEED`.

    orjson writes that array byte for byte as the stdlib's compact encoder does for these
    values (int, text, null; tests check every code point), about ten times faster.
    """
    columns = [table.column(name) for name in HASHED]
    pylists: list[list[Any]] = [
        iso_times(column) if name == "commit_time" else column.to_pylist()
        for name, column in zip(HASHED, columns, strict=True)
    ]
    sha256 = hashlib.sha256
    dumps = orjson.dumps
    row_hashes = [sha256(dumps(values)).hexdigest() for values in zip(*pylists, strict=True)]
    chain_hashes: list[str] = []
    append = chain_hashes.append
    for row_hash in row_hashes:
        chain = sha256((chain + row_hash).encode()).hexdigest()
        append(chain)
    return row_hashes, chain_hashes, chain


# -- the manifest and the metadata ---------------------------------------------------------------


def manifest_path(path: str | os.PathLike[str], partitioned: bool | None = None) -> Path:
    """Where the manifest of the audit at ``path`` lives."""
    path = Path(path)
    if partitioned is None:
        partitioned = path.is_dir()
    return path / DATASET_MANIFEST if partitioned else path.with_name(path.name + ".manifest.json")


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, as hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def kv_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """The ``walrecover.*`` key-value metadata of a Parquet file, decoded."""
    return {
        key.decode()[len("walrecover.") :]: json.loads(value)
        for key, value in (raw or {}).items()
        if key.startswith(b"walrecover.")
    }


def load_manifest(path: Path) -> dict[str, Any]:
    """A manifest's content; an :class:`AuditError` naming it if it is missing or unreadable."""
    try:
        content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(f"the manifest {path} does not exist", path=str(path)) from None
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the manifest {path}: {exc}", path=str(path)) from None
    return content
