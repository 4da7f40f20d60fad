"""Checks that run before the long work, and the identity of a recovery command.

A recovery can read the WAL for hours. Everything that would otherwise fail only at its end (a
typo in ``--ledger-query``, ``--key`` or ``--amount``, a missing grant on the ledger or on the
target, an encoding the target cannot hold, a publication that lists the table) is checked
here first, before a row is written. Each check raises a :class:`WalrecoverError` naming what
is wrong, the object and the privilege, and what to do; ``walrecover check`` and
``recover --dry-run`` (:mod:`walrecover.rebuild.plan`) run the same functions and collect the
results.

The identity of a command (the options that decide the rows: source, plugin, table, stop point,
DDL, audit) is kept in the progress row. A rerun of the same command after a finished recovery
answers "already complete"; another command against the same target is refused, naming the
option that differs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..db import SECRETS, Connection, one, redact
from ..errors import ConfigurationError, LedgerError, PrivilegeError, WalrecoverError
from ..stream.model import TableName
from .progress import _ADDED_COLUMNS
from .target import PROGRESS_SCHEMA, PROGRESS_TABLE, Target

#: Types whose values PostgreSQL and walrecover sum exactly (by OID, after domains).
SUMMABLE_TYPES = {20: "bigint", 21: "smallint", 23: "integer", 1700: "numeric"}
FLOAT_TYPES = {700: "real", 701: "double precision"}
#: Text types a ledger may return its totals as (read exactly as decimals).
TEXT_TYPES = {25: "text", 1043: "character varying", 1042: "character", 705: "unknown"}

#: The options of the command identity, as the user spells them.
OPTION_NAMES = {
    "database": "-d",
    "slot": "--slot",
    "via_plugin": "--via-plugin",
    "capture": "--from-file",
    "plugin": "--plugin",
    "options": "-o",
    "capture_settings": "--capture-setting",
    "table": "--table",
    "stop": "the stop point (--stop-before-*)",
    "ddl": "--ddl",
    "audit": "--audit/--audit-dir",
    "baseline": "--baseline",
}


# -- the command's identity ----------------------------------------------------------------------


def database_identity(dsn: str | None) -> str | None:
    """A connection string without secrets, its parameters sorted (the same database given in
    another order is the same); None for libpq's defaults."""
    try:
        params = conninfo_to_dict(dsn or "")
    except psycopg.Error:
        return dsn
    shown = sorted(f"{k}={v}" for k, v in params.items() if k not in SECRETS and v is not None)
    return " ".join(shown) or None


def ddl_identity(ddl: str | None) -> str | None:
    """The DDL's SHA-256 (the file's text decides the table, not its name)."""
    return None if ddl is None else "sha256:" + hashlib.sha256(ddl.encode()).hexdigest()[:16]


def command_identity(**options: Any) -> str:
    """The identity of a recovery command as JSON (keys of :data:`OPTION_NAMES`)."""
    unknown = set(options) - set(OPTION_NAMES)
    assert not unknown, f"unknown identity options {unknown}"
    return json.dumps({k: options[k] for k in sorted(options)}, sort_keys=True)


def _shown(value: Any, key: str = "") -> str:
    if value is None and key == "via_plugin":
        return "none (the slot's own plugin)"
    if value is None or value in ({}, ""):
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def command_differences(stored: str | None, current: str | None) -> list[str]:
    """What differs between the stored and the current command, one phrase per option
    (``--stop-before-*`` was ..., now ...); empty when they are the same or either is unknown
    (a progress row an older walrecover wrote)."""
    if stored is None or current is None:
        return []
    try:
        before, now = json.loads(stored), json.loads(current)
    except ValueError:
        return []
    differs = []
    for key, option in OPTION_NAMES.items():
        if key in before and key in now and before[key] != now[key]:
            differs.append(
                f"{option} differs (it was {_shown(before[key], key)}, this command gives "
                f"{_shown(now[key], key)})"
            )
    return differs


# -- the target ------------------------------------------------------------------------------------


_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")


def check_into(into: TableName, table: TableName, target: str | None, dsn: str | None) -> None:
    """Refuse to build into the table being recovered (the same name in the same database):
    the rebuilt table is new, and swapped in afterwards."""
    if into == table and target == dsn:
        raise WalrecoverError(
            f"--into {into} is the table being recovered: build into a new table and swap it in"
        )


def _ident(conn: Connection, *names: str) -> str:
    """Names as SQL, quoted only where needed (so a GRANT reads as one would type it)."""
    return ".".join(
        name if _PLAIN.fullmatch(name) else sql.Identifier(name).as_string(conn) for name in names
    )


@dataclass(frozen=True)
class TargetFacts:
    """What the target database holds and lets the role do, for the plan."""

    role: str
    database: str
    encoding: str
    #: What a run would create: ``schema walrecover``, ``table walrecover.progress``.
    creates: tuple[str, ...]


def check_target(conn: Connection, into: TableName, *, force: bool, exists: bool) -> TargetFacts:
    """Check the role can create ``into``, the ``walrecover`` schema and write its progress;
    raise :class:`PrivilegeError` naming the privilege and the object (schema, database or
    table) and the GRANT that gives it. Leaves the transaction open (the caller commits)."""
    role, database, encoding = one(
        conn,
        "SELECT current_user::text, current_database()::text, pg_encoding_to_char(encoding)"
        " FROM pg_database WHERE datname = current_database()",
    )
    who = _ident(conn, role)

    def refuse(what: str, grant: str) -> PrivilegeError:
        return PrivilegeError(
            f"role {role!r} {what} in the target database {database!r}: {grant}, or build with "
            "another role (--target)",
            role=role,
            table=str(into),
        )

    # The privileges a build needs, as the build itself names them (one GRANT per object).
    lacking = Target(conn, into).missing_privilege(force=force)
    if lacking is not None:
        raise lacking
    creates = _progress_creates(conn, refuse, who)
    if exists and not force:
        _check_table_rights(conn, into, refuse, who)
    return TargetFacts(str(role), str(database), str(encoding), tuple(creates))


def _progress_creates(
    conn: Connection, refuse: Callable[[str, str], PrivilegeError], who: str
) -> list[str]:
    """What the run would create for its progress (schema, table); refuse when the progress
    table lacks columns this walrecover keeps and the role cannot add them."""
    creates: list[str] = []
    schema = conn.execute(
        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (PROGRESS_SCHEMA,)
    ).fetchone()
    progress = conn.execute(
        "SELECT pg_has_role(relowner, 'USAGE'), pg_get_userbyid(relowner)::text,"
        " array(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid"
        "       AND attnum > 0 AND NOT attisdropped)"
        " FROM pg_class c WHERE oid = to_regclass(%s)",
        (_ident(conn, PROGRESS_SCHEMA, PROGRESS_TABLE),),
    ).fetchone()
    if schema is None:
        creates.append(f"schema {PROGRESS_SCHEMA}")
    if progress is None:
        creates.append(f"table {PROGRESS_SCHEMA}.{PROGRESS_TABLE}")
    else:
        owns, table_owner, columns = progress
        added = [name for name in _ADDED_COLUMNS if name not in columns]
        if added and not owns:
            raise refuse(
                f"cannot add the columns {', '.join(added)} that this walrecover keeps to "
                f"the table {PROGRESS_SCHEMA}.{PROGRESS_TABLE} (only its owner "
                f"{table_owner!r} can)",
                f"run walrecover once as {table_owner!r}, or ALTER TABLE {PROGRESS_SCHEMA}."
                f"{PROGRESS_TABLE} OWNER TO {who}",
            )
    return creates


def _check_table_rights(
    conn: Connection, into: TableName, refuse: Callable[[str, str], PrivilegeError], who: str
) -> None:
    """The role may read and change the existing ``into`` (a resumed run writes it)."""
    rights = one(
        conn,
        "SELECT has_table_privilege(oid, 'SELECT'), has_table_privilege(oid, 'INSERT'),"
        " has_table_privilege(oid, 'UPDATE'), has_table_privilege(oid, 'DELETE'),"
        " has_table_privilege(oid, 'TRUNCATE') FROM pg_class WHERE oid = %s::regclass",
        (_ident(conn, into.schema, into.name),),
    )
    names = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
    missing = [name for name, held in zip(names, rights, strict=True) if not held]
    if missing:
        raise refuse(
            f"may not {', '.join(missing)} on the table {into}",
            f"GRANT {', '.join(missing)} ON TABLE {_ident(conn, into.schema, into.name)} TO {who}",
        )


#: Target encodings that hold every character a UTF-8 stream carries (SQL_ASCII stores the
#: bytes as they come).
_HOLDS_ANY = ("UTF8", "SQL_ASCII")


def check_encoding(target_encoding: str, source_encoding: str | None, database: str) -> str:
    """Raise :class:`ConfigurationError` when the target database's encoding cannot hold
    every character of the source's text (the replay would stop at the first such row);
    return what the check found."""
    source = source_encoding or "UTF8"
    if target_encoding in _HOLDS_ANY or target_encoding == source:
        return f"target {target_encoding}, source {source_encoding or 'text as UTF-8'}"
    raise ConfigurationError(
        f"the target database {database!r} has encoding {target_encoding}, which cannot hold "
        f"every character of the source's {source} text: the replay would stop at the first "
        "row with one; build in a UTF8 database (--target)",
    )


# -- the ledger ------------------------------------------------------------------------------------


def check_ledger_query(conn: Connection, query: str, keys: int = 1) -> str:
    """Run ``query`` so that it returns no row (``SELECT * FROM (query) LIMIT 0``, read-only,
    rolled back) and check its shape: ``keys`` key columns and a total PostgreSQL sums exactly.

    Raise :class:`LedgerError` naming the problem (a syntax error, a missing SELECT grant, the
    column count, a float total); return the columns it returns.
    """
    body = query.strip().rstrip(";").strip()
    wrapped = sql.SQL("SELECT * FROM ({}\n) AS walrecover_ledger LIMIT 0").format(sql.SQL(body))
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            cur = conn.execute(wrapped)
            description = cur.description
    except psycopg.Error as exc:
        primary = exc.diag.message_primary or str(exc)
        if exc.sqlstate == "42501":
            (role,) = one(conn, "SELECT current_user::text")
            raise LedgerError(
                f"the ledger query cannot run as role {role!r} ({primary}): GRANT SELECT on that"
                f" table TO {_ident(conn, role)}, or give --ledger-query a query the role may "
                "run; nothing was built"
            ) from None
        raise LedgerError(
            f"the ledger query failed ({redact(primary, None)}): check --ledger-query; nothing "
            "was built"
        ) from None
    width = keys + 1
    names = [d.name for d in description or ()]
    if len(names) != width:
        raise LedgerError(
            f"the ledger query returns {len(names)} columns ({', '.join(names)}); it must return "
            f"exactly {width} (key, total), for example a query of id and balance from "
            "accounts; nothing was built"
        )
    total = description[-1] if description else None
    oid = total.type_code if total is not None else None
    if oid in FLOAT_TYPES:
        raise LedgerError(
            f"the ledger query returns its total {names[-1]!r} as {FLOAT_TYPES[oid]} (a "
            "float), which cannot be compared exactly: cast it to numeric in the query; "
            "nothing was built"
        )
    if oid not in SUMMABLE_TYPES and oid not in TEXT_TYPES:
        (shown,) = one(conn, "SELECT format_type(%s, NULL)", (oid,))
        raise LedgerError(
            f"the ledger query returns its total {names[-1]!r} as {shown}, not a number: "
            "return the total as numeric, integer or bigint; nothing was built"
        )
    return ", ".join(names)


# -- --key and --amount ----------------------------------------------------------------------


#: A column's base type (after domains) OID, None when unknown, and its type as shown.
ColumnTypes = Mapping[str, tuple[int | None, str]]


def table_column_types(conn: Connection, table: TableName) -> dict[str, tuple[int | None, str]]:
    """The columns of an existing table with their base type OIDs."""
    rows = conn.execute(
        "SELECT a.attname::text, coalesce(nullif(t.typbasetype, 0), t.oid)::int,"
        " format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        (_ident(conn, table.schema, table.name),),
    ).fetchall()
    return {str(name): (int(oid), str(shown)) for name, oid, shown in rows}


def named_column_types(
    conn: Connection, columns: Mapping[str, str]
) -> dict[str, tuple[int | None, str]]:
    """Columns given by type name (the stream's relation, a --ddl), resolved on ``conn``: the
    OID is None for a type that database does not know."""
    found: dict[str, tuple[int | None, str]] = {}
    for name, type_name in columns.items():
        oid: int | None = None
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT coalesce(nullif(t.typbasetype, 0), t.oid)::int FROM pg_type t"
                    " WHERE t.oid = to_regtype(%s)",
                    (type_name,),
                ).fetchone()
            oid = None if row is None else int(row[0])
        except psycopg.Error:
            oid = None
        found[name] = (oid, type_name)
    return found


def check_key_amount(columns: ColumnTypes, key: str, amount: str, where: str) -> str:
    """Raise :class:`LedgerError` unless ``key`` and ``amount`` are columns of ``where`` and
    ``amount`` is a type summed exactly; return what was found."""
    listed = ", ".join(columns)
    for option, name in (("--key", key), ("--amount", amount)):
        if name not in columns:
            raise LedgerError(
                f"{option} {name!r} is not a column of {where} (its columns: {listed}): check "
                f"{option}; nothing was built",
                column=name,
            )
    oid, shown = columns[amount]
    if oid in FLOAT_TYPES:
        raise LedgerError(
            f"--amount {amount!r} is {shown} in {where}, which cannot be summed exactly: "
            "reconcile a numeric column; nothing was built",
            column=amount,
        )
    if oid is not None and oid not in SUMMABLE_TYPES:
        raise LedgerError(
            f"--amount {amount!r} is {shown} in {where}, not a number walrecover sums exactly "
            "(smallint, integer, bigint, numeric): check --amount; nothing was built",
            column=amount,
        )
    kind = shown if oid is not None else f"{shown}, a type the target does not know"
    return f"--key {key} ({columns[key][1]}), --amount {amount} ({kind}) in {where}"
