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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from ..db import Connection
from ..errors import WalrecoverError, first_line

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
