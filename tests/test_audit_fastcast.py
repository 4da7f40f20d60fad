"""The typed columns Arrow's C++ makes (walrecover.audit.fastcast) are exactly the ones the
per-value Python conversion makes: same type, same values, same NULLs, for well-formed and
awkward text alike (numeric exactness, NaN/Infinity, time zones, out-of-range values, bool and
int spellings), and an image the fast reader cannot prove it reads alike goes to Python."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrecover.audit import fastcast
from walrecover.audit.format import values_json
from walrecover.audit.pgarrow import TypedField, pg_arrow_type, python_arrays, typed_arrays

TYPES = [
    "smallint",
    "integer",
    "bigint",
    "oid",
    "numeric(12,2)",
    "numeric(5,5)",
    "numeric(3,0)",
    "numeric(38,10)",
    "numeric",
    "timestamp with time zone",
    "timestamp without time zone",
    "date",
    "boolean",
    "text",
    "jsonb",
    "real",
    "interval",
    "integer[]",
]

#: Text each type's converters may disagree on, if anything does.
EDGES = [
    "0", "-0", "+5", " 5", "5 ", "007", "1_000", "1e5", "1E-3", "١٢", "32767", "32768", "-32769",
    "2147483648", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
    "99999999999999999999", "NaN", "nan", "Infinity", "-Infinity", "inf", "", " ",
    "0.00", "0.0", "0", "0.5", "-0.5", "0.123", "0.12345", "0.123456", "1.", ".5", "1.230",
    "12.345", "9999999999.99", "10000000000.00", "-9999999999.99", "999", "1000", "-999",
    "000001.50", "1.5e2", "12,50",
    "2024-05-01 20:00:00+00", "2024-05-01 20:00:00.5+05:30", "2024-05-01 20:00:00.123456-03",
    "2024-05-01 20:00:00.1234567+00", "2024-05-01 20:00:00+00:19:32", "2024-02-30 10:00:00+00",
    "2023-02-29 10:00:00+00", "2024-02-29 10:00:00+00", "0000-01-01 00:00:00+00",
    "0001-01-01 00:00:00+00", "0001-01-01 00:00:00+05", "9999-12-31 23:59:59.999999-05",
    "10000-01-01 00:00:00+00", "0044-03-15 12:00:00+00 BC", "2024-05-01 24:00:00+00",
    "2024-05-01 23:60:00+00", "2024-05-01 23:59:60+00", "2024-05-01 20:00:00+24",
    "2024-05-01 20:00:00+23:59", "2024-05-01T20:00:00+00", "2024-05-01 20:00:00Z",
    "2024-05-01 20:00:00+0530", "2024-05-01 20:00:00", "2024-05-01 20:00:00.000001",
    "2024-05-01", "0000-12-31", "2024-13-01", "2024-1-1", "20240501", "infinity", "-infinity",
    "t", "f", "true", "false", "T", "TRUE", "yes", "1", "on", "{1,2}", "1 day",
    "2024-05-01 20:00", "2024-05-01 20:00:00.+00", "\u00e9", "\x00", '"', "\\",
]  # fmt: skip


def field(pg_type: str) -> TypedField:
    arrow, convert = pg_arrow_type(pg_type)
    return TypedField("new_c", "c", "new", pg_type, arrow, convert)


def table_of(values: Sequence[str | None]) -> pa.Table:
    images = [None if v == "<no image>" else values_json({"c": v, "id": "1"}) for v in values]
    return pa.table({"new_values": pa.array(images, pa.string())})


def assert_same(values: Sequence[str | None], pg_type: str) -> None:
    typed = field(pg_type)
    table = table_of(values)
    try:
        [slow] = python_arrays(table, [typed])
    except (pa.ArrowInvalid, OverflowError) as exc:  # a value too wide for the column
        with pytest.raises(type(exc)):
            typed_arrays(table, [typed])
        return
    [fast] = typed_arrays(table, [typed])
    assert fast.type == slow.type == typed.arrow
    if pa.types.is_floating(typed.arrow):  # NaN is not equal to itself; repr shows -0.0
        assert repr(fast.to_pylist()) == repr(slow.to_pylist())
    else:
        assert fast.equals(slow), (pg_type, values, fast, slow)


@pytest.mark.parametrize("pg_type", TYPES)
def test_each_edge_value_converts_as_python_does(pg_type: str) -> None:
    for value in EDGES:
        assert_same([value], pg_type)
        assert_same(["1", value, None], pg_type)
    assert_same(EDGES, pg_type)
    assert_same([None, "<no image>", None], pg_type)


def decimal_texts() -> st.SearchStrategy[str]:
    return st.builds(
        lambda digits, scale, sign: (
            sign
            + (digits[:-scale] or "0")
            + ("." + digits[-scale:].rjust(scale, "0") if scale else "")
        ),
        st.text("0123456789", min_size=1, max_size=42),
        st.integers(0, 12),
        st.sampled_from(["", "-"]),
    )


def timestamp_texts() -> st.SearchStrategy[str]:
    def render(moment: datetime, minutes: int, style: int) -> str:
        offset = timezone(timedelta(minutes=minutes))
        text = moment.replace(tzinfo=offset).isoformat(sep=" ")
        if style == 1:
            text = text.removesuffix(":00")  # PostgreSQL's +HH
        elif style == 2:
            text = text[:19]  # no offset
        elif style == 3:
            text = text[:10]  # a date
        return text

    return st.builds(
        render,
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
        st.integers(-23 * 60 - 59, 23 * 60 + 59),
        st.integers(0, 3),
    )


def texts() -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        st.sampled_from(EDGES),
        st.integers(-(2**70), 2**70).map(str),
        decimal_texts(),
        timestamp_texts(),
        st.text(max_size=12),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(texts(), max_size=12), st.sampled_from(TYPES))
def test_generated_text_converts_as_python_does(values: list[str | None], pg_type: str) -> None:
    assert_same(values, pg_type)


def test_a_numeric_too_wide_for_its_column_is_not_wrapped_around() -> None:
    """Arrow's cast overflows without an error when a value's digits and the scale pass 38
    (``110000000.0`` as ``numeric(38,31)`` came back ``7915289.92...``): the fast path must
    leave such a value to Python, which refuses it (NULL), and keep every value that fits."""
    for value, pg_type in [
        ("110000000.0", "numeric(38,31)"),
        ("-110000000.0", "numeric(38,31)"),
        ("1" + "0" * 38, "numeric(38,0)"),
        ("9" * 37 + ".5", "numeric(38,2)"),
        ("1" + "0" * 30, "numeric(38,37)"),
        ("-683334132861091099241847769765815.119325", "numeric(37,6)"),  # 39 digits
    ]:
        assert_same([value], pg_type)
        [typed] = typed_arrays(table_of([value]), [field(pg_type)])
        assert typed.to_pylist() == [None], (value, pg_type, typed)
    widest = ["9" * 7 + "." + "9" * 31, "-" + "9" * 36 + ".99", "9" * 38]
    for value, pg_type in zip(
        widest, ["numeric(38,31)", "numeric(38,2)", "numeric(38,0)"], strict=True
    ):
        assert_same([value], pg_type)
        [typed] = typed_arrays(table_of([value]), [field(pg_type)])
        assert str(typed[0].as_py()) == value, (value, pg_type)


@settings(max_examples=200, deadline=None)
@given(st.lists(decimal_texts(), min_size=1, max_size=8), st.integers(1, 38), st.data())
def test_numeric_is_exact_for_every_precision_and_scale(
    values: list[str], precision: int, data: st.DataObject
) -> None:
    scale = data.draw(st.integers(0, precision))
    assert_same(values, f"numeric({precision},{scale})")


def test_the_fast_path_reads_what_values_json_writes() -> None:
    """Every code point, quotes, backslashes and control characters in keys and values."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    pieces = ['"\\' + "".join(chars[i : i + 4096]) for i in range(0, len(chars), 4096)]
    images = [values_json({"c": p, p[:9]: p, "n": None}) for p in pieces]
    table = fastcast.image_texts(pa.array(images), ["c", pieces[0][:9], "n", "absent"])
    assert table is not None
    assert table.column("c").to_pylist() == pieces
    assert table.column("n").null_count == table.column("absent").null_count == len(pieces)
    assert_same(pieces, "text")


@pytest.mark.parametrize(
    "image",
    [
        '{"c": 5}',
        '{"c": 1.50}',
        '{"c": NaN}',
        '{"c": true}',
        '{"c": ["1"]}',
        '{"c": {"x": "1"}}',
        '{"c": "1", "c": "2"}',
        '{"c":"1"}',
        '{"c": "1" }',
        '{"c": "1",\n"id": "2"}',
        '{"c": "\\ud83d\\ude00"}',
        '{"c": "\\ud800"}',
        '{"c": "1"} {"c": "2"}',
        '{"c": "1", "\\u0063": "2"}',
        '{"\\u0063": "2"}',
        '{"c": "\\u00e9\\/\\t"}',
        "null",
        "{}",
        "",
    ],
)
def test_an_image_not_written_by_values_json_reads_as_python_reads_it(image: str) -> None:
    table = pa.table({"new_values": pa.array([image, '{"c": "7"}', None], pa.string())})
    flat = fastcast.image_texts(table.column("new_values"), ["c"])
    readable = ("{}", '{"\\u0063": "2"}', '{"c": "\\u00e9\\/\\t"}')
    assert (flat is not None) == (image in readable)
    for pg_type in ("text", "integer", "numeric(5,2)"):
        typed = field(pg_type)
        try:
            slow = python_arrays(table, [typed])
        except Exception as exc:
            with pytest.raises(type(exc)):
                typed_arrays(table, [typed])
            continue
        assert typed_arrays(table, [typed])[0].equals(slow[0])


def test_an_image_column_that_is_not_text_goes_to_python() -> None:
    images = pa.array(['{"c": "1"}'], pa.large_string())
    assert fastcast.image_texts(images, ["c"]) is None
    assert_same(["1", None], "integer")


def test_timestamps_at_the_ends_of_the_range_are_the_same_instant() -> None:
    values = ["0001-01-01 00:00:00+05", "9999-12-31 23:59:59.999999-05", "2024-05-01 20:00:00+00"]
    assert_same(values, "timestamp with time zone")
    [fast] = typed_arrays(table_of(values), [field("timestamp with time zone")])
    assert fast[2].as_py() == datetime(2024, 5, 1, 20, tzinfo=UTC)


def test_money_is_never_a_float() -> None:
    values = ["0.10", "0.20", "-99999999.99", "12.30"]
    [fast] = typed_arrays(table_of(values), [field("numeric(12,2)")])
    assert fast.type == pa.decimal128(12, 2)
    assert [str(v) for v in fast.to_pylist()] == values
    assert json.loads(values_json({"c": "0.10"}) or "")["c"] == "0.10"


@pytest.mark.parametrize(
    ("pg_type", "values"),
    [
        ("smallint", ["-32768", "0", "32767"]),
        ("bigint", ["-9223372036854775808", "9223372036854775807"]),
        ("numeric(12,2)", ["0.10", "-9999999999.99", "5", "0", "-0.5"]),
        ("numeric(4,4)", ["0.1234", "-0.0001", "0.0"]),
        ("timestamp with time zone", ["2024-05-01 20:00:00+00", "1999-12-31 23:59:59.5-03:30"]),
        ("timestamp without time zone", ["2024-05-01 20:00:00", "0001-01-01 00:00:00.000001"]),
        ("date", ["2024-02-29", "0001-01-01", "9999-12-31"]),
        ("boolean", ["t", "f"]),
        ("text", ["x", ""]),
    ],
)
def test_postgresql_output_takes_the_fast_path(pg_type: str, values: list[str]) -> None:
    """What PostgreSQL prints for these types is made by Arrow, not sent back to Python."""
    texts = pa.array([*values, None], pa.string())
    assert fastcast.cast_texts(texts, field(pg_type)) is not None
    assert_same([*values, None], pg_type)
