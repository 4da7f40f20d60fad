"""Connections: libpq conninfo in, predictable sessions out, passwords never shown.

Every session walrecover opens sets the output formats the decoders and COPY rely on (ISO dates
in UTC, full float precision, hex bytea), and a connect timeout so nothing hangs on a dead host.
Connection strings are passed to libpq untouched, so conninfo, ``postgresql://`` URIs, PG*
variables, service files and ``.pgpass`` all work as in psql.
"""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionFailed, first_line

#: A session opened by :func:`connect`: psycopg's default tuple rows. Library signatures take
#: this rather than ``Any`` so mypy checks what is called on a connection.
Connection = psycopg.Connection[tuple[Any, ...]]

#: Session settings that make every value's text form predictable.
SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    # Waiting behind another session's lock (a DROP on --force, say) fails instead of hanging.
    "lock_timeout": "60s",
    "application_name": "walrecover",
}

DEFAULT_CONNECT_TIMEOUT = 10

#: Connection parameters that are secrets: never shown, logged or stored.
SECRETS = ("password", "sslpassword")

#: TCP keepalives (ignored on unix sockets), unless the connection string sets them.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 20,
    "keepalives_interval": 5,
    "keepalives_count": 6,
    "tcp_user_timeout": 60_000,
}


def ambiguous_uri(dsn: str | None) -> bool:
    """True for a ``postgresql://`` URI with more than one ``@`` before its host.

    libpq ends the user and password at the *first* ``@``, so ``postgresql://u:s3cr3t-P@ss@db/x``
    connects as password ``s3cr3t-P`` to host ``ss@db``: the parsed host and port may then hold
    the rest of the password, and nothing parsed from that part may be shown.
    """
    text = (dsn or "").strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return False
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    return authority.count("@") > 1


#: What messages and metadata show instead of the user, password, host and port of an
#: ambiguous URI.
HIDDEN_AUTHORITY = "<user, password and host hidden: the URI has more than one '@'>"

#: Parameters an ambiguous URI's user-password-host part sets (all may hold password text).
_AUTHORITY_PARAMS = ("user", "host", "hostaddr", "port")


def safe_dsn(dsn: str | None) -> str:
    """The connection string with any password removed, for messages and metadata.

    For an ambiguous URI (see :func:`ambiguous_uri`) the user, host and port are left out too,
    since libpq's reading of them may hold part of the password.
    """
    try:
        params = conninfo_to_dict(dsn or "")
    except psycopg.Error:
        return "<unparseable connection string>"
    for secret in SECRETS:
        params.pop(secret, None)
    hidden = ambiguous_uri(dsn)
    if hidden:
        for name in _AUTHORITY_PARAMS:
            params.pop(name, None)
    if not params:
        return HIDDEN_AUTHORITY if hidden else "<libpq defaults>"
    shown = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
    return f"{shown} {HIDDEN_AUTHORITY}" if hidden else shown


def _passwords(dsn: str | None) -> list[str]:
    found: list[str] = []
    try:
        params = conninfo_to_dict(dsn or "")
        found.extend(str(params[s]) for s in SECRETS if params.get(s))
    except psycopg.Error:
        params = {}
        match = re.search(r"(?:(?:ssl)?password\s*=\s*|://[^:/@]*:)([^\s@'&]+)", dsn or "")
        if match:
            found.append(match.group(1))
    if ambiguous_uri(dsn):
        # Everything up to the last '@' may be the password, and libpq's host and port (which
        # its messages quote) hold what followed the first '@'.
        userinfo = (dsn or "").strip().partition("://")[2]
        userinfo = re.split(r"[/?]", userinfo, maxsplit=1)[0].rpartition("@")[0]
        found.append(userinfo)
        found.append(userinfo.partition(":")[2])
        found.extend(str(params[p]) for p in _AUTHORITY_PARAMS if "@" in str(params.get(p, "")))
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    # Longest first, so a password is never half replaced by a shorter one inside it.
    return sorted({p for p in found if p}, key=len, reverse=True)


def redact(text: str, dsn: str | None) -> str:
    """Remove every password that ``dsn`` or PGPASSWORD carries from ``text``."""
    for password in _passwords(dsn):
        text = text.replace(password, "********")
    return text


def not_utf8(conn: Connection) -> str:
    """Why a session's text can hold bytes that are not UTF-8, for one-line errors.

    Only a SQL_ASCII database does: the server converts from any real encoding, but stores and
    passes SQL_ASCII bytes as they are, whatever encoding the client that wrote them used.
    """
    encoding = conn.info.parameter_status("server_encoding") if conn is not None else None
    database = conn.info.dbname if conn is not None else "?"
    if encoding == "SQL_ASCII":
        return (
            f"database {database!r} has encoding SQL_ASCII, which stores whatever bytes clients "
            "send, and walrecover reads text as UTF-8 only"
        )
    return f"database {database!r} has encoding {encoding or 'unknown'}"


def connect(dsn: str | None, *, autocommit: bool = False, role: str = "database") -> Connection:
    """Open a session with walrecover's settings; raise :class:`ConnectionFailed` if it fails.

    ``role`` names the connection in errors ("source", "target").
    """
    kwargs: dict[str, Any] = {"autocommit": autocommit}
    try:
        params = conninfo_to_dict(dsn or "")
    except psycopg.Error as exc:
        reason = redact(first_line(exc), dsn)
        raise ConnectionFailed(
            f"the {role} connection string is malformed ({reason}): "
            "give a conninfo like 'host=db dbname=bank' or a postgresql:// URI",
            dsn=safe_dsn(dsn),
        ) from None
    if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
        kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    # A peer that vanishes (VPN down, laptop asleep) is noticed in about a minute, not hours.
    for keepalive, setting in KEEPALIVES.items():
        if keepalive not in params:
            kwargs[keepalive] = setting
    # Text arrives as UTF-8 whatever the database's encoding. A SQL_ASCII database would otherwise
    # make libpq's client encoding SQL_ASCII too, and psycopg hand back bytes for every text
    # value ("wal_level is b'logical'"); with UTF8, the server converts from a real encoding,
    # and passes a SQL_ASCII database's bytes through as they are (see :func:`not_utf8`).
    kwargs["client_encoding"] = "UTF8"
    # Startup options are space-separated: "ISO, YMD" is sent as "ISO,YMD".
    options = " ".join(
        f"-c {name}={value.replace(' ', '')}" for name, value in SESSION_SETTINGS.items()
    )
    if "options" not in params and "PGOPTIONS" not in os.environ:
        kwargs["options"] = options
    try:
        conn = psycopg.connect(dsn or "", **kwargs)
    except psycopg.OperationalError as exc:
        if ambiguous_uri(dsn):
            # libpq's message quotes the host it read, which holds part of the password.
            reason = (
                "the URI's user:password@host part holds more than one '@', and libpq takes "
                "the host from after the first one; write each '@' of the password as %40"
            )
        else:
            reason = redact(first_line(exc), dsn)
        raise ConnectionFailed(
            f"cannot connect to the {role} database ({safe_dsn(dsn)}): {reason}; "
            "check host, port, database and credentials",
            dsn=safe_dsn(dsn),
        ) from None
    if "options" in params or "PGOPTIONS" in os.environ:
        with conn.cursor() as cur:
            for name, value in SESSION_SETTINGS.items():
                cur.execute("SELECT set_config(%s, %s, false)", (name, value))
        if not autocommit:
            conn.commit()
    return conn


def one(
    conn: Connection, query: str | sql.SQL | sql.Composed, params: Params | None = None
) -> tuple[Any, ...]:
    """The row of a query that always returns exactly one (``SELECT current_database()``)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, "a one-row query returned no row"
    return row


#: SQLSTATEs of a session the server ended (admin, crash or immediate shutdown, cannot connect
#: now): class 08 (connection exceptions) aside, the only errors after which a rerun can work.
_ENDED_SESSION = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(exc: psycopg.Error, conn: Connection | None = None) -> bool:
    """True if ``exc`` means the connection is gone, not that a statement failed.

    psycopg reports SQLSTATE classes 53, 54, 55, 57 and 58 as ``OperationalError`` too: "index
    row size exceeds btree maximum" (54000) is a data error, and rerunning cannot help it.
    """
    if conn is not None and (conn.closed or conn.broken):
        return True
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _ENDED_SESSION
