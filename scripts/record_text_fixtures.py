"""Record test_decoding and wal2json format-version 1 fixtures from a real, throwaway cluster.

Run ``.venv/bin/python scripts/record_text_fixtures.py`` from the repository root. It starts a
cluster with :class:`walrecover.drill.cluster.Cluster` (initdb as an unprivileged user when run as
root), creates four slots in a fresh database *before* anything else happens there (a
test_decoding and a wal2json slot that are only peeked, and one of each that ``pg_recvlogical``
consumes), runs the fixed workload below, and writes:

``fixtures/test_decoding/``
  - ``workload.sql``: the workload, transaction by transaction, for reading;
  - ``workload.jsonl``: the rows of ``pg_logical_slot_peek_changes`` with the options of
    :func:`walrecover.stream.decoders.testdecoding.server_options` (include-xids, include-timestamp,
    empty transactions kept), one JSON object per row: ``{"lsn", "xid", "data"}``;
  - ``capture.txt``: what ``pg_recvlogical --start -f`` wrote with the same options (rows whose
    values hold newlines span several lines there);
  - ``expected.json``: the ground truth (below).

``fixtures/wal2json_v1/``
  - ``workload.jsonl``: the rows with :func:`walrecover.stream.decoders.wal2json_v1.server_options`
    (format 1, ``write-in-chunks``: each row is a piece of a transaction's document);
  - ``workload_pretty.jsonl``: the same stream with ``pretty-print`` and no chunks (one row per
    transaction, spread over lines);
  - ``capture.txt``: ``pg_recvlogical`` output of the pretty-printed stream;
  - ``expected.json``: the same ground truth.

The ground truth is every table's final rows as the type's output function prints them (COPY
text: what test_decoding, wal2json and pgoutput print; ``bool`` gives ``t``, ``char(n)`` keeps its
padding, ``inet`` has no ``/32``), each table's primary key, and the xids of the committed and
aborted transactions. Every session (the workload, the peeks, ``pg_recvlogical`` through
PGOPTIONS) uses :data:`walrecover.db.SESSION_SETTINGS`, so all of them print the same text.

LSNs, xids and commit times differ on every recording; the tests read them from the fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from psycopg import sql
from recording import Step, render_steps, run_steps, table_contents
from workload import (
    POSITIONS_ROWS,
    POSITIONS_TABLE,
    POSITIONS_UPDATES,
    documents_table,
    long_text_function,
    toast_delete,
    toast_inserts,
    toast_rewrite,
    toast_untouched,
)

from walrecover.db import SESSION_SETTINGS, Connection, connect, one
from walrecover.drill.cluster import Cluster
from walrecover.stream.decoders import testdecoding, wal2json_v1

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures"
DATABASE = "fixtures"
SLOTS = {
    "peek_test_decoding": "test_decoding",
    "peek_wal2json": "wal2json",
    "capture_test_decoding": "test_decoding",
    "capture_wal2json": "wal2json",
}

SCHEMA = f"""\
{long_text_function(120, "Incompressible text stored out of line (STORAGE EXTERNAL)")}
CREATE TYPE mood AS ENUM ('happy', 'sad', 'it''s "complicated"');
CREATE DOMAIN positive_amount AS numeric(12,2) CHECK (VALUE > 0);
CREATE TABLE kinds (
    id        integer PRIMARY KEY,
    small     smallint,
    big       bigint,
    fixed     numeric(12,2),
    free      numeric,
    real4     real,
    double8   double precision,
    note      text,
    code      varchar(10),
    padded    char(5),
    blob      bytea,
    flag      boolean,
    day       date,
    clock     time,
    clock_tz  timetz,
    stamp     timestamp,
    stamp_tz  timestamptz,
    span      interval,
    uid       uuid,
    doc       json,
    docb      jsonb,
    addr      inet,
    ints      integer[],
    words     text[],
    feeling   mood,
    amount    positive_amount,
    bits      bit(3),
    varbits   bit varying(8),
    doubled   bigint GENERATED ALWAYS AS (big * 2) STORED
);
{documents_table("docs")}
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
{POSITIONS_TABLE}
CREATE TABLE staging (id integer PRIMARY KEY, note text);
CREATE TABLE scratch (id serial PRIMARY KEY, note text);
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Odd.Table" (
    "Id"        integer PRIMARY KEY,
    "col;x"     text,
    "select"    text,
    "new-tuple" text,
    "quote""d"  text,
    "Ünïcode"   varchar(20)
);
CREATE TABLE full_ident (id integer PRIMARY KEY, note text, extra integer);
ALTER TABLE full_ident REPLICA IDENTITY FULL"""


WORKLOAD: tuple[Step, ...] = (
    Step(
        "kinds: every type, awkward text, extremes, NaN and Infinity, all NULLs",
        (
            "INSERT INTO kinds (id, small, big, fixed, free, real4, double8, note, code, padded, "
            "blob, flag, day, clock, clock_tz, stamp, stamp_tz, span, uid, doc, docb, addr, ints, "
            "words, feeling, amount, bits, varbits) "
            "VALUES (1, 32767, 9007199254740993, "
            "1234567890.12, 3.14159265358979323846264338327950288419716939937510, 0.1, "
            "1.7976931348623157e308, "
            "E'O''Brien \"the\" tester\\ttab\\nnew line \\\\backslash \\\\x41 Grüße 日本 😀', "
            "'varchar', 'ab', '\\x00ff27deadbeef'::bytea, true, '2024-02-29', '04:05:06.789', "
            "'04:05:06+05:30', '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.123456+00', "
            "'1 year 2 months 3 days 04:05:06.7', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
            '\'{"limit": 1000.10,  "tags": ["a", "b"]}\', '
            '\'{"rate": 0.000000000000000001, "n": 12345678901234567890.5}\', '
            "'192.168.0.1', '{1,NULL,3}', "
            '\'{"a b","with \\"quote\\"",NULL,"NULL","back\\\\\\\\slash",""}\', '
            "'it''s \"complicated\"', 12.50, B'101', B'1')",
            "INSERT INTO kinds (id, small, big, fixed, free, real4, double8, note, code, padded, "
            "blob, flag, day, clock, clock_tz, stamp, stamp_tz, span, uid, doc, docb, addr, ints, "
            "words, feeling, amount, bits, varbits) "
            "VALUES (2, -32768, 4611686018427387903, "
            "-9999999999.99, "
            "-1234567890123456789012345678901234567890.0123456789012345678901234567890, "
            "'NaN', 'Infinity', "
            "E' leading space, ''single'' and \"double\" quotes,\\n\\nblank line,\\r\\n"
            "CR LF, trailing backslash\\\\', "
            "'x', 'abcde', ''::bytea, false, 'infinity', '00:00:00', '23:59:59.999999-08', "
            "'-infinity', '1999-12-31 23:00:00-05', '-3 days -00:00:01', "
            "'00000000-0000-0000-0000-000000000000', '[]', '{}', '10.0.0.0/8', '{}', "
            "'{\"\"}', 'happy', 0.01, B'000', B'')",
            "INSERT INTO kinds (id) VALUES (3)",
            "INSERT INTO kinds (id, small, big, fixed, free, real4, double8, note, code, padded, "
            "blob, flag, day, clock, clock_tz, stamp, stamp_tz, span, uid, doc, docb, addr, ints, "
            "words, feeling, amount, bits, varbits) "
            "VALUES (4, 0, 0, 0, 'NaN', '-Infinity', 'NaN', "
            "'null', 'null', 'null', '\\x6e756c6c'::bytea, NULL, '0001-01-01', NULL, NULL, "
            "'2000-01-01 00:00:00', NULL, '0', NULL, 'null', 'null', '::1', "
            "'{{1,2},{3,4}}', '{NULL}', 'sad', NULL, NULL, NULL)",
        ),
    ),
    Step(
        "kinds: updates that change values, clear some and fill others",
        (
            "UPDATE kinds SET fixed = fixed + 0.01, flag = false, docb = NULL, free = 'Infinity',"
            " ints = '{7,NULL}' WHERE id = 1",
            "UPDATE kinds SET note = E'was NULL,\\nnow two lines', big = 1, blob = '\\x5c6e',"
            ' words = E\'{"new\\nline","tab\\there"}\' WHERE id = 3',
            "UPDATE kinds SET free = '-Infinity', real4 = 'Infinity' WHERE id = 4",
        ),
    ),
    Step("kinds: change a primary key", ("UPDATE kinds SET id = 20, small = 7 WHERE id = 2",)),
    Step(
        "docs: TOASTed bodies",
        toast_inserts("docs"),
    ),
    Step(
        "docs: updates that leave the TOASTed body alone (unchanged-toast-datum)",
        toast_untouched("docs"),
    ),
    Step(
        "docs: an update that rewrites the body, then one that does not",
        toast_rewrite("docs"),
    ),
    Step("docs: delete", (toast_delete("docs"),)),
    Step(
        "positions: composite key, an update of the key",
        (
            POSITIONS_ROWS + ", (3, 'Zł', 0.01)",
            *POSITIONS_UPDATES,
        ),
    ),
    Step(
        "quoted identifiers, values that look like the plugin's own syntax",
        (
            "INSERT INTO \"My Schema\".\"Odd.Table\" VALUES (1, 'a;b', 'select',"
            " ' new-tuple: x[text]:''y''', 'say \"hi\"', 'Ünïcode ñ')",
            'INSERT INTO "My Schema"."Odd.Table" VALUES (2, E\'line\\n"Id"[integer]:3\','
            " 'null', 'unchanged-toast-datum', '''', NULL)",
            'INSERT INTO "My Schema"."Odd.Table" VALUES (3, NULL, NULL, NULL, NULL, NULL)',
            'UPDATE "My Schema"."Odd.Table" SET "Id" = 10, "quote""d" = \'moved\' WHERE "Id" = 1',
            'DELETE FROM "My Schema"."Odd.Table" WHERE "Id" = 3',
        ),
    ),
    Step(
        "REPLICA IDENTITY FULL: old images carry the whole row (without its NULLs)",
        (
            "INSERT INTO full_ident VALUES (1, 'one', NULL), (2, 'two', 2), (3, 'three', 3)",
            "UPDATE full_ident SET note = 'one, updated' WHERE id = 1",
            "UPDATE full_ident SET extra = NULL WHERE id = 2",
            "DELETE FROM full_ident WHERE id = 3",
        ),
    ),
    Step(
        "a transfer with a savepoint that is rolled back, and messages",
        (
            "UPDATE kinds SET amount = amount + 100 WHERE id = 1",
            "SELECT pg_logical_emit_message(true, 'walrecover', E'a message\\nover two lines')",
            "SAVEPOINT before_fee",
            "UPDATE kinds SET amount = 666 WHERE id = 1",
            "INSERT INTO positions VALUES (666, 'EUR', 6.66)",
            "DELETE FROM positions WHERE account_id = 1 AND currency = 'EUR'",
            "ROLLBACK TO SAVEPOINT before_fee",
            "SELECT pg_logical_emit_message(false, 'walrecover', 'not transactional')",
            "UPDATE positions SET quantity = quantity + 100 WHERE account_id = 3",
        ),
    ),
    Step(
        "an aborted transaction: none of it may appear",
        (
            "INSERT INTO kinds (id, note) VALUES (666, 'aborted')",
            "UPDATE kinds SET note = 'aborted' WHERE id = 1",
            "DELETE FROM positions",
            "INSERT INTO staging VALUES (666, 'aborted')",
        ),
        outcome="rollback",
    ),
    Step(
        "staging and scratch: rows that a TRUNCATE removes",
        (
            "INSERT INTO staging VALUES (1, 'gone'), (2, 'gone too')",
            "UPDATE staging SET note = 'still gone' WHERE id = 1",
            "INSERT INTO scratch (note) VALUES ('gone'), ('gone too')",
        ),
    ),
    Step("truncate two tables at once", ("TRUNCATE staging, scratch RESTART IDENTITY",)),
    Step(
        "staging and scratch: after the truncate (the same keys again)",
        (
            "INSERT INTO staging VALUES (2, 'after truncate'), (3, 'kept')",
            "INSERT INTO scratch (note) VALUES ('after truncate')",
        ),
    ),
    Step(
        "deletes",
        (
            "DELETE FROM kinds WHERE id = 3",
            "DELETE FROM positions WHERE account_id = 20",
        ),
    ),
)

#: Tables of the ground truth with their primary keys (the order of rows in expected.json).
TABLES: dict[str, tuple[str, ...]] = {
    "public.kinds": ("id",),
    "public.docs": ("id",),
    "public.positions": ("account_id", "currency"),
    "public.staging": ("id",),
    "public.scratch": ("id",),
    "My Schema.Odd.Table": ("Id",),
    "public.full_ident": ("id",),
}


def render_workload() -> str:
    """The workload as a readable SQL script (what the recorder runs, in order)."""
    header = [
        "-- The workload behind the test_decoding and wal2json_v1 fixtures",
        "-- (scripts/record_text_fixtures.py).",
        "-- Session: " + ", ".join(f"{k}={v}" for k, v in SESSION_SETTINGS.items()),
        "SET synchronous_commit = on;",
        *(
            f"SELECT pg_create_logical_replication_slot('{slot}', '{plugin}');"
            for slot, plugin in SLOTS.items()
        ),
    ]
    return render_steps(header, SCHEMA, WORKLOAD)


def run_workload(conn: Connection) -> tuple[list[int], list[int]]:
    """Run every step; return (committed xids, aborted xids)."""
    return run_steps(conn, WORKLOAD)


def peek(conn: Connection, slot: str, options: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every row the slot holds, decoded with ``options`` (peeking never moves the slot)."""
    flat = [item for pair in options for item in pair]
    rows = conn.execute(
        "SELECT lsn::text, xid::text::bigint, data"
        " FROM pg_logical_slot_peek_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        (slot, flat),
    ).fetchall()
    return [{"lsn": lsn, "xid": int(xid), "data": data} for lsn, xid, data in rows]


def capture(
    cluster: Cluster, slot: str, options: list[tuple[str, str]], endpos: str, path: Path
) -> None:
    """Consume ``slot`` with ``pg_recvlogical --start -f path`` up to ``endpos``."""
    path.unlink(missing_ok=True)  # pg_recvlogical appends to an existing file
    binary = cluster.installation.bindir / "pg_recvlogical"
    args = [str(binary), "-d", cluster.dsn(DATABASE), "--slot", slot, "--start", "--no-loop"]
    args += ["-E", endpos, "-f", str(path), "-F", "0", "-s", "1"]
    for name, value in options:
        args += ["-o", f"{name}={value}"]
    env = dict(os.environ)
    env["PGOPTIONS"] = " ".join(
        f"-c {name}={value.replace(' ', '')}" for name, value in SESSION_SETTINGS.items()
    )
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)
    if result.returncode != 0 or not path.is_file():
        raise SystemExit(f"pg_recvlogical failed ({result.returncode}): {result.stderr.strip()}")
    path.chmod(0o644)  # pg_recvlogical creates it private; it is a fixture, not a secret


def record(out: Path) -> None:
    td_options = testdecoding.server_options()
    v1_options = wal2json_v1.server_options()
    pretty = [(n, v) for n, v in v1_options if n != "write-in-chunks"] + [("pretty-print", "1")]
    td_dir, v1_dir = out / "test_decoding", out / "wal2json_v1"
    td_dir.mkdir(parents=True, exist_ok=True)
    v1_dir.mkdir(parents=True, exist_ok=True)
    with Cluster(require_plugins=("wal2json", "test_decoding")) as cluster:
        with connect(cluster.dsn(), autocommit=True, role="fixture") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        with connect(cluster.dsn(DATABASE), autocommit=True, role="fixture") as conn:
            # The throwaway cluster runs with synchronous_commit = off, and peek only decodes
            # WAL that is flushed: commit synchronously so the last transactions are included.
            conn.execute("SET synchronous_commit = on")
            for slot, plugin in SLOTS.items():
                conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, plugin))
            conn.execute(SCHEMA)
            committed, aborted = run_workload(conn)
            (endpos,) = one(conn, "SELECT pg_current_wal_lsn()::text")
            td_rows = peek(conn, "peek_test_decoding", td_options)
            v1_rows = peek(conn, "peek_wal2json", v1_options)
            v1_pretty = peek(conn, "peek_wal2json", pretty)
            tables = {name: table_contents(conn, name, key) for name, key in TABLES.items()}
            (version,) = one(conn, "SELECT version()")
        capture(cluster, "capture_test_decoding", td_options, endpos, td_dir / "capture.txt")
        capture(cluster, "capture_wal2json", pretty, endpos, v1_dir / "capture.txt")
    workload_sql = render_workload() + "\n"
    (td_dir / "workload.sql").write_text(workload_sql, encoding="utf-8")
    (v1_dir / "workload.sql").write_text(workload_sql, encoding="utf-8")
    _write_rows(td_dir / "workload.jsonl", td_rows)
    _write_rows(v1_dir / "workload.jsonl", v1_rows)
    _write_rows(v1_dir / "workload_pretty.jsonl", v1_pretty)
    for directory, options, extra in (
        (td_dir, td_options, {}),
        (v1_dir, v1_options, {"pretty_options": [list(pair) for pair in pretty]}),
    ):
        expected = {
            "server_version": version,
            "options": [list(pair) for pair in options],
            **extra,
            "capture_endpos": endpos,
            "session": SESSION_SETTINGS,
            "committed_xids": committed,
            "aborted_xids": aborted,
            "tables": tables,
        }
        (directory / "expected.json").write_text(
            json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    for directory in (td_dir, v1_dir):
        size = sum(path.stat().st_size for path in directory.iterdir())
        print(f"recorded {directory} ({size:,} bytes)", file=sys.stderr)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures directory")
    args = parser.parse_args()
    record(args.out)


if __name__ == "__main__":
    main()
