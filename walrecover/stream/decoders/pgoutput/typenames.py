"""Type names: what PostgreSQL's ``format_type`` prints for a column's type oid and typmod,
for the built-in types, and for custom types named by the stream's Type messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

#: Built-in scalar types: oid -> (internal name, what ``format_type`` prints without a typmod).
_SCALARS: Final[dict[int, tuple[str, str]]] = {
    16: ("bool", "boolean"),
    17: ("bytea", "bytea"),
    18: ("char", '"char"'),
    19: ("name", "name"),
    20: ("int8", "bigint"),
    21: ("int2", "smallint"),
    23: ("int4", "integer"),
    24: ("regproc", "regproc"),
    25: ("text", "text"),
    26: ("oid", "oid"),
    27: ("tid", "tid"),
    28: ("xid", "xid"),
    29: ("cid", "cid"),
    114: ("json", "json"),
    142: ("xml", "xml"),
    600: ("point", "point"),
    601: ("lseg", "lseg"),
    602: ("path", "path"),
    603: ("box", "box"),
    604: ("polygon", "polygon"),
    628: ("line", "line"),
    650: ("cidr", "cidr"),
    700: ("float4", "real"),
    701: ("float8", "double precision"),
    718: ("circle", "circle"),
    774: ("macaddr8", "macaddr8"),
    790: ("money", "money"),
    829: ("macaddr", "macaddr"),
    869: ("inet", "inet"),
    1042: ("bpchar", "bpchar"),
    1043: ("varchar", "character varying"),
    1082: ("date", "date"),
    1083: ("time", "time without time zone"),
    1114: ("timestamp", "timestamp without time zone"),
    1184: ("timestamptz", "timestamp with time zone"),
    1186: ("interval", "interval"),
    1266: ("timetz", "time with time zone"),
    1560: ("bit", '"bit"'),
    1562: ("varbit", "bit varying"),
    1700: ("numeric", "numeric"),
    2205: ("regclass", "regclass"),
    2206: ("regtype", "regtype"),
    2950: ("uuid", "uuid"),
    3220: ("pg_lsn", "pg_lsn"),
    3614: ("tsvector", "tsvector"),
    3615: ("tsquery", "tsquery"),
    3802: ("jsonb", "jsonb"),
    3904: ("int4range", "int4range"),
    3906: ("numrange", "numrange"),
    3908: ("tsrange", "tsrange"),
    3910: ("tstzrange", "tstzrange"),
    3912: ("daterange", "daterange"),
    3926: ("int8range", "int8range"),
    4072: ("jsonpath", "jsonpath"),
    5069: ("xid8", "xid8"),
}

#: Built-in array types: array oid -> element oid (``format_type`` prints the element + ``[]``).
_ARRAYS: Final[dict[int, int]] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1008: 24, 1009: 25,
    1028: 26, 1010: 27, 1011: 28, 1012: 29, 199: 114, 143: 142, 1017: 600, 1018: 601, 1019: 602,
    1020: 603, 1027: 604, 629: 628, 651: 650, 1021: 700, 1022: 701, 719: 718, 775: 774,
    791: 790, 1040: 829, 1041: 869, 1014: 1042, 1015: 1043, 1182: 1082, 1183: 1083, 1115: 1114,
    1185: 1184, 1187: 1186, 1270: 1266, 1561: 1560, 1563: 1562, 1231: 1700, 2210: 2205,
    2211: 2206, 2951: 2950, 3221: 3220, 3643: 3614, 3645: 3615, 3807: 3802, 3905: 3904,
    3907: 3906, 3909: 3908, 3911: 3910, 3913: 3912, 3927: 3926, 4073: 4072, 271: 5069,
}  # fmt: skip

_BUILTIN_BY_NAME: Final[dict[str, int]] = {
    **{internal: oid for oid, (internal, _) in _SCALARS.items()},
    **{"_" + _SCALARS[element][0]: oid for oid, element in _ARRAYS.items()},
}

# Interval typmod: range bits (PostgreSQL's INTERVAL_MASK) -> the fields format_type prints.
_MONTH, _YEAR, _DAY, _HOUR, _MINUTE, _SECOND = (1 << 1, 1 << 2, 1 << 3, 1 << 10, 1 << 11, 1 << 12)
_INTERVAL_FIELDS: Final[dict[int, str]] = {
    _YEAR: " year",
    _MONTH: " month",
    _DAY: " day",
    _HOUR: " hour",
    _MINUTE: " minute",
    _SECOND: " second",
    _YEAR | _MONTH: " year to month",
    _DAY | _HOUR: " day to hour",
    _DAY | _HOUR | _MINUTE: " day to minute",
    _DAY | _HOUR | _MINUTE | _SECOND: " day to second",
    _HOUR | _MINUTE: " hour to minute",
    _HOUR | _MINUTE | _SECOND: " hour to second",
    _MINUTE | _SECOND: " minute to second",
    0x7FFF: "",
}


def _numeric(typmod: int) -> str:
    # PostgreSQL 15+ packs a signed 11-bit scale; earlier versions never set its high bits.
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024
    return f"numeric({precision},{scale})"


def _interval(typmod: int) -> str:
    fields = _INTERVAL_FIELDS.get((typmod >> 16) & 0x7FFF, "")
    precision = typmod & 0xFFFF
    return f"interval{fields}" + (f"({precision})" if precision != 0xFFFF else "")


#: Types whose typmod ``format_type`` prints: oid -> formatter for a typmod >= 0.
_MODIFIERS: Final[dict[int, Callable[[int], str]]] = {
    1042: lambda t: f"character({t - 4})",
    1043: lambda t: f"character varying({t - 4})",
    1700: _numeric,
    1083: lambda t: f"time({t}) without time zone",
    1266: lambda t: f"time({t}) with time zone",
    1114: lambda t: f"timestamp({t}) without time zone",
    1184: lambda t: f"timestamp({t}) with time zone",
    1186: _interval,
    1560: lambda t: f"bit({t})",
    1562: lambda t: f"bit varying({t})",
}


def format_type(type_oid: int, typmod: int = -1) -> str:
    """The type name PostgreSQL's ``format_type(oid, typmod)`` prints, for built-in types.

    ``numeric(12,2)``, ``character varying(20)``, ``timestamp(3) with time zone``,
    ``integer[]``; ``""`` for a type this table does not know (a custom type: see
    :class:`PgoutputDecoder`'s ``type_name`` hook and Type messages).
    """
    element = _ARRAYS.get(type_oid)
    if element is not None:
        name = _format_scalar(element, typmod)
        return name + "[]" if name else ""
    return _format_scalar(type_oid, typmod)


def _format_scalar(type_oid: int, typmod: int) -> str:
    known = _SCALARS.get(type_oid)
    if known is None:
        return ""
    modifier = _MODIFIERS.get(type_oid)
    return modifier(typmod) if modifier is not None and typmod >= 0 else known[1]


def quote_ident(name: str) -> str:
    """An identifier as ``format_type`` would print it (quoted unless plain lower case)."""
    plain = (
        name
        and (name[0].islower() or name[0] == "_")
        and all(ch.islower() or ch.isdigit() or ch == "_" for ch in name)
        and name.isascii()
    )
    return name if plain else '"' + name.replace('"', '""') + '"'


def custom_type_name(namespace: str, name: str, typmod: int) -> str:
    """A type named by a Type message (the base type's name, for a domain)."""
    if not namespace:  # pg_catalog: a domain over a built-in type
        builtin = _BUILTIN_BY_NAME.get(name)
        return format_type(builtin, typmod) if builtin is not None else quote_ident(name)
    if namespace == "public":
        return quote_ident(name)
    return f"{quote_ident(namespace)}.{quote_ident(name)}"
