"""Checking a capture's values against the output settings it was said to be printed with.

:class:`ValueChecker` looks at every date, timestamp, interval and bytea value (also in arrays
and ranges) of the tables being read and stops at the first one the stated settings cannot have
printed, naming the column, the value and the option to give. Zone abbreviations (non-ISO
DateStyles print ``EST``, ``IST``) are read back once per abbreviation and day on the target
server (:class:`ServerRoundTrip`): PostgreSQL reads ``IST`` as Israel's +02 while
``Asia/Kolkata`` printed it for +05:30, and that value cannot be carried exactly.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import psycopg

from ..db import Connection, connect, one
from ..errors import CaptureSettingError, first_line
from .model import Change, Event, Relation, TableName
from .pgtext import parse_array
from .settings import CaptureSettings, apply
from .value_shapes import (
    ESCAPE,
    HEX,
    SHAPES,
    TIME,
    Kind,
    classify,
    datestyle_option,
    datestyles,
    intervalstyles,
    range_bounds,
)

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
            return range_bounds(text)
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
        stated, other = (
            ("hex", "escape") if self.settings.bytea_output == "hex" else ("escape", "hex")
        )
        shape = {"hex": HEX, "escape": ESCAPE}
        if shape[stated].fullmatch(text):
            return None
        if shape[other].fullmatch(text):
            return (
                f"is in bytea_output {other}, not {stated}: give --capture-setting "
                f"bytea_output={other}"
            )
        return "is not bytea output: check --plugin and -o"

    def _interval(self, text: str) -> str | None:
        found = intervalstyles(text)
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
        found, match = datestyles(text, kind)
        style, order = self.settings.date_output, self.settings.date_order
        if f"{style} {order}" in found:
            if kind is Kind.TIMESTAMPTZ and style != "ISO" and match is not None:
                return self._zone(text, match)
            return None
        setting = f"DateStyle {self.settings.datestyle!r}"
        if found:
            return (
                f"is not what {setting} prints (it reads as DateStyle "
                f"{datestyle_option(found)}): give --capture-setting "
                f"DateStyle={datestyle_option(found).split(' or ')[0]} (the DateStyle of the "
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
        key = (zone, re.sub(TIME, "", text))
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
    for _, pattern in SHAPES[Kind.TIMESTAMPTZ]:
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
