"""PostgreSQL's text output to typed Arrow values, for the audit's typed columns.

=================================  ============================================================
PostgreSQL                         Arrow
=================================  ============================================================
smallint, integer, bigint, oid     int16, int32, int64, int64
numeric(p, s), p <= 38, 0<=s<=p    decimal128(p, s)
numeric, numeric(p > 38, s)        string: the exact text (no Arrow decimal holds every value)
real, double precision             float32, float64
boolean                            bool
bytea (hex or escape output)       binary
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
multi-dimensional array) converts to NULL; the audit keeps its exact text beside it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import orjson
import pyarrow as pa

from ..stream.model import Column
from ..stream.pgtext import parse_array, parse_interval
from . import fastcast

_Converter = Callable[[str], Any]

INTERVAL_TYPE: Final = pa.struct(
    [
        pa.field("months", pa.int32()),
        pa.field("days", pa.int32()),
        pa.field("microseconds", pa.int64()),
    ]
)

# -- PostgreSQL text -> typed Arrow values -------------------------------------------------------

_NUMERIC_RE = re.compile(r"^numeric\((\d+),(-?\d+)\)$")


def _base_type(type_name: str) -> str:
    return re.sub(r"\(.*?\)", "", type_name).strip()


def arrow_type(column: Column) -> tuple[pa.DataType, _Converter]:
    """The Arrow type for a PostgreSQL column and a converter from its canonical text."""
    return pg_arrow_type(column.type_name)


@functools.cache
def pg_arrow_type(type_name: str) -> tuple[pa.DataType, _Converter]:
    """The Arrow type for a type as ``format_type`` prints it, and a converter from its text.

    A converter raises ``ValueError`` (or ``ArithmeticError``) for a value the Arrow type cannot
    hold exactly; the audit then leaves the typed cell NULL (the exact text is kept beside it).
    """
    name = type_name.strip()
    if name.endswith("[]"):
        element = name[:-2].strip()
        if _base_type(element) == "box":  # box arrays use ';' between elements: keep the text
            return pa.string(), str
        element_type, convert = pg_arrow_type(element)
        return pa.list_(element_type), _array_converter(convert)
    match = _NUMERIC_RE.match(name.replace(" ", ""))
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if 1 <= precision <= 38 and 0 <= scale <= precision:
            return pa.decimal128(precision, scale), DecimalText(precision, scale)
        return pa.string(), str
    base = _base_type(name)
    if base.startswith("interval"):
        return INTERVAL_TYPE, parse_interval
    simple: dict[str, tuple[pa.DataType, _Converter]] = {
        "smallint": (pa.int16(), int),
        "integer": (pa.int32(), int),
        "bigint": (pa.int64(), int),
        "oid": (pa.int64(), int),
        "real": (pa.float32(), float),
        "double precision": (pa.float64(), float),
        "boolean": (pa.bool_(), _boolean),
        "bytea": (pa.binary(), _bytea),
        "date": (pa.date32(), _date),
        "timestamp with time zone": (pa.timestamp("us", tz="UTC"), _timestamptz),
        "timestamp without time zone": (pa.timestamp("us"), _timestamp),
        "time without time zone": (pa.time64("us"), time.fromisoformat),
    }
    return simple.get(base, (pa.string(), str))


@dataclass(frozen=True, slots=True)
class DecimalText:
    """numeric(p, s) text to a ``Decimal`` that ``decimal128(p, s)`` holds exactly: a value
    with more fraction digits than the scale, or too wide, is refused, never rounded."""

    precision: int
    scale: int

    def __call__(self, text: str) -> Decimal:
        value = Decimal(text)
        if not value.is_finite():
            raise ValueError("NaN and infinity have no decimal128 form")
        _, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        if -exponent > self.scale or len(digits) + exponent + self.scale > self.precision:
            raise ValueError(f"{text} does not fit numeric({self.precision},{self.scale})")
        return value


#: One object (a bound method is a new one at each access), so the fast path knows it.
_date: Final[_Converter] = date.fromisoformat


def _boolean(text: str) -> bool:
    if text in ("t", "true"):
        return True
    if text in ("f", "false"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


_BYTEA_ESCAPE = re.compile(r"\\\\|\\([0-7]{3})|([\x20-\x5b\x5d-\x7e]+)")


def _bytea(text: str) -> bytes:
    """bytea's output in either ``bytea_output``: hex (``\\x00ff``) or escape (``a\\000\\\\``).

    Escape output can never start with ``\\x`` (a backslash prints as ``\\\\``), so the two
    cannot be confused; both decode to the exact bytes.
    """
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    out = bytearray()
    position = 0
    for match in _BYTEA_ESCAPE.finditer(text):
        if match.start() != position:
            break
        octal, plain = match.group(1), match.group(2)
        if plain is not None:
            out += plain.encode("ascii")
        elif octal is not None:
            out.append(int(octal, 8))
        else:
            out.append(0x5C)
        position = match.end()
    if position != len(text):
        raise ValueError("bytea is neither hex nor escape output")
    return bytes(out)


def _timestamptz(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("timestamptz without an offset")
    return value


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        raise ValueError("timestamp with an offset")
    return value


def _array_converter(convert: _Converter) -> _Converter:
    def parse(text: str) -> list[Any]:
        return [None if item is None else convert(item) for item in parse_array(text)]

    return parse


def typed_value(text: str | None, convert: _Converter) -> Any:
    if text is None:
        return None
    try:
        return convert(text)
    except (ValueError, InvalidOperation, ArithmeticError, IndexError):
        return None  # e.g. 'infinity': the exact text stays in new_values/old_values


# -- the schema ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypedField:
    """One typed column of the audit: which image and table column it shows, and how."""

    name: str
    column: str
    image: str  # "new" or "old"
    pg_type: str
    arrow: pa.DataType
    convert: _Converter

    def field(self) -> pa.Field:
        return pa.field(
            self.name,
            self.arrow,
            metadata={
                "walrecover.pg_type": self.pg_type,
                "walrecover.column": self.column,
                "walrecover.image": self.image,
            },
        )


def fields_of(schema: pa.Schema) -> list[TypedField]:
    """The typed columns of a written audit, from its field metadata."""
    found = []
    for item in schema:
        meta = item.metadata or {}
        pg_type = meta.get(b"walrecover.pg_type")
        if pg_type is None:
            continue
        arrow, convert = pg_arrow_type(pg_type.decode())
        found.append(
            TypedField(
                item.name,
                meta[b"walrecover.column"].decode(),
                meta[b"walrecover.image"].decode(),
                pg_type.decode(),
                arrow,
                convert,
            )
        )
    return found


def typed_column(schema: pa.Schema, column: str, image: str = "new") -> str | None:
    """The audit column holding ``column`` of the ``image`` ("new" or "old"), or None."""
    for item in schema:
        meta = item.metadata or {}
        if (
            meta.get(b"walrecover.column") == column.encode()
            and meta.get(b"walrecover.image") == image.encode()
        ):
            return str(item.name)
    name = f"{image}_{column}"
    return name if name in schema.names else None


def typed_arrays(table: pa.Table, fields: Sequence[TypedField]) -> list[pa.Array]:
    """The typed columns of ``fields`` for a batch, derived from its exact text.

    The one place typed values are made: the writer uses it, and :func:`verify_audit` uses it
    to check that what a file holds is what its exact text gives. Arrow's C++ makes each column
    where :mod:`walrecover.audit.fastcast` proves it gives what :func:`python_arrays` gives;
    the rest is converted value by value, as before.
    """
    if not fields:
        return []
    arrays: list[pa.Array | None] = [None] * len(fields)
    for image in dict.fromkeys(f.image for f in fields):
        wanted = [i for i, f in enumerate(fields) if f.image == image]
        texts = fastcast.image_texts(
            table.column(f"{image}_values"), [fields[i].column for i in wanted]
        )
        if texts is None:
            continue
        for i in wanted:
            column = texts.column(fields[i].column)
            arrays[i] = fastcast.cast_texts(column.combine_chunks(), fields[i])
    rest = [f for f, array in zip(fields, arrays, strict=True) if array is None]
    slow = iter(python_arrays(table, rest))
    return [next(slow) if array is None else array for array in arrays]


def python_arrays(table: pa.Table, fields: Sequence[TypedField]) -> list[pa.Array]:
    """The typed columns of ``fields``, each value converted by its field's Python converter
    from the image's JSON (orjson, or the stdlib where orjson refuses)."""
    if not fields:
        return []
    images = {
        image: [_load(v) for v in table.column(f"{image}_values").to_pylist()]
        for image in {f.image for f in fields}
    }
    arrays = []
    for typed in fields:
        column, convert = typed.column, typed.convert
        objs = images[typed.image]
        if convert is str:  # text as it is, unless a cell is not text (an edited file)
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):
                arrays.append(
                    pa.array([None if o is None else o.get(column) for o in objs], typed.arrow)
                )
                continue
        values = [None if o is None else typed_value(o.get(column), convert) for o in objs]
        arrays.append(pa.array(values, typed.arrow))
    return arrays


def _load(text: str | None) -> Any:
    """An image's JSON as a dict: orjson (several times faster); the stdlib where orjson is
    stricter (``NaN`` literals, ...), so what an audit's text gives never depends on it."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
