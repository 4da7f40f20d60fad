"""PostgreSQL's text output of intervals and arrays, parsed exactly (no pyarrow needed).

The audit's typed columns (:mod:`walrecover.audit.pgarrow`) and the recovery's value checks
(:mod:`walrecover.stream.value_check`, :mod:`walrecover.stream.value_shapes`) both read these;
they live apart from the Arrow conversions so a recovery without ``--audit`` never loads pyarrow.
"""

from __future__ import annotations

import re

_INTERVAL_UNITS = {
    "year": 12,
    "years": 12,
    "mon": 1,
    "mons": 1,
    "day": 0,
    "days": 0,
}
_INTERVAL_TIME = re.compile(r"^([+-]?)(\d+):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$")


def parse_interval(text: str) -> dict[str, int]:
    """An interval in PostgreSQL's ``postgres`` IntervalStyle as months, days, microseconds.

    ``1 year 2 mons 3 days 04:05:06.5`` -> ``{"months": 14, "days": 3, "microseconds":
    14706500000}``. The three parts are kept apart, as PostgreSQL keeps them (a month is not a
    number of days), so the value is exact.
    """
    months = days = micros = 0
    tokens = text.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        clock = _INTERVAL_TIME.match(token)
        if clock:
            sign, hours, minutes, seconds, fraction = clock.groups()
            value = ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1_000_000
            value += int((fraction or "").ljust(6, "0") or 0)
            micros += -value if sign == "-" else value
            i += 1
            continue
        if i + 1 >= len(tokens) or tokens[i + 1] not in _INTERVAL_UNITS:
            raise ValueError(f"{text!r} is not an interval in the postgres style")
        amount, unit = int(token), tokens[i + 1]
        if unit.startswith("day"):
            days += amount
        else:
            months += amount * _INTERVAL_UNITS[unit]
        i += 2
    if not (-(2**31) <= months < 2**31 and -(2**31) <= days < 2**31):
        raise ValueError("interval out of range")
    return {"months": months, "days": days, "microseconds": micros}


def parse_array(text: str) -> list[str | None]:
    """The elements of a one-dimensional array in PostgreSQL's output format, as text.

    ``{1,NULL,"a b","q\\"d"}`` -> ``["1", None, "a b", 'q"d']``. Arrays with more than one
    dimension or explicit bounds (``[0:1]={...}``) raise ``ValueError``: no Arrow list type
    can say what they are without guessing, so the typed cell stays NULL.
    """
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError("an array with explicit bounds")
    body = text[1:-1]
    if not body:
        return []
    if body.startswith("{"):
        raise ValueError("a multi-dimensional array")
    items: list[str | None] = []
    i, n = 0, len(body)
    while True:
        if body[i] == '"':
            i += 1
            chars = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            i += 1
            items.append("".join(chars))
        else:
            j = body.find(",", i)
            j = n if j == -1 else j
            token = body[i:j]
            items.append(None if token == "NULL" else token)
            i = j
        if i >= n:
            return items
        if body[i] != ",":
            raise ValueError("malformed array")
        i += 1
