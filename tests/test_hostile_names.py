"""Hostile names and secrets.

Schemas, tables, columns (and a publication) named with double and single quotes, spaces,
semicolons, dots, reserved words, upper case and non-ASCII must recover through every plugin
(wal2json; pgoutput through a publication; test_decoding with a ``--ddl`` that gives the key),
with the audit and a reconciliation keyed on hostile columns, and ``decode --format sql`` must
print SQL that really replays the changes. The CLI takes the names as PostgreSQL does:
``--table '"My Schema"."My Table"'``.

A password given in a conninfo, a ``postgresql://`` URI or ``PGPASSWORD`` (the throwaway
cluster trusts every local connection, so any password is accepted; connections go over TCP) must
never appear in stdout, stderr, the audit (file, metadata, manifest) or the progress table, on
success and on every error path tried here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from fault_helpers import session
from helpers import Database, cli, source_untouched
from psycopg import sql
from psycopg.conninfo import make_conninfo

from walrecover.audit.format import manifest_path
from walrecover.audit.reader import read_metadata
from walrecover.cli import main

PLUGINS = ("wal2json", "pgoutput", "test_decoding")

#: (schema, table) pairs, each hostile in its own way.
TABLES = {
    "semicolon-and-quotes": ("Ledger; DROP TABLE x", 'Trans "2024"'),
    "dots-and-apostrophe": ("Fin.Ops", "ledger.2024 'q'"),
    "reserved-upper-unicode": ("ORDER", "Grüße Ünïcødé 💸"),
}
KEY, ACCOUNT, AMOUNT = "select", "user", "Amount €"
#: Column definitions: the key, the account, the amount, then more hostile names.
COLUMNS = (
    (KEY, "integer PRIMARY KEY"),
    (ACCOUNT, "integer NOT NULL"),
    (AMOUNT, "numeric(12,2) NOT NULL"),
    ("it's", "text"),
    ("order", "text"),
    ('Memo "q".x;y', "text"),
)
PUBLICATION = 'Pub "One"; x'


def qualified(schema: str, name: str) -> str:
    """The name as a user types it for --table: both parts double-quoted."""
    return sql.Identifier(schema, name).as_string(None)


def ddl(schema: str, name: str) -> str:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(kind)) for column, kind in COLUMNS
    )
    return (
        sql.SQL("CREATE TABLE {} ({})")
        .format(sql.Identifier(schema, name), columns)
        .as_string(None)
    )


@dataclass(frozen=True)
class Hostile:
    """A hostile table that was written after the slots were made, then dropped."""

    db: Database
    schema: str
    name: str

    @property
    def table(self) -> str:
        return qualified(self.schema, self.name)

    @property
    def into(self) -> tuple[str, str]:
        return self.schema, f"{self.name}_recovered"


def slot_for(plugin: str) -> str:
    return {"wal2json": "cdc", "pgoutput": "cdc_pgoutput", "test_decoding": "cdc_td"}[plugin]


def make_hostile(db: Database, schema: str, name: str) -> Hostile:
    ident = sql.Identifier(schema, name)
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)).as_string(None))
    db.execute(ddl(schema, name))
    db.execute("CREATE TABLE decoy (id integer PRIMARY KEY, v text)")
    db.execute(
        sql.SQL("CREATE PUBLICATION {} FOR TABLE {}, decoy")
        .format(sql.Identifier(PUBLICATION), ident)
        .as_string(None)
    )
    for plugin in PLUGINS:
        db.create_slot(slot_for(plugin), plugin)
    steps = [
        "INSERT INTO {t} VALUES (1, 10, 1.10, 'it''s one', 'a', 'x;y'),"
        " (2, 10, 2.20, 'two', 'b', NULL), (3, 20, 3.30, 'three', 'c', '\"q\"'),"
        " (4, 20, 4.40, 'four', 'd', 'DROP TABLE x;'), (5, 30, 5.50, 'five', 'e', 'ü')",
        "INSERT INTO decoy VALUES (1, 'decoy')",
        'UPDATE {t} SET "Amount €" = "Amount €" + 0.01, "it\'s" = \'it\'\'s "updated"\''
        ' WHERE "select" = 2',
        'UPDATE {t} SET "select" = 30 WHERE "select" = 3',
        'DELETE FROM {t} WHERE "select" = 4',
        'BEGIN; INSERT INTO {t} ("select", "user", "Amount €") VALUES (4, 30, 0.01);'
        ' UPDATE {t} SET "order" = \'reused\' WHERE "select" = 4; COMMIT',
    ]
    with db.connect() as conn:
        for step in steps:
            conn.execute(step.replace("{t}", ident.as_string(conn)))
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE truth AS SELECT * FROM {}").format(ident))
        conn.execute(sql.SQL("DROP TABLE {}").format(ident))
    return Hostile(db, schema, name)


@pytest.fixture(params=list(TABLES), ids=list(TABLES))
def hostile(request: pytest.FixtureRequest, db: Database) -> Hostile:
    schema, name = TABLES[request.param]
    return make_hostile(db, schema, name)


LEDGER_QUERY = 'SELECT "user", sum("Amount €") FROM truth GROUP BY 1'


def plugin_args(hostile: Hostile, plugin: str, tmp_path: Path) -> list[str]:
    """The options to read ``hostile`` through ``plugin``."""
    if plugin == "pgoutput":
        return ["-o", f"publication_names={PUBLICATION}"]
    if plugin == "test_decoding":
        path = tmp_path / "ddl.sql"
        path.write_text(ddl(*hostile.into) + ";\n", encoding="utf-8")
        return ["--ddl", str(path)]
    return []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_recover_audit_and_reconcile(hostile: Hostile, plugin: str, tmp_path: Path) -> None:
    db = hostile.db
    audit = tmp_path / "hostile audit €.parquet"

    with source_untouched(db, slot_for(plugin)):
        result = cli(
            "recover",
            "-d",
            db.dsn,
            "--slot",
            slot_for(plugin),
            "--table",
            hostile.table,
            *plugin_args(hostile, plugin, tmp_path),
            "--key",
            ACCOUNT,
            "--amount",
            AMOUNT,
            "--ledger-query",
            LEDGER_QUERY,
            "--audit",
            str(audit),
            "--json",
        )

    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["into"] == qualified(*hostile.into)
    assert out["reconciliation"]["matched"] is True
    assert out["reconciliation"]["keys"] == 3
    assert differences(db, *hostile.into) == (0, 0)
    table = pq.read_table(audit)
    assert table.num_rows == out["audit"]["rows"] == out["changes"] == 10
    assert set(table.column("relation").to_pylist()) == {f"{hostile.schema}.{hostile.name}"}
    assert f"new_{AMOUNT}" in table.schema.names
    last = json.loads(table.column("new_values").to_pylist()[-1])
    assert last == {
        KEY: "4",
        ACCOUNT: "30",
        AMOUNT: "0.01",
        "it's": None,
        "order": "reused",
        'Memo "q".x;y': None,
    }


def differences(db: Database, schema: str, name: str) -> tuple[int, int]:
    """Rows of ``truth`` missing from ``schema.name``, and rows of it not in ``truth``
    (EXCEPT ALL both ways), failing if the counts differ."""
    query = sql.SQL(
        "SELECT (SELECT count(*) FROM (SELECT * FROM truth EXCEPT ALL SELECT * FROM {a}) x),"
        " (SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM truth) y),"
        " (SELECT count(*) FROM truth), (SELECT count(*) FROM {a})"
    ).format(a=sql.Identifier(schema, name))
    missing, extra, expected, actual = (int(v) for v in db.execute(query.as_string(None))[0])
    assert expected == actual, f"{actual} rows in {schema}.{name}, {expected} in the truth"
    return missing, extra


def unbalanced_transactions(script: str) -> list[str]:
    """Lines of a SQL script where BEGIN/COMMIT do not pair up."""
    problems, open_at = [], None
    for number, line in enumerate(script.splitlines(), start=1):
        if line == "BEGIN;":
            if open_at is not None:
                problems.append(f"line {number}: BEGIN inside the transaction of line {open_at}")
            open_at = number
        elif line == "COMMIT;":
            if open_at is None:
                problems.append(f"line {number}: COMMIT without BEGIN")
            open_at = None
        elif open_at is None and line and not line.startswith("--"):
            problems.append(f"line {number}: a statement outside any transaction: {line[:60]}")
    return problems


@pytest.mark.parametrize("plugin", PLUGINS)
def test_decode_sql_replays_the_changes(hostile: Hostile, plugin: str, tmp_path: Path) -> None:
    """The redo SQL that ``decode --format sql`` prints, run against an empty copy of the
    table, gives the dropped table back, one transaction per source transaction. (test_decoding
    does not say which row an update that keeps its key changed: the script says so in a
    comment, and that one row stays as it was.)"""
    db = hostile.db
    args = plugin_args(hostile, plugin, tmp_path) if plugin == "pgoutput" else []

    with source_untouched(db, slot_for(plugin)):
        result = cli(
            "decode",
            "-d",
            db.dsn,
            "--slot",
            slot_for(plugin),
            "--table",
            hostile.table,
            *args,
            "--format",
            "sql",
        )

    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("INSERT INTO") == 6
    db.execute(ddl(hostile.schema, hostile.name))
    with db.connect() as conn:
        conn.execute(result.stdout)
    if plugin == "test_decoding":
        assert "-- cannot redo the update" in result.stdout
        stale = sql.SQL('SELECT "it\'s" FROM {} WHERE "select" = 2').format(
            sql.Identifier(hostile.schema, hostile.name)
        )
        assert db.execute(stale.as_string(None)) == [("two",)]
        assert differences(db, hostile.schema, hostile.name) == (1, 1)
    else:
        assert differences(db, hostile.schema, hostile.name) == (0, 0)
    assert unbalanced_transactions(result.stdout) == []


# -- secrets ---------------------------------------------------------------------------------------

#: Passwords that are easy to find in output, one of them full of characters that need quoting.
PLAIN = "Sekr1t-XYZ-4242"
ODD = "0dd-Sekr1t p@ss'\"\\;%x"
#: A part of each password that survives any quoting or escaping.
TOKENS = {PLAIN: PLAIN, ODD: "0dd-Sekr1t"}


def _conninfo(db: Database, password: str) -> tuple[str, dict[str, str]]:
    return db.cluster.tcp_dsn(db.name, password=password), {}


def _uri(db: Database, password: str) -> tuple[str, dict[str, str]]:
    return (
        f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{db.cluster.port}/{db.name}",
        {},
    )


def _pgpassword(db: Database, password: str) -> tuple[str, dict[str, str]]:
    return db.cluster.tcp_dsn(db.name), {"PGPASSWORD": password}


def _sslpassword(db: Database, password: str) -> tuple[str, dict[str, str]]:
    """libpq's other password: the passphrase of the client key (ignored without SSL)."""
    return make_conninfo(db.cluster.tcp_dsn(db.name), sslpassword=password), {}


FORMS: dict[str, Callable[[Database, str], tuple[str, dict[str, str]]]] = {
    "conninfo": _conninfo,
    "uri": _uri,
    "PGPASSWORD": _pgpassword,
    "sslpassword": _sslpassword,
}
SECRET_CASES = [
    pytest.param(form, password, id=f"{form}-{'plain' if password == PLAIN else 'odd'}")
    for form in FORMS
    for password in (PLAIN, ODD)
]


def _forms_of(password: str) -> set[str]:
    """Every spelling of ``password`` that would give it away."""
    return {password, quote(password, safe=""), quote(password), TOKENS[password]}


def _leaks(password: str, *texts: str | bytes) -> list[str]:
    found = []
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        for form in _forms_of(password):
            if form.encode() in data:
                found.append(f"{form!r} in {data[:200]!r}")
    return found


def _ledger(db: Database) -> None:
    db.execute(
        "CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric(12,2));"
        " INSERT INTO accounts VALUES (1, 0), (2, 0);"
        " CREATE TABLE t (id integer PRIMARY KEY, account integer, amount numeric(12,2))"
    )
    db.create_slot()
    db.execute("INSERT INTO t VALUES (1, 1, 5.00), (2, 2, 7.50)")
    db.execute("UPDATE accounts a SET balance = (SELECT sum(amount) FROM t WHERE account = a.id)")
    db.execute("DROP TABLE t")


def _recover(dsn: str, *extra: str) -> list[str]:
    return ["recover", "-d", dsn, "--slot", "cdc", "--table", "public.t", *extra]


def run_cli(args: list[str], env: dict[str, str]) -> Result:
    """``walrecover ARGS`` in-process with ``env`` set (libpq reads PGPASSWORD at connect)."""
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def _everything_written(db: Database, result: Result, audit: Path) -> list[str | bytes]:
    """stdout, stderr, every file beside the audit, its metadata, and the progress table."""
    texts: list[str | bytes] = [result.stdout, result.stderr]
    for path in audit.parent.iterdir():
        if path.is_file():
            texts.append(path.read_bytes())
    if audit.is_file():
        texts.append(json.dumps(read_metadata(audit)))
        texts.append(manifest_path(audit).read_bytes())
    with session(db.dsn) as conn:
        exists = conn.execute("SELECT to_regclass('walrecover.progress') IS NOT NULL").fetchone()
        if exists and exists[0]:
            rows = conn.execute("SELECT * FROM walrecover.progress").fetchall()
            texts.append(json.dumps(rows, default=str))
    return texts


@pytest.mark.parametrize(("form", "password"), SECRET_CASES)
def test_password_never_shows_after_a_recovery(
    db: Database, tmp_path: Path, form: str, password: str
) -> None:
    _ledger(db)
    dsn, env = FORMS[form](db, password)
    audit = tmp_path / "audit.parquet"
    ledger = ["--key", "account", "--amount", "amount"]

    result = run_cli(
        _recover(
            dsn,
            "--audit",
            str(audit),
            "--target",
            dsn,
            *ledger,
            "--ledger-query",
            "SELECT id, balance FROM accounts",
        ),
        env,
    )

    assert result.exit_code == 0, result.stderr
    assert _leaks(password, *_everything_written(db, result, audit)) == []
    assert f"dbname={db.name}" in read_metadata(audit)["source"]


def _missing_slot(dsn: str, db: Database, audit: Path) -> list[str]:
    return [*_recover(dsn, "--audit", str(audit)), "--slot", "nope"]


def _not_in_stream(dsn: str, db: Database, audit: Path) -> list[str]:
    return [*_recover(dsn, "--audit", str(audit)), "--table", "public.never"]


def _target_exists(dsn: str, db: Database, audit: Path) -> list[str]:
    db.execute("CREATE TABLE t_recovered (x integer)")
    return _recover(dsn, "--target", dsn, "--audit", str(audit))


def _unreachable_target(dsn: str, db: Database, audit: Path) -> list[str]:
    return _recover(db.dsn, "--target", dsn.replace(str(db.cluster.port), "1"))


def _bad_ledger_query(dsn: str, db: Database, audit: Path) -> list[str]:
    ledger = ["--key", "account", "--amount", "amount", "--ledger-query", "SELECT nonsense"]
    return _recover(dsn, "--audit", str(audit), *ledger)


def _decode_missing_slot(dsn: str, db: Database, audit: Path) -> list[str]:
    return ["decode", "-d", dsn, "--slot", "nope"]


ERRORS: dict[str, Callable[[str, Database, Path], list[str]]] = {
    "missing-slot": _missing_slot,
    "table-not-in-stream": _not_in_stream,
    "target-exists": _target_exists,
    "unreachable-target": _unreachable_target,
    "bad-ledger-query": _bad_ledger_query,
    "decode-missing-slot": _decode_missing_slot,
}


@pytest.mark.parametrize("case", ERRORS, ids=ERRORS)
@pytest.mark.parametrize("form", FORMS)
def test_password_never_shows_in_errors(db: Database, tmp_path: Path, form: str, case: str) -> None:
    _ledger(db)
    dsn, env = FORMS[form](db, ODD)
    audit = tmp_path / "audit.parquet"

    result = run_cli(ERRORS[case](dsn, db, audit), env)

    assert result.exit_code in (1, 3), result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("walrecover: "), result.stderr
    assert _leaks(ODD, *_everything_written(db, result, audit)) == []
