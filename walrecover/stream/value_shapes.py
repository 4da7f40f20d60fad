"""The text shapes of the values whose output depends on a session's settings: which columns
hold them (:func:`classify`), and which ``DateStyle``/``IntervalStyle`` can have printed a given
date, timestamp or interval text. :mod:`walrecover.stream.value_check` uses them.
"""

from __future__ import annotations

import re
from enum import Enum

from .model import Column
from .pgtext import parse_interval


class Kind(Enum):
    """The kinds of value whose text depends on the output settings."""

    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    INTERVAL = "interval"
    BYTEA = "bytea"
    FLOAT = "float"


_SCALARS = {
    "date": Kind.DATE,
    "timestamp": Kind.TIMESTAMP,
    "timestamp without time zone": Kind.TIMESTAMP,
    "timestamptz": Kind.TIMESTAMPTZ,
    "timestamp with time zone": Kind.TIMESTAMPTZ,
    "bytea": Kind.BYTEA,
    "real": Kind.FLOAT,
    "double precision": Kind.FLOAT,
    "float4": Kind.FLOAT,
    "float8": Kind.FLOAT,
}
_RANGES = {"daterange": Kind.DATE, "tsrange": Kind.TIMESTAMP, "tstzrange": Kind.TIMESTAMPTZ}
_OIDS = {
    1082: (Kind.DATE, "scalar"),
    1114: (Kind.TIMESTAMP, "scalar"),
    1184: (Kind.TIMESTAMPTZ, "scalar"),
    1186: (Kind.INTERVAL, "scalar"),
    17: (Kind.BYTEA, "scalar"),
    700: (Kind.FLOAT, "scalar"),
    701: (Kind.FLOAT, "scalar"),
    1182: (Kind.DATE, "array"),
    1115: (Kind.TIMESTAMP, "array"),
    1185: (Kind.TIMESTAMPTZ, "array"),
    1187: (Kind.INTERVAL, "array"),
    1001: (Kind.BYTEA, "array"),
    1021: (Kind.FLOAT, "array"),
    1022: (Kind.FLOAT, "array"),
    3912: (Kind.DATE, "range"),
    3908: (Kind.TIMESTAMP, "range"),
    3910: (Kind.TIMESTAMPTZ, "range"),
}


def classify(column: Column) -> tuple[Kind, str] | None:
    """``(kind, "scalar" | "array" | "range")`` for a column whose text depends on the
    settings, from its type name (``timestamp(3) with time zone[]``) or, failing that, its OID."""
    name = re.sub(r"\(.*?\)", "", column.type_name or "").strip().lower()
    container = "scalar"
    if name.endswith("[]"):
        name, container = name[:-2].strip(), "array"
    name = re.sub(r"^pg_catalog\.", "", name)
    if name in _SCALARS:
        return _SCALARS[name], container
    if name.startswith("interval"):
        return Kind.INTERVAL, container
    if name in _RANGES and container == "scalar":
        return _RANGES[name], "range"
    if column.type_oid is not None and column.type_oid in _OIDS:
        return _OIDS[column.type_oid]
    return None


TIME = r"\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?"
_BC = r"(?: BC)?"
_YEAR = r"(?P<y>\d{4,})"
_ISO_ZONE = r"[+-]\d{2}(?::\d{2}){0,2}"
_ZONE = r"(?P<zone>(?!BC$)\S+)"
_MON = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_DOW = r"(?:Sun|Mon|Tue|Wed|Thu|Fri|Sat)"
_DATES = {
    "ISO": rf"{_YEAR}-(?P<a>\d{{2}})-(?P<b>\d{{2}})",
    "SQL": rf"(?P<a>\d{{2}})/(?P<b>\d{{2}})/{_YEAR}",
    "Postgres": rf"(?P<a>\d{{2}})-(?P<b>\d{{2}})-{_YEAR}",
    "German": rf"(?P<a>\d{{2}})\.(?P<b>\d{{2}})\.{_YEAR}",
}


def _shapes(kind: Kind) -> list[tuple[str, re.Pattern[str]]]:
    """``(style, pattern)`` for each DateStyle's output of ``kind``. In the numeric styles the
    first two fields are groups ``a`` and ``b``; Postgres timestamps name the month (``mon``)."""
    found = []
    for style, date in _DATES.items():
        if kind is Kind.DATE:
            body = date
        elif style == "Postgres":
            day = r"(?P<day>\d{2})"
            zone = f" {_ZONE}" if kind is Kind.TIMESTAMPTZ else ""
            found.append(
                ("Postgres MDY", re.compile(rf"{_DOW} {_MON} {day} {TIME} {_YEAR}{zone}{_BC}"))
            )
            found.append(
                ("Postgres DMY", re.compile(rf"{_DOW} {day} {_MON} {TIME} {_YEAR}{zone}{_BC}"))
            )
            continue
        elif kind is Kind.TIMESTAMP:
            body = f"{date} {TIME}"
        elif style == "ISO":
            body = f"{date} {TIME}{_ISO_ZONE}"
        else:
            body = f"{date} {TIME} {_ZONE}"
        found.append((style, re.compile(body + _BC)))
    return found


SHAPES = {kind: _shapes(kind) for kind in (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMPTZ)}


def datestyles(text: str, kind: Kind) -> tuple[set[str], re.Match[str] | None]:
    """The ``Style ORDER`` values (``SQL DMY``, ``ISO YMD``, ...) that could print ``text``, and
    the match of the first."""
    found: set[str] = set()
    first = None
    for style, pattern in SHAPES[kind]:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        first = first or match
        groups = match.groupdict()
        if style.startswith("Postgres ") and "mon" in groups and groups["mon"]:
            found.add(style)
            continue
        a, b = int(groups["a"]), int(groups["b"])
        if style == "ISO":
            if 1 <= a <= 12 and 1 <= b <= 31:
                found.add("ISO YMD")
            continue
        if style == "German":
            if 1 <= b <= 12 and 1 <= a <= 31:
                found.add("German DMY")
            continue
        if 1 <= a <= 12 and 1 <= b <= 31:
            found.add(f"{style} MDY")
        if 1 <= b <= 12 and 1 <= a <= 31:
            found.add(f"{style} DMY")
    return found, first


def datestyle_option(found: set[str]) -> str:
    """How to state a DateStyle that prints like ``found`` (``'SQL, DMY'``)."""
    values = sorted(
        {
            "ISO"
            if item == "ISO YMD"
            else "German"
            if item == "German DMY"
            else item.replace(" ", ", ")
            for item in found
        }
    )
    return " or ".join(repr(value) for value in values)


_SQL_INTERVAL = re.compile(
    r"0|(?:[+-]?\d+-\d+)(?: [+-]?\d+ [+-]?\d+:\d{2}:\d{2}(?:\.\d+)?)?"
    r"|(?:[+-]?\d+ )?[+-]?\d+:\d{2}:\d{2}(?:\.\d+)?"
)
_ISO_INTERVAL = re.compile(
    r"P(?:-?\d+Y)?(?:-?\d+M)?(?:-?\d+D)?(?:T(?:-?\d+H)?(?:-?\d+M)?(?:-?\d+(?:\.\d+)?S)?)?"
)
_VERBOSE_INTERVAL = re.compile(
    r"@ (?:0|(?:[+-]?\d+(?:\.\d+)? (?:years?|mons?|days?|hours?|mins?|secs?)"
    r"(?: [+-]?\d+(?:\.\d+)? (?:years?|mons?|days?|hours?|mins?|secs?))*(?: ago)?))"
)


def intervalstyles(text: str) -> set[str]:
    """The IntervalStyles that could print ``text``."""
    found = set()
    try:
        parse_interval(text)
        found.add("postgres")
    except ValueError:
        pass
    if _SQL_INTERVAL.fullmatch(text):
        found.add("sql_standard")
    if _ISO_INTERVAL.fullmatch(text):
        found.add("iso_8601")
    if _VERBOSE_INTERVAL.fullmatch(text):
        found.add("postgres_verbose")
    return found


HEX = re.compile(r"\\x(?:[0-9a-fA-F]{2})*")
ESCAPE = re.compile(r"(?:[^\\]|\\\\|\\[0-7]{3})*")


def range_bounds(text: str) -> list[str]:
    """The non-empty bounds of a range's text (``["a","b")`` -> ``["a", "b"]``), unquoted."""
    if text == "empty" or len(text) < 3 or text[0] not in "[(" or text[-1] not in "])":
        return []
    body, bounds, i = text[1:-1], [], 0
    while i <= len(body):
        if i < len(body) and body[i] == '"':
            i += 1
            chars = []
            while i < len(body) and body[i] != '"':
                if body[i] == "\\":
                    i += 1
                if i < len(body):
                    chars.append(body[i])
                i += 1
            i += 1
            bounds.append("".join(chars))
        else:
            j = body.find(",", i)
            j = len(body) if j == -1 else j
            if j > i:
                bounds.append(body[i:j])
            i = j
        i += 1  # the comma
    return bounds
