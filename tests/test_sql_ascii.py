"""Databases with SQL_ASCII encoding (initdb without a locale): every command works.

A SQL_ASCII database makes libpq's client encoding SQL_ASCII, and psycopg then hands back bytes
for every text value: before, ``recover`` said ``wal_level is b'logical'`` (advising a restart
of production), ``reconcile`` ended in a traceback and ``recover --from-file`` complained about a
``--ddl`` nobody gave. walrecover's sessions now ask for UTF8, which such a database passes
through as is. Text that is not UTF-8 (SQL_ASCII stores whatever bytes a LATIN1 client sent)
cannot be carried: walrecover stops with one line saying where and that the database is
SQL_ASCII.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from capture_helpers import capture_dir, o_args, pg_recvlogical
from click.testing import Result
from helpers import Database, cli, differences, source_untouched, stderr_lines

from walrecover.drill.cluster import Cluster
from walrecover.stream.model import TableName

PLUGINS = ("wal2json", "test_decoding", "pgoutput")
_counter = itertools.count(1)


@dataclass
class AsciiDatabase:
    db: Database
    captures: dict[str, Path]


class _Utf8Database(Database):
    """The test's own sessions ask for UTF8 too (else psycopg returns bytes here)."""

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return super().connect(client_encoding="UTF8", **kwargs)


def _ascii_database(cluster: Cluster, label: str) -> Database:
    name = f"ascii_{label}{next(_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    return _Utf8Database(cluster, name)


def _drop(cluster: Cluster, db: Database) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = %s AND NOT active",
            (db.name,),
        )
        conn.execute(f'DROP DATABASE "{db.name}" WITH (FORCE)')


def _setup(cluster: Cluster, label: str, *, latin1_row: bool) -> Iterator[AsciiDatabase]:
    db = _ascii_database(cluster, label)
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)")
    db.execute("CREATE TABLE u (id integer PRIMARY KEY, note text)")
    db.execute("CREATE PUBLICATION capture_pub FOR TABLE t")
    for plugin in PLUGINS:
        db.create_slot(f"{db.name}_{plugin}", plugin)
        db.create_slot(f"{db.name}_{plugin}_capture", plugin)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO t VALUES (1, 10.50, 'plain'), (2, 20.00, 'café ∑'), (3, 0.01, 'x')"
        )
        conn.execute("UPDATE t SET amount = 12.34, note = 'naïve' WHERE id = 1")
        conn.execute("DELETE FROM t WHERE id = 3")
        if latin1_row:  # what a LATIN1 client writes into a SQL_ASCII database: 'café' in LATIN1
            conn.execute(
                "INSERT INTO t VALUES (4, 1.00, convert_from('\\x636166e9'::bytea, 'SQL_ASCII'))"
            )
        conn.execute("INSERT INTO u VALUES (1, 'other table')")
    db.execute("CREATE UNLOGGED TABLE truth AS SELECT * FROM t")
    db.execute("DROP TABLE t")
    end = db.lsn()
    directory = capture_dir(cluster)
    try:
        captures = {}
        for plugin in PLUGINS:
            slot = f"{db.name}_{plugin}_capture"
            captures[plugin] = pg_recvlogical(
                db, slot, plugin, directory / f"{plugin}.capture", endpos=end
            )
            db.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        yield AsciiDatabase(db, captures)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        _drop(cluster, db)


@pytest.fixture(scope="module")
def ascii_db(cluster: Cluster) -> Iterator[AsciiDatabase]:
    """A SQL_ASCII database whose text is all UTF-8."""
    yield from _setup(cluster, "utf8", latin1_row=False)


@pytest.fixture(scope="module")
def latin1_db(cluster: Cluster) -> Iterator[AsciiDatabase]:
    """A SQL_ASCII database holding a row a LATIN1 client wrote."""
    yield from _setup(cluster, "latin1", latin1_row=True)


def test_the_database_is_sql_ascii(ascii_db: AsciiDatabase) -> None:
    assert ascii_db.db.scalar("SHOW server_encoding") == "SQL_ASCII"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_recover_from_a_slot(ascii_db: AsciiDatabase, plugin: str) -> None:
    """Before: "wal_level is b'logical' ... restart PostgreSQL", exit 1."""
    db = ascii_db.db
    slot = f"{db.name}_{plugin}"
    extra = ["-o", "publication_names=capture_pub"] if plugin == "pgoutput" else []
    with source_untouched(db, slot):
        result = cli(
            "recover", "-d", db.dsn, "--slot", slot, "--table", "public.t",
            "--into", f"public.slot_{plugin}", *extra,
            "--key", "id", "--amount", "amount", "--ledger-query", "SELECT id, amount FROM truth",
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", TableName("public", f"slot_{plugin}")) == (0, 0)
    assert "reconciled: all 2 keys match" in result.stdout


@pytest.mark.parametrize("plugin", PLUGINS)
def test_recover_from_a_capture(ascii_db: AsciiDatabase, plugin: str) -> None:
    """Before: a complaint about --ddl (the target's catalog came back as bytes)."""
    db = ascii_db.db
    result = cli(
        "recover", "--target", db.dsn, "--from-file", str(ascii_db.captures[plugin]),
        *o_args(plugin), "--table", "public.t", "--into", f"public.cap_{plugin}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", TableName("public", f"cap_{plugin}")) == (0, 0)


def test_reconcile(ascii_db: AsciiDatabase) -> None:
    """Before: a traceback, "conversion from bytes to Decimal is not supported"."""
    result = cli(
        "reconcile", "-d", ascii_db.db.dsn, "--table", "public.truth", "--key", "id",
        "--amount", "amount", "--ledger-query", "SELECT id, amount FROM truth",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "all 2 keys match exactly" in result.stdout


def test_decode(ascii_db: AsciiDatabase) -> None:
    db = ascii_db.db
    slot = f"{db.name}_test_decoding"
    with source_untouched(db, slot):
        result = cli("decode", "-d", db.dsn, "--slot", slot, "--table", "public.t")
    assert result.exit_code == 0, result.stderr
    assert '"note": "café ∑"' in result.stdout
    result = cli(
        "decode", "--from-file", str(ascii_db.captures["wal2json"]), *o_args("wal2json"),
        "--table", "public.t",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert '"note": "naïve"' in result.stdout


def _one_line(result: Result) -> str:
    assert result.exit_code == 1, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    assert "rerun" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_bytes_that_are_not_utf8_in_a_slot(latin1_db: AsciiDatabase, plugin: str) -> None:
    db = latin1_db.db
    slot = f"{db.name}_{plugin}"
    extra = ["-o", "publication_names=capture_pub"] if plugin == "pgoutput" else []
    with source_untouched(db, slot):
        result = cli(
            "recover", "-d", db.dsn, "--slot", slot, "--table", "public.t",
            "--into", f"public.bad_{plugin}", *extra,
        )  # fmt: skip
    line = _one_line(result)
    assert f"slot '{slot}' holds text that is not UTF-8 in a change after LSN" in line
    assert "0xe9" in line
    assert f"database '{db.name}' has encoding SQL_ASCII" in line


@pytest.mark.parametrize("plugin", ["wal2json", "test_decoding"])
def test_bytes_that_are_not_utf8_in_a_text_capture(latin1_db: AsciiDatabase, plugin: str) -> None:
    line = _one_line(
        cli(
            "recover",
            "--target",
            latin1_db.db.dsn,
            "--from-file",
            str(latin1_db.captures[plugin]),
            *o_args(plugin),
            "--table",
            "public.t",
        )
    )
    assert f"{latin1_db.captures[plugin]}:" in line
    assert "(0xe9) is not UTF-8" in line
    assert "SQL_ASCII" in line


def test_bytes_that_are_not_utf8_in_a_pgoutput_capture(latin1_db: AsciiDatabase) -> None:
    line = _one_line(
        cli(
            "recover",
            "--target",
            latin1_db.db.dsn,
            "--from-file",
            str(latin1_db.captures["pgoutput"]),
            *o_args("pgoutput"),
            "--table",
            "public.t",
        )
    )
    assert "(byte " in line
    assert "has a value that is not UTF-8" in line
    assert "SQL_ASCII" in line
