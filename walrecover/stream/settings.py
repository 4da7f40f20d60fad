"""The output settings a capture was printed with, applied where its text is parsed, and checked.

A logical decoding stream prints each value with the type's output function, under the decoding
session's ``DateStyle``, ``IntervalStyle``, ``TimeZone``, ``bytea_output`` and
``extra_float_digits``. walrecover's own slot reads fix them (``db.SESSION_SETTINGS``), but
``pg_recvlogical``'s session has whatever the server, database, role or ``PGOPTIONS`` set: a
capture made under ``DateStyle = 'SQL, DMY'`` holds ``17/12/2024``, under ``IntervalStyle =
sql_standard`` ``-1 2:00:00`` (which the default style reads as ``-1 days +02:00:00``).

:class:`CaptureSettings` is what the user states (``--capture-setting NAME=VALUE``; PostgreSQL's
built-in defaults otherwise). :func:`apply` sets them on the target session, so COPY and the
update/delete statements parse the text as it was printed. :class:`ValueChecker` looks at every
date, timestamp, interval and bytea value (also in arrays and ranges) of the tables being read and
stops at the first one the stated settings cannot have printed, naming the column, the value and
the option to give. Zone abbreviations (non-ISO DateStyles print ``EST``, ``IST``) are read back
once per abbreviation and day on the target server: PostgreSQL reads ``IST`` as Israel's +02
while ``Asia/Kolkata`` printed it for +05:30, and that value cannot be carried exactly.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import psycopg

from ..audit.pgarrow import parse_array, parse_interval
from ..db import Connection, one
from ..errors import CaptureSettingError, WalrecoverError, first_line
from .model import Change, Column, Event, Relation, TableName

#: PostgreSQL's built-in defaults (the boot values; see the "Client Connection Defaults" docs),
#: assumed for a setting the user does not state.
DEFAULTS: dict[str, str] = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "GMT",
    "bytea_output": "hex",
    "extra_float_digits": "1",
}

_NAMES = {name.lower(): name for name in DEFAULTS}
_INTERVAL_STYLES = ("postgres", "postgres_verbose", "sql_standard", "iso_8601")
_DATE_STYLES = {"iso": "ISO", "sql": "SQL", "postgres": "Postgres", "german": "German"}
_DATE_ORDERS = {
    "ymd": "YMD",
    "dmy": "DMY",
    "euro": "DMY",
    "european": "DMY",
    "mdy": "MDY",
    "us": "MDY",
    "noneuro": "MDY",
    "noneuropean": "MDY",
}


def _datestyle(value: str) -> str:
    """``value`` as ``SHOW DateStyle`` prints it (``sql,dmy`` -> ``SQL, DMY``), as PostgreSQL
    reads it: German alone means day first; an order alone keeps the ISO output."""
    style = order = None
    for token in (t for t in re.split(r"[\s,]+", value.strip()) if t):
        word = token.lower()
        if word == "default":
            new_style, new_order = "ISO", "MDY"
        elif word in _DATE_STYLES:
            new_style, new_order = _DATE_STYLES[word], None
        elif word in _DATE_ORDERS:
            new_style, new_order = None, _DATE_ORDERS[word]
        else:
            raise ValueError(f"DateStyle {value!r}: {token!r} is not a date style or field order")
        if new_style is not None:
            if style is not None and style != new_style:
                raise ValueError(f"DateStyle {value!r} names two output styles")
            style = new_style
        if new_order is not None:
            if order is not None and order != new_order:
                raise ValueError(f"DateStyle {value!r} names two field orders")
            order = new_order
    if style is None and order is None:
        raise ValueError("DateStyle is empty")
    if order is None:
        order = "DMY" if style == "German" else "MDY"
    return f"{style or 'ISO'}, {order}"


@dataclass(frozen=True)
class CaptureSettings:
    """The output settings of the session that printed a capture (pg_recvlogical's).

    Build it with :meth:`parse` from ``NAME=VALUE`` pairs; a setting not given is PostgreSQL's
    built-in default (:data:`DEFAULTS`).
    """

    datestyle: str = DEFAULTS["DateStyle"]
    intervalstyle: str = DEFAULTS["IntervalStyle"]
    timezone: str = DEFAULTS["TimeZone"]
    bytea_output: str = DEFAULTS["bytea_output"]
    extra_float_digits: int = 1
    #: The settings the user stated (PostgreSQL's names), for messages and the audit.
    stated: tuple[str, ...] = ()

    @classmethod
    def parse(cls, given: Mapping[str, str] | None) -> CaptureSettings:
        """Settings from ``{name: value}`` (names as PostgreSQL spells them, any case).

        Raises ``ValueError`` naming the setting for an unknown name or a value PostgreSQL
        would not accept (a time zone is checked by the target server when it is applied).
        """
        values = dict(DEFAULTS)
        stated = []
        for raw_name, raw_value in (given or {}).items():
            name = _NAMES.get(raw_name.strip().lower())
            if name is None:
                raise ValueError(
                    f"{raw_name!r} is not a capture setting walrecover applies "
                    f"(give one of {', '.join(DEFAULTS)})"
                )
            value = raw_value.strip().strip("'\"").strip()
            values[name] = value
            stated.append(name)
        datestyle = _datestyle(values["DateStyle"])
        intervalstyle = values["IntervalStyle"].lower()
        if intervalstyle not in _INTERVAL_STYLES:
            raise ValueError(
                f"IntervalStyle {values['IntervalStyle']!r} is not one of "
                f"{', '.join(_INTERVAL_STYLES)}"
            )
        bytea_output = values["bytea_output"].lower()
        if bytea_output not in ("hex", "escape"):
            raise ValueError(f"bytea_output {values['bytea_output']!r} is not hex or escape")
        try:
            digits = int(values["extra_float_digits"])
        except ValueError:
            raise ValueError(
                f"extra_float_digits {values['extra_float_digits']!r} is not a whole number"
            ) from None
        if not -15 <= digits <= 3:
            raise ValueError(f"extra_float_digits {digits} is not between -15 and 3")
        if not values["TimeZone"]:
            raise ValueError("TimeZone is empty")
        return cls(
            datestyle=datestyle,
            intervalstyle=intervalstyle,
            timezone=values["TimeZone"],
            bytea_output=bytea_output,
            extra_float_digits=digits,
            stated=tuple(dict.fromkeys(stated)),
        )

    @property
    def date_output(self) -> str:
        """The output style: ``ISO``, ``SQL``, ``Postgres`` or ``German``."""
        return self.datestyle.split(",")[0]

    @property
    def date_order(self) -> str:
        """The order the output style prints day and month in: ``YMD`` (ISO), ``DMY``, ``MDY``.

        SQL and Postgres print month first unless the order is DMY (YMD prints like MDY there);
        German always prints the day first.
        """
        style, order = self.datestyle.split(", ")
        if style == "ISO":
            return "YMD"
        if style == "German":
            return "DMY"
        return "DMY" if order == "DMY" else "MDY"

    def session(self) -> dict[str, str]:
        """The settings to give the session that parses the capture's text (the target)."""
        return {
            "DateStyle": self.datestyle,
            "IntervalStyle": self.intervalstyle,
            "TimeZone": self.timezone,
            "bytea_output": self.bytea_output,
            "extra_float_digits": str(self.extra_float_digits),
        }

    def to_dict(self) -> dict[str, Any]:
        """The settings and which were stated, for the audit's metadata and ``--json``."""
        return {**self.session(), "stated": list(self.stated)}

    def describe(self) -> str:
        """``DateStyle 'SQL, DMY', IntervalStyle sql_standard`` (the stated ones), or ''."""
        session = self.session()
        return ", ".join(
            f"{name} {session[name]!r}" if " " in session[name] else f"{name} {session[name]}"
            for name in self.stated
        )

    def warnings(self) -> list[str]:
        """What the user should know whatever the capture holds."""
        if self.extra_float_digits < 1:
            return [
                f"the capture was printed with extra_float_digits {self.extra_float_digits}, "
                "which rounds real and double precision values: digits lost at capture time "
                "cannot be recovered (extra_float_digits 1, the default, prints them exactly)"
            ]
        return []


#: What pg_recvlogical's session had when nothing is stated.
POSTGRES_DEFAULTS = CaptureSettings()


def apply(conn: Connection, settings: CaptureSettings) -> None:
    """Set ``settings`` on ``conn`` (a session that parses the capture's text), committed.

    Raises :class:`WalrecoverError` naming the setting the server refuses (an unknown time zone).
    """
    for name, value in settings.session().items():
        try:
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        except psycopg.errors.DataError as exc:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise WalrecoverError(
                f"--capture-setting {name}={value!r} is refused by the target server "
                f"({first_line(exc)}): give the value pg_recvlogical's session had, as "
                f"SHOW {name} prints it",
                setting=name,
            ) from None
    if not conn.autocommit:
        conn.commit()


def restore(conn: Connection) -> None:
    """Put walrecover's own session settings back on ``conn`` (after replaying a capture)."""
    from ..db import SESSION_SETTINGS  # noqa: PLC0415 - db imports nothing from here

    for name in DEFAULTS:
        conn.execute("SELECT set_config(%s, %s, false)", (name, SESSION_SETTINGS[name]))
    if not conn.autocommit:
        conn.commit()


# -- the checks -----------------------------------------------------------------------------------


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


_TIME = r"\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?"
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
                ("Postgres MDY", re.compile(rf"{_DOW} {_MON} {day} {_TIME} {_YEAR}{zone}{_BC}"))
            )
            found.append(
                ("Postgres DMY", re.compile(rf"{_DOW} {day} {_MON} {_TIME} {_YEAR}{zone}{_BC}"))
            )
            continue
        elif kind is Kind.TIMESTAMP:
            body = f"{date} {_TIME}"
        elif style == "ISO":
            body = f"{date} {_TIME}{_ISO_ZONE}"
        else:
            body = f"{date} {_TIME} {_ZONE}"
        found.append((style, re.compile(body + _BC)))
    return found


_SHAPES = {kind: _shapes(kind) for kind in (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMPTZ)}


def _datestyles(text: str, kind: Kind) -> tuple[set[str], re.Match[str] | None]:
    """The ``Style ORDER`` values (``SQL DMY``, ``ISO YMD``, ...) that could print ``text``, and
    the match of the first."""
    found: set[str] = set()
    first = None
    for style, pattern in _SHAPES[kind]:
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


def _datestyle_option(found: set[str]) -> str:
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


def _intervalstyles(text: str) -> set[str]:
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


_HEX = re.compile(r"\\x(?:[0-9a-fA-F]{2})*")
_ESCAPE = re.compile(r"(?:[^\\]|\\\\|\\[0-7]{3})*")


def _range_bounds(text: str) -> list[str]:
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


#: Reads a timestamptz text back on the target under the capture's settings: returns what the
#: server prints for it, or raises ``ValueError`` with the server's reason.
RoundTrip = Callable[[str], str]


@dataclass
class ValueChecker:
    """Stops at the first value of ``tables`` that ``settings`` cannot have printed.

    ``plugin`` matters for bytea (wal2json cannot carry it under ``bytea_output = escape``);
    ``roundtrip``, when given, reads zone abbreviations back on the target (see the module).
    """

    settings: CaptureSettings
    plugin: str
    tables: tuple[TableName, ...] = ()
    roundtrip: RoundTrip | None = None
    #: Per table (``(schema, name)``), the kinds of settings-dependent column its changes showed.
    kinds: dict[tuple[str, str], set[Kind]] = field(default_factory=dict)
    _columns: dict[Relation, list[tuple[str, Kind, str]]] = field(default_factory=dict)
    _zones_checked: set[tuple[str, str]] = field(default_factory=set)

    def events(self, events: Iterable[Event]) -> Iterator[Event]:
        """``events`` unchanged, each change checked before it is passed on."""
        wanted = {(t.schema, t.name) for t in self.tables}
        for event in events:
            if isinstance(event, Change) and (
                not wanted or (event.relation.schema, event.relation.name) in wanted
            ):
                self.check(event)
            yield event

    def check(self, change: Change) -> None:
        """Raise :class:`CaptureSettingError` for the first value that contradicts the settings."""
        columns = self._columns.get(change.relation)
        if columns is None:
            columns = []
            for column in change.relation.columns:
                found = classify(column)
                if found is not None:
                    columns.append((column.name, *found))
            self._columns[change.relation] = columns
            table = (change.relation.schema, change.relation.name)
            self.kinds.setdefault(table, set()).update(kind for _, kind, _ in columns)
        if not columns:
            return
        for image in (change.new, change.old):
            if not image:
                continue
            for name, kind, container in columns:
                text = image.get(name)
                if text is None or kind is Kind.FLOAT:
                    continue
                for item in self._items(text, container):
                    problem = self._problem(item, kind)
                    if problem is not None:
                        where = f" at LSN {change.lsn}" if change.lsn is not None else ""
                        shown = item if item == text else f"{item} (in {text})"
                        raise CaptureSettingError(
                            f"column {change.relation.qualified_name}.{name}{where}: "
                            f"{kind.value} value {_clip(shown)!r} {problem}",
                            column=name,
                            lsn=change.lsn,
                            value=item,
                        )

    @staticmethod
    def _items(text: str, container: str) -> list[str]:
        if container == "scalar":
            return [text]
        if container == "range":
            return _range_bounds(text)
        try:
            return [item for item in parse_array(text) if item is not None]
        except (ValueError, IndexError):
            return []  # a multi-dimensional array: parsed under the settings, not checked

    def _problem(self, text: str, kind: Kind) -> str | None:
        if kind is Kind.BYTEA:
            return self._bytea(text)
        if kind is Kind.INTERVAL:
            return self._interval(text)
        return self._datetime(text, kind)

    def _bytea(self, text: str) -> str | None:
        if self.plugin == "wal2json" and self.settings.bytea_output == "escape":
            return (
                "cannot be carried: under bytea_output escape wal2json cuts the first two "
                "characters of every bytea value; capture again with bytea_output hex "
                "(PGOPTIONS='-c bytea_output=hex') or with another plugin"
            )
        if self.settings.bytea_output == "hex":
            if _HEX.fullmatch(text):
                return None
            if _ESCAPE.fullmatch(text):
                return (
                    "is in bytea_output escape, not hex: give --capture-setting bytea_output=escape"
                )
            return "is not bytea output: check --plugin and -o"
        if _ESCAPE.fullmatch(text):
            return None
        if _HEX.fullmatch(text):
            return "is in bytea_output hex, not escape: give --capture-setting bytea_output=hex"
        return "is not bytea output: check --plugin and -o"

    def _interval(self, text: str) -> str | None:
        found = _intervalstyles(text)
        stated = self.settings.intervalstyle
        if stated in found:
            return None
        if found:
            style = sorted(found)[0]
            return (
                f"is not what IntervalStyle {stated} prints (it is IntervalStyle {style}'s "
                f"form): give --capture-setting IntervalStyle={style} (the IntervalStyle of "
                "the session that ran pg_recvlogical)"
            )
        return (
            f"is not what IntervalStyle {stated} prints: give --capture-setting "
            "IntervalStyle=<the IntervalStyle of the session that ran pg_recvlogical>"
        )

    def _datetime(self, text: str, kind: Kind) -> str | None:
        if text in ("infinity", "-infinity"):
            return None
        found, match = _datestyles(text, kind)
        style, order = self.settings.date_output, self.settings.date_order
        if f"{style} {order}" in found:
            if kind is Kind.TIMESTAMPTZ and style != "ISO" and match is not None:
                return self._zone(text, match)
            return None
        setting = f"DateStyle {self.settings.datestyle!r}"
        if found:
            return (
                f"is not what {setting} prints (it reads as DateStyle "
                f"{_datestyle_option(found)}): give --capture-setting "
                f"DateStyle={_datestyle_option(found).split(' or ')[0]} (the DateStyle of the "
                "session that ran pg_recvlogical; check the field order)"
            )
        return (
            f"is not what {setting} prints: give --capture-setting DateStyle=<the DateStyle "
            "of the session that ran pg_recvlogical>"
        )

    def _zone(self, text: str, match: re.Match[str]) -> str | None:
        """A zone abbreviation must read back as printed (once per abbreviation and day)."""
        zone = match.groupdict().get("zone") or ""
        if self.roundtrip is None or not re.search(r"[A-Za-z]", zone):
            return None
        key = (zone, re.sub(_TIME, "", text))
        if key in self._zones_checked:
            return None
        try:
            back = self.roundtrip(text)
        except ValueError as exc:
            return (
                f"cannot be read back: {exc}; a capture whose time stamps carry zone "
                "abbreviations PostgreSQL does not know must be made with DateStyle ISO "
                "(PGOPTIONS='-c datestyle=ISO')"
            )
        if back == text:
            self._zones_checked.add(key)
            return None
        if _zone_of(back) != zone:
            return (
                f"reads back as {back!r} under TimeZone {self.settings.timezone!r}: give "
                "--capture-setting TimeZone=<the TimeZone of the session that ran "
                "pg_recvlogical>"
            )
        return (
            f"reads back as {back!r}: PostgreSQL's timezone_abbreviations give {zone} "
            f"another offset than TimeZone {self.settings.timezone!r} printed it with, so "
            "the value cannot be carried exactly; capture again with DateStyle ISO "
            "(PGOPTIONS='-c datestyle=ISO'), which prints numeric offsets"
        )

    def notes(self, table: TableName, *, audit: bool) -> tuple[list[str], list[str]]:
        """``(warnings, unproven reasons)`` about ``table`` once its changes were read."""
        kinds = self.kinds.get((table.schema, table.name), set())
        warnings, unproven = [], []
        if (
            audit
            and self.settings.date_output != "ISO"
            and kinds
            & {
                Kind.DATE,
                Kind.TIMESTAMP,
                Kind.TIMESTAMPTZ,
            }
        ):
            warnings.append(
                f"the capture's DateStyle is {self.settings.datestyle!r}: the audit's typed "
                f"date and timestamp columns of {table} are NULL (the exact text is in "
                "new_values/old_values)"
            )
        if audit and self.settings.intervalstyle != "postgres" and Kind.INTERVAL in kinds:
            warnings.append(
                f"the capture's IntervalStyle is {self.settings.intervalstyle}: the audit's "
                f"typed interval columns of {table} are NULL (the exact text is in "
                "new_values/old_values)"
            )
        if self.settings.extra_float_digits < 1 and Kind.FLOAT in kinds:
            unproven.append(
                f"the capture was printed with extra_float_digits "
                f"{self.settings.extra_float_digits}, which rounds real and double precision "
                f"values: the float columns of {table} may differ from the table in their last "
                "digits; capture again with extra_float_digits 1 or more if the WAL is still "
                "there"
            )
        return warnings, unproven


def _zone_of(text: str) -> str | None:
    """The zone a non-ISO timestamptz text ends with (``EST``), or None."""
    for _, pattern in _SHAPES[Kind.TIMESTAMPTZ]:
        match = pattern.fullmatch(text)
        if match is not None and match.groupdict().get("zone"):
            return match.group("zone")
    return None


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class ServerRoundTrip:
    """:data:`RoundTrip` on its own autocommit session of the target, with the capture's
    settings (opened on first use; a parse error there cannot abort the replay's transaction)."""

    def __init__(self, dsn: str | None, settings: CaptureSettings) -> None:
        self.dsn = dsn
        self.settings = settings
        self._conn: Connection | None = None

    def __call__(self, text: str) -> str:
        from ..db import connect  # noqa: PLC0415 - db imports nothing from here

        if self._conn is None:
            self._conn = connect(self.dsn, autocommit=True, role="target")
            apply(self._conn, self.settings)
        try:
            row = one(self._conn, "SELECT %s::timestamptz::text", (text,))
        except psycopg.errors.DataError as exc:
            raise ValueError(exc.diag.message_primary or first_line(exc)) from None
        return str(row[0])

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
