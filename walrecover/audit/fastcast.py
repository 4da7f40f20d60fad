"""The audit's typed columns made in Arrow's C++, where that is provably what the per-value
Python conversion of :mod:`walrecover.audit.pgarrow` gives; everything else goes back to it.

Two steps, each with a guard that sends a whole slice (or one column of it) back to Python:

* :func:`image_texts`: each column's text out of an image's JSON (``new_values``), by
  ``pyarrow.json`` over the newline-joined images, with an all-string schema. Only when every
  image is exactly the flat object :func:`~walrecover.audit.format.values_json` writes
  (``{"a": "1", "b": null}``, standard escapes, no surrogate escape): there both readers give the
  same text for the same key, a missing key or a JSON ``null`` is NULL in both, and Arrow refuses a
  key given twice (the guard then sends the slice back). An edited image (a number, ``NaN``,
  other spacing) is not that form and goes back to the Python reader untouched.
* :func:`cast_texts`: those texts to the typed column by ``pyarrow.compute.cast``, only for a type
  and only when every value matches a strict pattern under which Arrow's parse and Python's
  (``int``, ``Decimal`` with the fit check, ``datetime.fromisoformat``) give the same value or
  both refuse it (Arrow then raises: the column goes back to Python, which gives NULL for what it
  refuses). Money stays decimal: numeric text is parsed to ``decimal128`` digit for digit; a
  value with more fraction digits than the scale is outside the pattern (Arrow would round it
  away, Python refuses it).
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from . import pgarrow

# -- the image's JSON ----------------------------------------------------------------------------

_PLAIN: Final = r"[^\"\\\x00-\x1f]"
#: A JSON escape other than a UTF-16 surrogate (which orjson and Arrow treat differently).
_ESCAPE: Final = r"\\[\"\\/bfnrt]|\\u(?:[0-9a-cA-CefEF][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2})"
_STRING: Final = f'"(?:{_PLAIN}|{_ESCAPE})*"'
_PAIR: Final = f"{_STRING}: (?:null|{_STRING})"
#: Exactly what ``values_json`` writes: a flat object of text or null, ``", "`` and ``": "``.
FLAT_OBJECT: Final = f"^\\{{(?:{_PAIR}(?:, {_PAIR})*)?\\}}$"


def image_texts(images: pa.ChunkedArray | pa.Array, columns: list[str]) -> pa.Table | None:
    """Each of ``columns`` as text (NULL where the image is NULL, lacks it or says ``null``),
    one row per image; None when any image is not the flat object the fast path reads."""
    if isinstance(images, pa.ChunkedArray):
        images = images.combine_chunks() if images.num_chunks != 1 else images.chunk(0)
    count = len(images)
    if count == 0 or not columns or images.type != pa.string():
        return None
    flat = pc.match_substring_regex(images, pattern=FLAT_OBJECT)
    if not pc.all(pc.or_kleene(flat, pc.is_null(images))).as_py():
        return None
    schema = pa.schema([(name, pa.string()) for name in dict.fromkeys(columns)])
    try:
        filled = pc.fill_null(images, "{}")
        lines = pa.ListArray.from_arrays(pa.array([0, count], pa.int32()), filled)
        joined = pc.binary_join(lines, "\n")[0].as_buffer()
        table = pa_json.read_json(
            pa.BufferReader(joined),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=len(joined) + 1),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowException:
        # A key given twice (Python's reader keeps the last one), or images too large to join:
        # the Python reader decides.
        return None
    return table if table.num_rows == count else None


# -- text to typed values ------------------------------------------------------------------------

_INTEGER: Final = r"^-?[0-9]{1,19}$"
_YEAR: Final = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_DATE: Final = f"{_YEAR}-[0-9]{{2}}-[0-9]{{2}}"
_CLOCK: Final = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
_OFFSET: Final = r"[+-](?:[01][0-9]|2[0-3])(?::[0-5][0-9])?"


def _decimal_pattern(precision: int, scale: int) -> str:
    """A plain decimal that fits ``numeric(precision, scale)``: at most ``precision - scale``
    integer digits, no leading zeros, at most ``scale`` fraction digits.

    The integer digits are bounded here, not left to Arrow: a value whose digits and the
    scale pass 38 overflows Arrow's 128-bit rescale without an error (``110000000.0`` cast to
    ``decimal128(38, 31)`` gave ``7915289.92...``, at any precision from 1 to 38); Python
    refuses it (NULL).
    With ``precision == scale`` a zero needs a fraction: Python's fit check counts the digit of
    ``0`` (``Decimal("0")`` has one digit and no fraction) where Arrow sees a fitting zero.
    """
    fraction = f"\\.[0-9]{{1,{scale}}}" if scale else ""
    if precision == scale:
        return f"^-?0{fraction}$"
    integer = f"(?:0|[1-9][0-9]{{0,{precision - scale - 1}}})"
    return f"^-?{integer}(?:{fraction})?$" if scale else f"^-?{integer}$"


def _pattern(typed: pgarrow.TypedField) -> str | None:
    """The pattern under which Arrow's cast is the field's Python conversion, or None."""
    convert, arrow = typed.convert, typed.arrow
    if convert is int and arrow in (pa.int16(), pa.int32(), pa.int64()):
        return _INTEGER
    if isinstance(convert, pgarrow.DecimalText) and arrow == pa.decimal128(
        convert.precision, convert.scale
    ):
        return _decimal_pattern(convert.precision, convert.scale)
    if convert is pgarrow._timestamptz and arrow == pa.timestamp("us", tz="UTC"):
        return f"^{_DATE} {_CLOCK}{_OFFSET}$"
    if convert is pgarrow._timestamp and arrow == pa.timestamp("us"):
        return f"^{_DATE} {_CLOCK}$"
    if convert is pgarrow._date and arrow == pa.date32():
        return f"^{_DATE}$"
    return None


def cast_texts(texts: pa.Array, typed: pgarrow.TypedField) -> pa.Array | None:
    """``texts`` as the typed column ``typed``, made by Arrow; None where that is not provably
    the Python conversion (the caller converts the column value by value instead)."""
    convert, arrow = typed.convert, typed.arrow
    if convert is str and arrow == pa.string():
        return texts
    if convert is pgarrow._boolean and arrow == pa.bool_():
        known = pc.is_in(texts, pa.array(["t", "true", "f", "false"]))
        if not pc.all(pc.or_kleene(known, pc.is_null(texts))).as_py():
            return None
        return pc.or_(pc.equal(texts, "t"), pc.equal(texts, "true"))
    pattern = _pattern(typed)
    if pattern is None or texts.null_count == len(texts):
        return None if pattern is None else pa.nulls(len(texts), arrow)
    if not pc.all(pc.match_substring_regex(texts, pattern=pattern)).as_py():
        return None
    if convert is pgarrow._timestamptz:
        # Arrow reads an offset as +HH:MM or +HHMM; PostgreSQL prints +HH when minutes are 0.
        texts = pc.replace_substring_regex(texts, pattern=r"([+-][0-9]{2})$", replacement=r"\1:00")
    try:
        return pc.cast(texts, arrow)
    except pa.ArrowException:
        return None  # e.g. February 30th, or a value too wide for the column: Python decides
