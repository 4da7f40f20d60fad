"""``walrecover decode``: JSON lines, redo SQL and undo SQL, from slots and capture files.

Capture files are the parity fixture's real ``pg_recvlogical -f`` captures (one workload,
every plugin: see ``tests/test_parity.py``); slot reads run on a fresh live database per test.
Redo SQL is applied (with psycopg, no psql) to an empty copy of the tables and must rebuild them;
undo SQL is applied to a table damaged by a ``DELETE`` (or ``UPDATE``) without WHERE and must
restore it. Malformed captures must fail with exit 1 and one line naming the file and where.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import (
    Database,
    cli,
    differences,
    in_transaction,
    snapshot,
    source_untouched,
    stderr_lines,
)
from psycopg import sql
from test_parity import (
    NOT_JSON_NUMBERS,
    PARITY,
    REBUILT,
    column_names,
    expected,
    fast_wal_writer,
    float_like_columns,
    group,
    step,
    table,
    unpack_captures,
    user_options,
    workload,
)

from walrecover.db import connect
from walrecover.drill.cluster import Cluster
from walrecover.stream.decoders.pgoutput import split_capture

FIELDS = {
    "xid",
    "lsn",
    "commit_lsn",
    "commit_time",
    "op",
    "schema",
    "table",
    "relation_id",
    "new",
    "old",
    "unchanged_toast",
}
CAPTURES = list(group("capture"))


@pytest.fixture(scope="module", autouse=True)
def quick_slot_reads(cluster: Cluster) -> Iterator[None]:
    with fast_wal_writer(cluster):
        yield


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return unpack_captures(tmp_path_factory.mktemp("decode-captures"))


def capture_args(captures: dict[str, Path], name: str) -> list[str]:
    """``--from-file PATH --plugin P -o NAME=VALUE ...`` as a user would give them."""
    args = ["--from-file", str(captures[name]), "--plugin", group("capture")[name]["plugin"]]
    for option, value in user_options("capture", name).items():
        args += ["-o", f"{option}={value}"]
    return args


def records(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def committed_xids(before: str | None = None) -> list[int]:
    """xids of the committed workload steps that change rows, in commit order."""
    xids = []
    for s in expected()["steps"]:
        if before is not None and s["label"].startswith(before):
            break
        if s["outcome"] in ("commit", "prepare-commit") and not s["label"].startswith(
            "recreated: dropped"
        ):
            xids.append(s["xid"])
    return xids


def dedupe(values: list[int]) -> list[int]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


# -- decode --format jsonl -----------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_jsonl_fields_and_values_of_every_capture(captures: dict[str, Path], name: str) -> None:
    plugin = group("capture")[name]["plugin"]
    lines = records(cli("decode", *capture_args(captures, name)))
    assert lines and all(set(line) == FIELDS for line in lines)
    # Every committed transaction with row changes, in commit order (format 1 drops the
    # truncate-only one), and nothing of the rolled-back ones.
    xids = committed_xids()
    if name == "wal2json_v1":
        xids.remove(step("staging: TRUNCATE")["xid"])
    assert dedupe([line["xid"] for line in lines]) == xids
    steps = {s["xid"]: s for s in expected()["steps"]}
    for line in lines:
        recorded = steps[line["xid"]]
        # Fields a plugin does not provide are null (see test_parity.POSITIONS).
        if name in ("wal2json_v2",) or plugin == "pgoutput":
            assert line["commit_lsn"] == recorded["commit_lsn"]
        else:
            assert line["commit_lsn"] is None
        assert (line["lsn"] is not None) == (name == "wal2json_v2")
        assert datetime.fromisoformat(line["commit_time"]) == datetime.fromisoformat(
            recorded["commit_time"]
        )
        assert isinstance(line["relation_id"], int) == (plugin == "pgoutput")
        assert line["op"] in ("insert", "update", "delete", "truncate")
        assert isinstance(line["unchanged_toast"], list)
    # Values: the key change 3 -> 30 of kinds carries the row as it is at the end.
    (moved,) = [
        line
        for line in lines
        if line["table"] == "kinds" and line["op"] == "update" and line["new"]["id"] == "30"
    ]
    assert (moved["schema"], moved["old"]) == ("public", {"id": "3"})
    final = dict(zip(column_names("kinds"), _row("kinds", "30"), strict=True))
    if plugin == "pgoutput":
        final.pop("g")  # not published by PostgreSQL 15
    if plugin == "wal2json":  # NaN and Infinity print as null
        final = {
            k: None if k in float_like_columns("kinds") and v in NOT_JSON_NUMBERS else v
            for k, v in final.items()
        }
    assert moved["new"] == final
    # An update that left the TOASTed body alone says so, without the body.
    updates = [line for line in lines if line["op"] == "update"]
    retitled = next(line for line in updates if line["table"] == "documents")
    assert retitled["unchanged_toast"] == ["body"]
    assert "body" not in retitled["new"]
    assert retitled["new"]["title"] == "first, retitled"


def _row(name: str, key: str) -> list[str | None]:
    (row,) = [r for r in table(name)["rows"] if r[0] == key]
    return list(row)


SLOT_PLUGINS = {
    "wal2json": ("wal2json", []),
    "wal2json_v1": ("wal2json", ["-o", "format-version=1"]),
    "test_decoding": ("test_decoding", []),
    "pgoutput": ("pgoutput", []),
}


@pytest.fixture
def small(db: Database) -> Iterator[Database]:
    """A table with an awkward name and a plain one, a slot per plugin created before the rows,
    a few transactions (one rolled back)."""
    db.execute('CREATE TABLE "Odd.Name" (id integer PRIMARY KEY, note text, amount numeric(12,2))')
    db.execute("CREATE TABLE plain (id integer PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    for plugin in ("wal2json", "test_decoding", "pgoutput"):
        db.create_slot(f"s_{plugin}", plugin)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO \"Odd.Name\" VALUES (1, E'it''s\\n\"two\" lines', 1.10), (2, NULL, NULL)"
        )
        conn.execute("INSERT INTO plain VALUES (1, 'one')")
        with conn.transaction():
            conn.execute('UPDATE "Odd.Name" SET id = 10, amount = 123456789.01 WHERE id = 1')
            conn.execute("UPDATE plain SET v = 'uno' WHERE id = 1")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO plain VALUES (666, 'rolled back')")
        conn.execute("ROLLBACK")
        conn.execute('DELETE FROM "Odd.Name" WHERE id = 2')
    yield db


@pytest.mark.parametrize("variant", list(SLOT_PLUGINS))
def test_jsonl_from_a_slot_with_table_filter(small: Database, variant: str) -> None:
    plugin, options = SLOT_PLUGINS[variant]
    slot = f"s_{plugin}"
    with source_untouched(small, slot):
        result = cli("decode", "-d", small.dsn, "--slot", slot, *options, "--table", '"Odd.Name"')
    lines = records(result)
    assert all(set(line) == FIELDS for line in lines)
    assert {(line["schema"], line["table"]) for line in lines} == {("public", "Odd.Name")}
    assert [(line["op"], line["new"], line["old"]) for line in lines] == [
        ("insert", {"id": "1", "note": 'it\'s\n"two" lines', "amount": "1.10"}, None),
        ("insert", {"id": "2", "note": None, "amount": None}, None),
        (
            "update",
            {"id": "10", "note": 'it\'s\n"two" lines', "amount": "123456789.01"},
            {"id": "1"},
        ),
        ("delete", None, {"id": "2"}),
    ]
    # Through a slot every change has its LSN; the commit LSN is known to all but
    # test_decoding (which prints only the commit record's end) and wal2json format 1.
    assert all(line["lsn"] is not None for line in lines)
    assert all(
        (line["commit_lsn"] is None) == (variant in ("test_decoding", "wal2json_v1"))
        for line in lines
    )
    assert all(isinstance(line["relation_id"], int) == (plugin == "pgoutput") for line in lines)
    xids = dedupe([line["xid"] for line in lines])
    assert len(xids) == 3 and xids == sorted(xids)
    # Repeating --table adds tables.
    with source_untouched(small, slot):
        both = records(
            cli(
                "decode",
                "-d",
                small.dsn,
                "--slot",
                slot,
                *options,
                "--table",
                '"Odd.Name"',
                "--table",
                "PUBLIC.Plain",
            )
        )
    assert {line["table"] for line in both} == {"Odd.Name", "plain"}
    assert len(both) == len(lines) + 2
    assert "rolled back" not in json.dumps(both)


# -- decode --format sql ------------------------------------------------------------------------


def empty_copy(db: Database, plugin: str) -> None:
    """The workload's tables, empty, in their final definitions. The redo SQL of a plugin that
    prints generated columns (wal2json, test_decoding) sets them, so there they are plain
    columns; pgoutput does not publish them, so there the server computes them."""
    with connect(db.dsn, autocommit=True) as conn:
        conn.execute(workload()["schema"])
        conn.execute("DROP TABLE recreated")
        conn.execute("CREATE TABLE recreated (id integer PRIMARY KEY, v text, extra integer)")
        if plugin != "pgoutput":
            conn.execute("ALTER TABLE kinds ALTER COLUMN g DROP EXPRESSION")


def table_rows(db: Database, name: str) -> list[list[str | None]]:
    query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT").format(
        sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, table(name)["order_by"]))
    )
    rows: list[list[str | None]] = []
    with connect(db.dsn, autocommit=True) as conn, conn.cursor() as cur, cur.copy(query) as copy:
        for row in copy.rows():
            rows.append([None if value is None else str(value) for value in row])
    return rows


def truth_as_printed_by(name: str, source: str) -> list[list[str | None]]:
    """The ground truth as the plugin of ``source`` can carry it."""
    rows = [list(row) for row in table(name)["rows"]]
    if source.startswith("wal2json"):  # NaN and +-Infinity print as null
        floats = [column_names(name).index(c) for c in float_like_columns(name)]
        for row in rows:
            for i in floats:
                if row[i] in NOT_JSON_NUMBERS:
                    row[i] = None
    if (source, name) == ("wal2json_v1", "staging"):  # format 1 drops the TRUNCATE
        rows = sorted([["1", "gone"], ["2", "gone too"], *rows], key=lambda r: int(r[0] or 0))
    return rows


@pytest.mark.parametrize("name", CAPTURES)
def test_redo_sql_applied_to_an_empty_copy_rebuilds_the_tables(
    db: Database, captures: dict[str, Path], name: str
) -> None:
    plugin = group("capture")[name]["plugin"]
    tables = [arg for t in REBUILT for arg in ("--table", f"public.{t}")]
    result = cli("decode", *capture_args(captures, name), "--format", "sql", *tables)
    assert result.exit_code == 0, result.stderr
    # Not result.stdout: click's runner turns CR LF into LF, and a value here holds a CR LF.
    script = result.stdout_bytes.decode("utf-8")
    assert script.count("BEGIN;") == script.count("COMMIT;") > 0
    empty_copy(db, plugin)
    with connect(db.dsn, autocommit=True) as conn:
        conn.execute(script)
    for table_name in REBUILT:
        if f'-- cannot redo the update on "public"."{table_name}"' in script:
            # test_decoding names no key before a table's first old key: an UPDATE before it
            # cannot say which row it changed, and the script says so instead of guessing.
            assert plugin == "test_decoding"
            continue
        assert table_rows(db, table_name) == truth_as_printed_by(table_name, name), table_name


# -- decode --format undo-sql -------------------------------------------------------------------

LONG = "".join(f"{i:04d}-incompressible-{i * 7919 % 10007:05d};" for i in range(600))

DAMAGE = {
    "delete": "DELETE FROM accounts",
    "update": "UPDATE accounts SET balance = 0, note = 'oops', owner = NULL",
}


def accounts(db: Database, identity: str) -> None:
    with db.connect() as conn:
        conn.execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, owner text, balance numeric(12,2),"
            " note text, body text, opened date)"
        )
        conn.execute("ALTER TABLE accounts ALTER COLUMN body SET STORAGE EXTERNAL")
        conn.execute(f"ALTER TABLE accounts REPLICA IDENTITY {identity}")
        conn.execute(
            "INSERT INTO accounts VALUES"
            " (1, 'O''Brien', 10.00, E'two\\nlines', 'short', '2024-01-01'),"
            " (2, NULL, NULL, E'tab\\there', %s, NULL),"
            " (3, 'Grüße 😀', -0.01, NULL, NULL, '2024-02-29'),"
            " (4, 'quote \"x\"', 99999999.99, E'back\\\\slash', NULL, NULL)",
            (LONG,),
        )


def undo_slot(db: Database, variant: str) -> tuple[str, list[str]]:
    """The slot for ``variant`` (created now, after the good rows) and its decode options."""
    plugin, options = SLOT_PLUGINS[variant]
    if plugin == "pgoutput":
        db.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    db.create_slot("cdc", plugin)
    return "cdc", options


#: Plugins whose old rows show REPLICA IDENTITY FULL unambiguously (wal2json 2 sends the primary
#: key beside the identity, pgoutput flags it). test_decoding and wal2json 1 print a FULL old row
#: like a key of every non-NULL column: walrecover cannot tell, so it refuses with a comment
#: (test_undo_sql_refuses_full_rows_it_cannot_tell_from_keys).
UNAMBIGUOUS_FULL = ["wal2json", "pgoutput"]


@pytest.mark.parametrize("variant", ["wal2json_v1", "test_decoding"])
def test_undo_sql_refuses_full_rows_it_cannot_tell_from_keys(db: Database, variant: str) -> None:
    accounts(db, "FULL")
    slot, options = undo_slot(db, variant)
    xid = in_transaction(db, DAMAGE["delete"])
    result = cli(
        "decode", "-d", db.dsn, "--slot", slot, *options, "--format", "undo-sql", "--xid", str(xid)
    )
    assert result.exit_code == 0, result.stderr
    assert "-- cannot undo the delete" in result.stdout
    assert "INSERT" not in result.stdout


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("variant", UNAMBIGUOUS_FULL)
def test_undo_sql_restores_a_full_identity_table(db: Database, variant: str, damage: str) -> None:
    accounts(db, "FULL")
    slot, options = undo_slot(db, variant)
    snapshot(db, "accounts", "before")
    xid = in_transaction(db, DAMAGE[damage])
    with source_untouched(db, slot):
        result = cli(
            "decode",
            "-d",
            db.dsn,
            "--slot",
            slot,
            *options,
            "--format",
            "undo-sql",
            "--xid",
            str(xid),
        )
    assert result.exit_code == 0, result.stderr
    assert "-- cannot undo" not in result.stdout
    with connect(db.dsn, autocommit=True) as conn:
        conn.execute(result.stdout_bytes.decode("utf-8"))
    assert differences(db, "before", "accounts") == (0, 0)
    assert db.scalar("SELECT body FROM accounts WHERE id = 2") == LONG


@pytest.mark.parametrize("variant", UNAMBIGUOUS_FULL)
def test_undo_sql_restores_nulls_of_columns_that_have_defaults(db: Database, variant: str) -> None:
    """test_decoding leaves NULL columns out of old rows: an undo INSERT that leaves a column
    out gets its DEFAULT, not the NULL the row had."""
    accounts(db, "FULL")
    db.execute("ALTER TABLE accounts ALTER COLUMN note SET DEFAULT 'n/a'")
    db.execute("UPDATE accounts SET note = NULL WHERE id = 1")
    slot, options = undo_slot(db, variant)
    snapshot(db, "accounts", "before")
    xid = in_transaction(db, "DELETE FROM accounts")
    result = cli(
        "decode", "-d", db.dsn, "--slot", slot, *options, "--format", "undo-sql", "--xid", str(xid)
    )
    assert result.exit_code == 0, result.stderr
    with connect(db.dsn, autocommit=True) as conn:
        conn.execute(result.stdout)
    assert db.scalar("SELECT count(*) FROM accounts WHERE note = 'n/a'") == 0
    assert differences(db, "before", "accounts") == (0, 0)


@pytest.mark.parametrize("variant", list(SLOT_PLUGINS))
def test_undo_sql_explains_why_a_default_identity_delete_cannot_be_undone(
    db: Database, variant: str
) -> None:
    accounts(db, "DEFAULT")
    slot, options = undo_slot(db, variant)
    xid = in_transaction(db, "DELETE FROM accounts")
    result = cli(
        "decode", "-d", db.dsn, "--slot", slot, *options, "--format", "undo-sql", "--xid", str(xid)
    )
    assert result.exit_code == 0, result.stderr
    comments = [line for line in result.stdout.splitlines() if line.startswith("-- cannot undo")]
    assert len(comments) == 4
    assert all("REPLICA IDENTITY FULL" in line for line in comments)
    assert not [
        line
        for line in result.stdout.splitlines()
        if line and not line.startswith("--") and line not in ("BEGIN;", "COMMIT;")
    ]
    with connect(db.dsn, autocommit=True) as conn:
        conn.execute(result.stdout)
    assert db.scalar("SELECT count(*) FROM accounts") == 0


# -- --stop-before-* ----------------------------------------------------------------------------

STOP_STEP = "staging: rows after the truncate"


def stop_argument(kind: str) -> list[str]:
    recorded = step(STOP_STEP)
    if kind == "lsn":
        return ["--stop-before-lsn", recorded["commit_lsn"]]
    if kind == "xid":
        return ["--stop-before-xid", str(recorded["xid"])]
    moment = datetime.fromisoformat(recorded["commit_time"])
    return ["--stop-before-time", moment.isoformat()]


@pytest.mark.parametrize("kind", ["lsn", "xid", "time"])
@pytest.mark.parametrize("name", CAPTURES)
def test_stop_before_options_leave_out_the_stop_transaction_and_later(
    captures: dict[str, Path], name: str, kind: str
) -> None:
    result = cli("decode", *capture_args(captures, name), *stop_argument(kind))
    if (name, kind) == ("test_decoding", "lsn"):
        # A test_decoding capture has no LSN at all: the stop point cannot be decided, which
        # must be an error (as recover says), never a silent decode of everything.
        assert result.exit_code == 1, f"printed {len(result.stdout.splitlines())} changes"
        (line,) = stderr_lines(result)
        assert "--stop-before-lsn" in line or "LSN" in line
        return
    lines = records(result)
    xids = committed_xids(before=STOP_STEP)
    if name == "wal2json_v1":
        xids.remove(step("staging: TRUNCATE")["xid"])
    assert dedupe([line["xid"] for line in lines]) == xids


@pytest.mark.parametrize("fmt", ["sql", "undo-sql"])
def test_stop_point_and_table_filter_apply_to_the_sql_formats(
    captures: dict[str, Path], fmt: str
) -> None:
    result = cli(
        "decode",
        *capture_args(captures, "pgoutput_v2"),
        "--format",
        fmt,
        "--table",
        "public.staging",
        "--start-at-xid",
        str(committed_xids()[0]),
        *stop_argument("xid"),
    )
    assert result.exit_code == 0, result.stderr
    statements = [line for line in result.stdout.splitlines() if '"public".' in line]
    assert statements and all('"public"."staging"' in line for line in statements)
    assert "after truncate" not in result.stdout  # the stop transaction's rows
    assert "TRUNCATE" in result.stdout  # the last transaction before it


# -- usage errors and damaged captures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slot", "cdc", "--from-file", "x.capture", "--plugin", "wal2json"], "not both"),
        (["--from-file", "x.capture"], "--plugin"),
        ([], "--slot"),
        (["--slot", "cdc", "--plugin", "wal2json"], "--via-plugin"),
        (["--from-file", "x.capture", "--plugin", "nope"], "nope"),
        (["--from-file", "x.capture", "--plugin", "wal2json", "-o", "novalue"], "NAME=VALUE"),
        (["--from-file", "x.capture", "--plugin", "wal2json", "--format", "csv"], "csv"),
    ],
    ids=[
        "slot-and-file",
        "file-without-plugin",
        "no-source",
        "plugin-with-slot",
        "bad-plugin",
        "bad-option",
        "bad-format",
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = cli("decode", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr


def _assert_one_line_naming(result: Result, path: Path, unit: str) -> None:
    assert result.exit_code == 1, result.stdout[-300:]
    (line,) = stderr_lines(result)
    assert line.startswith("walrecover: error: ")
    assert str(path) in line or path.name in line
    # A capture has no LSN for most messages: naming "LSN None" tells the user nothing.
    assert "LSN None" not in line, line
    if unit == "line":
        assert "line" in line or f"{path.name}:" in line, line
    else:
        assert "byte" in line, line


def _unit(name: str) -> str:
    return "byte" if group("capture")[name]["plugin"] == "pgoutput" else "line"


def _damage(kind: str, data: bytes, plugin: str) -> bytes:
    if kind == "empty":
        return b""
    if kind == "truncated":  # pg_recvlogical stopped mid-write
        return data[: len(data) * 2 // 3 - 7]
    if kind == "cut-between-messages":  # a whole first part: the last transaction is open
        if plugin == "pgoutput":  # messages are framed by their structure, not by lines
            messages = list(split_capture(data, 3))
            return b"".join(m + b"\n" for m in messages[: len(messages) // 2])
        return data[: data.index(b"\n", len(data) // 2) + 1]
    if kind == "garbled":
        middle = len(data) // 3
        if plugin == "pgoutput":
            return data[:middle] + b"\x00\xff\x13garbage\x7f" * 3 + data[middle:]
        at = data.index(b"\n", middle) + 1
        return data[:at] + b"this is not a plugin message at all\n" + data[at:]
    assert kind == "not-utf-8"
    at = data.index(b"\n", len(data) // 3) + 1
    return data[:at] + b"table public.kinds: INSERT: id[integer]:\xff\xfe\n" + data[at:]


@pytest.mark.parametrize("damage", ["truncated", "cut-between-messages"])
@pytest.mark.parametrize("name", CAPTURES)
def test_a_capture_cut_short_decodes_what_committed_with_a_warning(
    captures: dict[str, Path], tmp_path: Path, name: str, damage: str
) -> None:
    """pg_recvlogical stopped inside a transaction: the transactions before it, and a warning
    naming the file, the transaction and where the file ends (issue 9, item 3)."""
    plugin = group("capture")[name]["plugin"]
    cut = tmp_path / f"{damage}-{name}.capture"
    cut.write_bytes(_damage(damage, captures[name].read_bytes(), plugin))
    result = cli("decode", *capture_args({name: cut}, name))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()
    (warning,) = [line for line in stderr_lines(result) if " ends inside " in line]
    assert f"{cut} ends inside " in warning and f" at {_unit(name)} " in warning, warning


@pytest.mark.parametrize("damage", ["empty", "garbled"])
@pytest.mark.parametrize("name", CAPTURES)
def test_a_damaged_capture_exits_1_naming_the_file_and_where(
    captures: dict[str, Path], tmp_path: Path, name: str, damage: str
) -> None:
    plugin = group("capture")[name]["plugin"]
    damaged = tmp_path / f"{damage}-{name}.capture"
    damaged.write_bytes(_damage(damage, captures[name].read_bytes(), plugin))
    result = cli("decode", *capture_args({name: damaged}, name))
    if damage == "empty":
        assert result.exit_code == 1
        (line,) = stderr_lines(result)
        assert str(damaged) in line and "empty" in line
        return
    _assert_one_line_naming(result, damaged, _unit(name))


@pytest.mark.parametrize("name", ["wal2json_v2", "wal2json_v1", "test_decoding"])
def test_a_capture_that_is_not_utf8_exits_1_naming_the_line(
    captures: dict[str, Path], tmp_path: Path, name: str
) -> None:
    damaged = tmp_path / f"latin1-{name}.capture"
    damaged.write_bytes(_damage("not-utf-8", captures[name].read_bytes(), "text"))
    result = cli("decode", *capture_args({name: damaged}, name))
    _assert_one_line_naming(result, damaged, "line")
    assert "UTF-8" in result.stderr


@pytest.mark.parametrize(
    ("name", "stated"),
    [
        ("wal2json_v2", ["--plugin", "test_decoding"]),
        ("test_decoding", ["--plugin", "wal2json"]),
        ("wal2json_v1", ["--plugin", "wal2json", "-o", "format-version=2"]),  # 1 stated as 2
        ("wal2json_v2", ["--plugin", "wal2json", "-o", "format-version=1"]),
        ("pgoutput_v1", ["--plugin", "wal2json"]),
        ("pgoutput_v1", ["--plugin", "test_decoding"]),
        ("wal2json_v2", ["--plugin", "pgoutput"]),
        ("test_decoding", ["--plugin", "pgoutput"]),
        ("pgoutput_v2", ["--plugin", "pgoutput", "-o", "proto_version=1"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(v.lstrip("-") for v in value),
)
def test_a_capture_of_another_plugin_than_stated_exits_1(
    captures: dict[str, Path], name: str, stated: list[str]
) -> None:
    result = cli("decode", "--from-file", str(captures[name]), *stated)
    unit = "byte" if stated[1] == "pgoutput" else "line"
    _assert_one_line_naming(result, captures[name], unit)


def test_the_capture_fixtures_are_real_pg_recvlogical_output() -> None:
    """What the tests above read: pg_recvlogical's framing (a newline after each message)."""
    for name, described in group("capture").items():
        with gzip.open(PARITY / described["file"], "rb") as fh:
            data = fh.read()
        assert data.endswith(b"\n"), name
        if described["plugin"] != "pgoutput":
            data.decode("utf-8")
