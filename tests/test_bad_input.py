"""Bad input: one line saying what is wrong and what to do, a non-zero exit, and a target left
as it was.

Each case runs ``walrecover recover`` (in-process, stdout and stderr apart) against a real server
and asserts the exit code, that stderr is exactly one ``walrecover: error: ...`` line holding the
facts of the case (no traceback, no Python ``None`` leaking into the text), and that the target
database holds the same user tables with the same content as before (walrecover's own
``walrecover`` bookkeeping schema aside, which must hold no completed recovery). Slot cases also
prove the user's slot did not move and no ``walrecover_`` copy was left behind.

Capture files are built the way ``pg_recvlogical --start -f`` writes them (each message, then a
newline) from real plugin output, then damaged.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import Result
from fault_helpers import peek_capture, progress, session
from helpers import Database, cli, in_transaction, source_untouched
from psycopg import sql
from psycopg.conninfo import make_conninfo

from walrecover.drill.cluster import Cluster
from walrecover.stream.lsn import Lsn

PLUGINS = ("wal2json", "pgoutput", "test_decoding")
SLOTS = {"wal2json": "cdc", "pgoutput": "cdc_pgoutput", "test_decoding": "cdc_test_decoding"}
#: A text value the workload writes, to find and damage in captures.
MARKER = "marker-value"


def user_tables(dsn: str) -> dict[str, str]:
    """Every user table outside walrecover's own schema -> md5 of its sorted content."""
    with session(dsn) as conn:
        names = conn.execute(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'walrecover')"
            " AND n.nspname NOT LIKE 'pg\\_%'"
        ).fetchall()
        state = {}
        for schema, table in names:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {} x"
            ).format(sql.Identifier(schema, table))
            row = conn.execute(query).fetchone()
            state[f"{schema}.{table}"] = str(row[0] if row else "")
    return state


def completed_recoveries(dsn: str, into: str) -> bool:
    with session(dsn) as conn:
        row = progress(conn, into)
    return row is not None and row.complete


def error_line(result: Result, code: int = 1) -> str:
    """The one stderr line of a failed command (asserting the exit code and the shape)."""
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got: {result.stderr!r}"
    (line,) = lines
    assert line.startswith("walrecover: error: "), line
    assert "Traceback" not in line
    assert not re.search(r"\bNone\b", line), f"Python's None leaks into the message: {line!r}"
    return line


# -- a source with all three plugins' slots --------------------------------------------------


def ledger(db: Database) -> None:
    """A ledger table ``t`` and a decoy ``other``, a slot per plugin created before their rows,
    a few transactions, then ``DROP TABLE t``."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2) NOT NULL, note text);"
        " CREATE TABLE other (id integer PRIMARY KEY);"
        " CREATE PUBLICATION pub FOR TABLE t, other"
    )
    for plugin, slot in SLOTS.items():
        db.create_slot(slot, plugin)
    db.execute(f"INSERT INTO t SELECT g, g * 1.5, '{MARKER}' FROM generate_series(1, 5) g")
    db.execute("INSERT INTO other VALUES (1), (2)")
    db.execute("BEGIN; UPDATE t SET amount = 9 WHERE id = 2; DELETE FROM t WHERE id = 3; COMMIT")
    db.execute("DROP TABLE t")


def slot_args(dsn: str, plugin: str = "wal2json", *extra: str) -> list[str]:
    args = ["recover", "-d", dsn, "--slot", SLOTS[plugin], "--table", "public.t", *extra]
    if plugin == "pgoutput":
        args += ["-o", "publication_names=pub"]
    return args


@contextmanager
def target_untouched(dsn: str, into: str = "public.t_recovered") -> Iterator[None]:
    """Assert the target database's user tables are as they were when the block ends, and that
    no recovery into ``into`` is recorded as complete."""
    before = user_tables(dsn)
    yield
    assert user_tables(dsn) == before, "the target's tables changed"
    assert not completed_recoveries(dsn, into), f"a recovery into {into} is recorded complete"


@contextmanager
def untouched(
    db: Database, plugin: str = "wal2json", into: str = "public.t_recovered"
) -> Iterator[None]:
    """The source's slot and the target (the same database) as they were."""
    with source_untouched(db, SLOTS[plugin]), target_untouched(db.dsn, into):
        yield


@pytest.fixture
def source(db: Database) -> Database:
    ledger(db)
    return db


@pytest.fixture
def role(cluster: Cluster) -> Iterator[str]:
    """A login role of this test's own (roles are cluster-wide)."""
    name = f"oncall_{next(_roles)}"
    yield name
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


_roles = itertools.count(1)


def test_missing_slot(source: Database) -> None:
    with untouched(source):
        line = error_line(cli(*slot_args(source.dsn), "--slot", "nope"))
    assert "replication slot 'nope' does not exist" in line
    assert "logical slots here: cdc, cdc_pgoutput, cdc_test_decoding" in line
    assert "--slot" in line


@pytest.mark.parametrize("plugin", PLUGINS)
def test_slot_whose_plugin_is_not_installed(source: Database, plugin: str) -> None:
    """The slot exists but its output plugin's library cannot be loaded by walrecover's
    session (dynamic_library_path pointed at nothing, for this database only): what a server
    whose wal2json package was removed looks like."""
    source.execute(
        sql.SQL("ALTER ROLE postgres IN DATABASE {} SET dynamic_library_path = '/nonexistent'")
        .format(sql.Identifier(source.name))
        .as_string(None)
    )
    # The trick works: a new session of walrecover's role really cannot load the library.
    with source.connect() as check, pytest.raises(psycopg.errors.UndefinedFile):
        check.execute(sql.SQL("LOAD {}").format(sql.Literal(plugin)))

    with untouched(source, plugin):
        line = error_line(cli(*slot_args(source.dsn, plugin)))

    assert f"output plugin {plugin}" in line or f"output plugin '{plugin}'" in line, line
    assert "not installed" in line, line
    assert "install" in line.split("not installed", 1)[1], line


def test_role_without_replication(source: Database, role: str) -> None:
    source.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))

    with untouched(source):
        line = error_line(cli(*slot_args(make_conninfo(source.dsn, user=role))))

    assert f"role '{role}'" in line
    assert "REPLICATION" in line


def test_role_without_create_on_the_target(source: Database, role: str) -> None:
    """The role may read slots (REPLICATION) but may not create the rebuilt table: the message
    must name the privilege, and must not send the user to rerun (it would fail the same)."""
    source.execute(
        sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)).as_string(None)
    )

    with untouched(source):
        line = error_line(cli(*slot_args(make_conninfo(source.dsn, user=role))))

    assert role in line and "CREATE" in line, line
    assert "rerun" not in line, line


@pytest.mark.parametrize("plugin", PLUGINS)
def test_table_that_never_appears_in_the_stream_lists_the_tables_that_do(
    source: Database, plugin: str
) -> None:
    with untouched(source, plugin, "public.never_recovered"):
        line = error_line(cli(*slot_args(source.dsn, plugin), "--table", "public.never"))

    assert "public.never has no change in the stream" in line
    listed = line.split("tables in the stream: ", 1)[1]
    assert {"public.t", "public.other"} <= set(re.findall(r"[\w.]+", listed)), line
    assert "walrecover." not in listed, f"walrecover lists its own bookkeeping: {line!r}"


def test_existing_target_table(db: Database) -> None:
    ledger(db)
    db.execute("CREATE TABLE t_recovered (x integer); INSERT INTO t_recovered VALUES (42)")

    with source_untouched(db), target_untouched(db.dsn, "public.other_target"):
        line = error_line(cli(*slot_args(db.dsn)))

    assert "target table public.t_recovered already exists" in line
    assert "--into" in line and "--force" in line
    assert db.execute("SELECT * FROM t_recovered") == [(42,)]


# -- stop points outside the stream ------------------------------------------------------------


def _lsn_before_the_slot(db: Database) -> list[str]:
    return ["--stop-before-lsn", "0/1"]


def _lsn_after_the_wal(db: Database) -> list[str]:
    return ["--stop-before-lsn", str(Lsn(Lsn.parse(db.lsn()) + (1 << 32)))]


def _aborted_xid(db: Database) -> list[str]:
    with db.connect() as conn:
        conn.execute("BEGIN")
        row = conn.execute("SELECT txid_current()").fetchone()
        conn.execute("INSERT INTO other VALUES (99)")
        conn.execute("ROLLBACK")
    assert row is not None
    return ["--stop-before-xid", str(row[0])]


def _future_xid(db: Database) -> list[str]:
    xid = in_transaction(db, "SELECT 1")
    return ["--stop-before-xid", str(xid + 1_000_000)]


STOPS: dict[str, tuple[Callable[[Database], list[str]], str]] = {
    "lsn-before-the-slot": (_lsn_before_the_slot, r"--stop-before-lsn 0/1 is at or before"),
    "lsn-after-the-wal": (_lsn_after_the_wal, r"after the end of the WAL"),
    "xid-aborted": (_aborted_xid, r"transaction \d+ .*(does not|never) commit"),
    "xid-never-assigned": (_future_xid, r"transaction \d+ .*(does not|never) commit"),
}


@pytest.mark.parametrize("case", STOPS, ids=STOPS)
def test_stop_point_outside_the_stream(source: Database, case: str) -> None:
    setup, pattern = STOPS[case]
    extra = setup(source)
    with untouched(source):
        line = error_line(cli(*slot_args(source.dsn, "wal2json", *extra)))
    assert re.search(pattern, line), line
    assert extra[1] in line, f"the message does not name the stop point {extra[1]}: {line!r}"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_stop_time_before_the_first_commit(source: Database, plugin: str) -> None:
    """Nothing in the stream commits before the stop time: an error naming the stop time (the
    option at fault), not an empty table and not advice to check --table."""
    with untouched(source, plugin):
        line = error_line(
            cli(*slot_args(source.dsn, plugin, "--stop-before-time", "2001-02-03T04:05:06Z"))
        )
        assert "2001-02-03" in line or "--stop-before-time" in line, line
        assert "check --table" not in line, line


# -- unreachable servers -------------------------------------------------------------------------

UNREACHABLE = {
    "closed-port": ("-d", "host=127.0.0.1 port=1 dbname=bank", "source"),
    "no-socket-dir": ("-d", "host=/nonexistent/socket/dir port=5432 dbname=bank", "source"),
    "target-closed-port": ("--target", "host=127.0.0.1 port=1 dbname=bank", "target"),
}


@pytest.mark.parametrize("case", UNREACHABLE, ids=UNREACHABLE)
def test_unreachable_server_fails_fast(source: Database, case: str) -> None:
    option, dsn, role = UNREACHABLE[case]
    args = slot_args(source.dsn)
    args = [*args[:1], *args[3:]] if option == "-d" else args
    started = time.monotonic()

    with untouched(source):
        line = error_line(cli(*args, option, dsn))

    assert time.monotonic() - started < 5
    assert f"cannot connect to the {role} database" in line
    assert "check host, port" in line


def test_wal_level_below_logical() -> None:
    with Cluster(settings={"wal_level": "replica"}, require_plugins=()) as replica:
        dsn = replica.dsn()
        before = user_tables(dsn)

        line = error_line(cli("recover", "-d", dsn, "--slot", "cdc", "--table", "public.t"))

        assert "wal_level is 'replica' on the source" in line
        assert "wal_level = logical" in line
        assert user_tables(dsn) == before
        with session(dsn) as conn:
            schema = conn.execute("SELECT to_regnamespace('walrecover')").fetchone()
        assert schema == (None,), "walrecover wrote to a server it cannot recover from"


# -- capture files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Captures:
    """Real captures of the ledger by each plugin, and a target database for recovering them."""

    messages: dict[str, list[bytes]]
    target: str
    directory: Path


CAPTURE_OPTIONS = {
    "wal2json": [],
    "test_decoding": [],
    "pgoutput": ["-o", "proto_version=1", "-o", "publication_names=pub"],
}


@pytest.fixture(scope="module")
def captures(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Captures]:
    name = "bad_captures"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}_target"')
    db = Database(cluster, name)
    directory = tmp_path_factory.mktemp("captures")
    try:
        db.execute(
            "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2) NOT NULL, note text);"
            " CREATE TABLE other (id integer PRIMARY KEY); CREATE PUBLICATION pub FOR ALL TABLES"
        )
        for plugin in PLUGINS:
            db.create_slot(f"{name}_{plugin}", plugin)
        db.execute(f"INSERT INTO t SELECT g, g * 1.5, '{MARKER}' FROM generate_series(1, 5) g")
        db.execute("INSERT INTO other VALUES (1), (2)")
        db.execute("BEGIN; UPDATE t SET amount = 9 WHERE id = 2; DELETE FROM t WHERE id = 3; END")
        db.execute("DROP TABLE t")
        messages = {
            plugin: peek_capture(
                db.dsn,
                f"{name}_{plugin}",
                plugin,
                directory / f"{plugin}.capture",
                options={"publication_names": "pub", "proto_version": "1"}
                if plugin == "pgoutput"
                else {},
            )
            for plugin in PLUGINS
        }
        yield Captures(messages, cluster.dsn(f"{name}_target"), directory)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'DROP DATABASE "{name}_target" WITH (FORCE)')


def _write(path: Path, messages: list[bytes]) -> Path:
    path.write_bytes(b"".join(m + b"\n" for m in messages))
    return path


def _first_change(messages: list[bytes], plugin: str) -> int:
    """Index of the first row change (after the first Begin, and pgoutput's Relation)."""
    for i, message in enumerate(messages):
        if MARKER.encode() in message:
            return i
    raise AssertionError(f"no {plugin} message holds {MARKER}")


def _truncated_mid_message(messages: list[bytes], plugin: str, path: Path) -> Path:
    i = _first_change(messages, plugin)
    data = b"".join(m + b"\n" for m in messages[:i]) + messages[i][: len(messages[i]) // 2]
    path.write_bytes(data)
    return path


def _truncated_in_a_transaction(messages: list[bytes], plugin: str, path: Path) -> Path:
    return _write(path, messages[: _first_change(messages, plugin) + 1])


def _garbled(messages: list[bytes], plugin: str, path: Path) -> Path:
    damaged = list(messages)
    damaged[_first_change(messages, plugin)] = b"#garbage# {[( \x01"
    return _write(path, damaged)


def _not_utf8(messages: list[bytes], plugin: str, path: Path) -> Path:
    damaged = list(messages)
    i = _first_change(messages, plugin)
    damaged[i] = damaged[i].replace(MARKER.encode(), b"\xff\xfe" + MARKER.encode()[2:], 1)
    return _write(path, damaged)


def _empty(messages: list[bytes], plugin: str, path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _deeply_nested(messages: list[bytes], plugin: str, path: Path) -> Path:
    damaged = list(messages)
    damaged[_first_change(messages, plugin)] = b"[" * 100_000 + b"]" * 100_000
    return _write(path, damaged)


Damage = Callable[[list[bytes], str, Path], Path]
#: damage -> (plugins it applies to, what the line must say besides the file's path)
DAMAGES: dict[str, tuple[Damage, tuple[str, ...], str]] = {
    # Cut short (pg_recvlogical stopped) inside the table's first transaction: what committed
    # is read, and that holds no change of the table (issue 9, item 3).
    "truncated-mid-message": (_truncated_mid_message, PLUGINS, r"has no change.* ends inside"),
    "truncated-in-a-transaction": (
        _truncated_in_a_transaction,
        PLUGINS,
        r"has no change.* ends inside transaction",
    ),
    "garbled": (_garbled, PLUGINS, r"(line|byte) \d+.*(not JSON|malformed|unknown|never prints)"),
    "not-utf8": (_not_utf8, PLUGINS, r"UTF-8"),
    "empty": (_empty, PLUGINS, r"is empty"),
    "deeply-nested-json": (_deeply_nested, ("wal2json",), r"(line|byte) \d+"),
}
CAPTURE_CASES = [
    pytest.param(damage, plugin, id=f"{plugin}-{damage}")
    for damage, (_, plugins, _) in DAMAGES.items()
    for plugin in plugins
]


def capture_args(captures: Captures, path: Path, plugin: str, into: str) -> list[str]:
    return [
        "recover",
        "--from-file",
        str(path),
        "--plugin",
        plugin,
        *CAPTURE_OPTIONS[plugin],
        "--table",
        "public.t",
        "--target",
        captures.target,
        "--into",
        into,
    ]


def check_capture_refused(captures: Captures, args: list[str], into: str) -> str:
    before = user_tables(captures.target)
    line = error_line(cli(*args))
    assert user_tables(captures.target) == before
    assert not completed_recoveries(captures.target, into)
    return line


def test_the_undamaged_captures_recover(captures: Captures) -> None:
    """The control: every capture recovers as is, so the damaged ones fail for their damage."""
    for plugin, messages in captures.messages.items():
        path = _write(captures.directory / f"whole-{plugin}", messages)
        into = f"public.whole_{plugin}"
        result = cli(*capture_args(captures, path, plugin, into))
        assert result.exit_code == 0, (plugin, result.stderr)
        with session(captures.target) as conn:
            rows = conn.execute(f"SELECT id, amount::text FROM {into} ORDER BY id").fetchall()
        assert rows == [(1, "1.50"), (2, "9.00"), (4, "6.00"), (5, "7.50")], plugin


@pytest.mark.parametrize(("damage", "plugin"), CAPTURE_CASES)
def test_damaged_capture(captures: Captures, damage: str, plugin: str) -> None:
    make, _, pattern = DAMAGES[damage]
    path = make(captures.messages[plugin], plugin, captures.directory / f"{plugin}-{damage}")
    into = f"public.{plugin}_{damage.replace('-', '_')}"

    line = check_capture_refused(captures, capture_args(captures, path, plugin, into), into)

    assert str(path) in line, line
    assert re.search(pattern, line), line


OTHER_PLUGIN = [
    pytest.param(written, stated, id=f"{written}-read-as-{stated}")
    for written in PLUGINS
    for stated in PLUGINS
    if stated != written
]


@pytest.mark.parametrize(("written", "stated"), OTHER_PLUGIN)
def test_capture_of_another_plugin_than_stated(
    captures: Captures, written: str, stated: str
) -> None:
    path = _write(captures.directory / f"{written}-as-{stated}", captures.messages[written])
    into = f"public.{written}_as_{stated}"

    line = check_capture_refused(captures, capture_args(captures, path, stated, into), into)

    assert str(path) in line, line
    assert stated in line, line
    assert re.search(r"not |damaged|never prints", line), line


def test_pgoutput_insert_before_its_relation(captures: Captures) -> None:
    messages = captures.messages["pgoutput"]
    without = [m for m in messages if m[:1] != b"R"]
    assert len(without) < len(messages)
    path = _write(captures.directory / "pgoutput-no-relation", without)

    into = "public.no_relation"
    line = check_capture_refused(captures, capture_args(captures, path, "pgoutput", into), into)

    assert str(path) in line
    assert "Insert" in line and "before its Relation" in line, line


def test_capture_that_does_not_exist(captures: Captures) -> None:
    path = captures.directory / "no-such-capture"
    into = "public.nothing"

    line = check_capture_refused(captures, capture_args(captures, path, "wal2json", into), into)

    assert f"capture file {path} does not exist" in line


def test_capture_that_is_a_directory_is_a_usage_error(captures: Captures) -> None:
    path = captures.directory / "a-directory"
    path.mkdir()

    result = cli(*capture_args(captures, path, "wal2json", "public.nothing"))

    assert result.exit_code == 2
    assert "is a directory" in result.stderr
