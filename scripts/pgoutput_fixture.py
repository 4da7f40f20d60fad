"""Record pgoutput fixtures from a real, throwaway PostgreSQL cluster.

Run ``.venv/bin/python scripts/pgoutput_fixture.py`` from the repository root. It starts a cluster
with :class:`walrecover.drill.cluster.Cluster` (``logical_decoding_work_mem = 64kB``, so big
transactions are streamed; prepared transactions enabled), creates a publication FOR ALL TABLES
and two pgoutput slots *before* the workload, runs the workload below, and writes
``fixtures/pgoutput/``:

- ``workload.sql``: the workload, transaction by transaction, for reading;
- ``v1.jsonl.gz``, ``v2.jsonl.gz``, ``v3.jsonl.gz``: the rows of
  ``pg_logical_slot_peek_binary_changes`` for each way of reading the stream (see ``READS``), one
  JSON object per row: ``{"lsn": "0/1A2B3C", "xid": 745, "hex": "<message bytes in hex>"}``;
- ``expected.json``: the ground truth: every table's final rows as the type's output function
  prints them (``COPY ... TO STDOUT``), each column's ``format_type``, the xid and outcome of each
  workload transaction, the relation ids of the dropped and re-created table, and
  ``format_type(oid, -1)`` of every built-in type (to check the decoder's own type names).

The plain slot is read twice (``peek`` does not move it): protocol 1, and protocol 2 with
streaming and messages on. The two-phase slot (created with ``two_phase => true``) is read with
protocol 3, streaming and ``two_phase`` on; a two-phase slot always decodes PREPAREs, so it cannot
serve the protocol-1 read.

LSNs, xids and times differ on every recording; the tests read them from the fixture.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from psycopg import sql
from recording import Step
from workload import (
    BIG_ABORTED,
    BIG_STREAMED,
    POSITIONS_ROWS,
    POSITIONS_TABLE,
    POSITIONS_UPDATES,
    RECREATE,
    bulk,
    documents_table,
    ending,
    long_text_function,
    toast_delete,
    toast_inserts,
    toast_rewrite,
    toast_untouched,
)

from walrecover.db import SESSION_SETTINGS, Connection, connect, one
from walrecover.drill.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures" / "pgoutput"
DATABASE = "fixtures"
PUBLICATION = "walrecover_fixture"
SLOT = "fixtures_pgoutput"
SLOT_TWO_PHASE = "fixtures_pgoutput_2pc"
ORIGIN = "fixture_upstream"
SETTINGS = {"logical_decoding_work_mem": "64kB", "max_prepared_transactions": "10"}

#: name -> (slot, pgoutput options) for each recorded read of the same workload.
READS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "v1": (SLOT, [("proto_version", "1"), ("publication_names", PUBLICATION)]),
    "v2": (
        SLOT,
        [
            ("proto_version", "2"),
            ("publication_names", PUBLICATION),
            ("streaming", "on"),
            ("messages", "true"),
        ],
    ),
    "v3": (
        SLOT_TWO_PHASE,
        [
            ("proto_version", "3"),
            ("publication_names", PUBLICATION),
            ("streaming", "on"),
            ("two_phase", "on"),
            ("messages", "true"),
        ],
    ),
}

#: Message type bytes each read must contain, or the recording does not cover what it promises.
REQUIRED_MESSAGES = {
    "v1": "BCRIUDTOY",
    "v2": "BCRIUDTOYMSEcA",
    "v3": "BCRIUDTOYMSEcAbPKrp",
}

SETUP = f"""\
CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES;
SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput');
SELECT pg_create_logical_replication_slot('{SLOT_TWO_PHASE}', 'pgoutput', false, true);
SELECT pg_replication_origin_create('{ORIGIN}')"""

SCHEMA = f"""\
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN amount AS numeric(12,2) CHECK (VALUE > -1000000);
{long_text_function(300, "Incompressible text > 8 kB, so it is TOASTed out of line")}
CREATE TABLE kinds (
    id      integer PRIMARY KEY,
    i2      smallint,
    i8      bigint,
    n_c     numeric(20,8),
    n_u     numeric,
    r       real,
    d       double precision,
    t       text,
    vc      varchar(20),
    ch      char(5),
    ba      bytea,
    b       boolean,
    dt      date,
    tm      time,
    tm3     time(3),
    ttz     timetz,
    ts      timestamp,
    ts3     timestamp(3),
    tstz    timestamptz,
    iv      interval,
    iv_ym   interval year to month,
    iv_ds   interval day to second(2),
    u       uuid,
    j       json,
    jb      jsonb,
    ip      inet,
    net     cidr,
    ai      integer[],
    at      text[],
    an      numeric(10,2)[],
    avc     varchar(5)[],
    m       mood,
    am      amount,
    ms      mood[],
    g       numeric GENERATED ALWAYS AS (n_c * 2) STORED
);
-- Never written: only its column types matter (format_type of unusual type modifiers).
CREATE TABLE typmods (
    a bit(3), b varbit(8), c bit varying, d bpchar, e char, f interval hour,
    g interval hour to minute, h interval minute to second(0), i interval second(3),
    j interval(4), k interval day, l interval month, m timetz(2), n timestamptz(0),
    o numeric(5,-2), p numeric(1000,500), q varchar, r "char", s name, t oid, u money,
    v macaddr, w xml, x int4range, y tsvector, z pg_lsn, aa timestamptz(3)[], ab character(3)[]
);
{documents_table("documents")}
{POSITIONS_TABLE}
CREATE TABLE fullrows (id integer NOT NULL, label text, amount numeric(12,2));
ALTER TABLE fullrows REPLICA IDENTITY FULL;
CREATE TABLE staging (id serial PRIMARY KEY, note text);
CREATE TABLE staging_child (id integer PRIMARY KEY, parent integer REFERENCES staging (id));
CREATE TABLE recreated (id integer PRIMARY KEY, v text);
CREATE TABLE big (id integer PRIMARY KEY, note text)"""

KINDS_ROW_1 = (
    "INSERT INTO kinds VALUES (1, 32767, 9223372036854775807, 12345678.12345678, "
    "123456789012345678901234567890.123456789012345678901234567890, 3.14159, 0.1, "
    "'O''Brien \"the\" tester', 'varchar value', 'ab', '\\x00ff10deadbeef', true, "
    "'2024-02-29', '23:59:59.123456', '12:00:00.123', '10:00:00+02', "
    "'2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.1239', '2024-02-29 23:59:59.123456+00', "
    "'1 year 2 months 3 days 04:05:06.5', '1 year 2 months', '3 days 04:05:06.789', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    '\'{"limit": 1000.10, "rate": 0.000000000000000001}\', '
    '\'{"nested": {"amount": 99999999999.99999999}}\', '
    "'192.168.0.1', '10.0.0.0/8', '{1,NULL,3}', "
    '\'{"with space","quote\\"d",NULL,"NULL","comma,here","back\\\\slash"}\', '
    "'{1.50,NULL,-2.25}', '{ab,\"c d\"}', 'happy', 1234.56, '{sad,happy}')"
)

KINDS_ROW_2 = "INSERT INTO kinds (id) VALUES (2)"

KINDS_ROW_3 = (
    "INSERT INTO kinds (id, i2, i8, n_c, n_u, r, d, t, vc, ch, ba, b, tstz, iv, ip, ai, at) "
    "VALUES (3, -32768, -9223372036854775808, -0.00000001, 'NaN', 'NaN', 'Infinity', "
    "E'line one\\nline two\\ttabbed\\\\backslash, Grüße, 日本語, emoji 😀', "
    "'', 'x', ''::bytea, false, '-infinity', '-1 days +02:00:00', '::1', '{}', "
    "'{\"\"}')"
)

KINDS_ROW_4 = (
    "INSERT INTO kinds (id, n_u, r, d) VALUES "
    "(4, 1234567890123456789012345678901234567890.0123456789, '-Infinity', '-Infinity')"
)


WORKLOAD: tuple[Step, ...] = (
    Step("kinds: every type, NULLs, special values", (KINDS_ROW_1, KINDS_ROW_2, KINDS_ROW_3)),
    Step("kinds: 40+ digits and infinities", (KINDS_ROW_4,)),
    Step(
        "kinds: update some columns, change a key",
        (
            "UPDATE kinds SET n_c = n_c + 0.00000001, b = false, jb = NULL, m = 'ok' WHERE id = 1",
            "UPDATE kinds SET id = 30, t = t || ' (moved)' WHERE id = 3",
            "UPDATE kinds SET i2 = 7 WHERE id = 2",
        ),
    ),
    Step(
        "documents: TOASTed body (> 8 kB, incompressible)",
        toast_inserts("documents"),
    ),
    Step(
        "documents: updates that leave the TOASTed body alone (sent as unchanged TOAST)",
        toast_untouched("documents"),
    ),
    Step(
        "documents: rewrite a body, then leave it alone, then delete another",
        (*toast_rewrite("documents"), toast_delete("documents")),
    ),
    Step(
        "positions: composite key, changed too",
        (
            POSITIONS_ROWS,
            *POSITIONS_UPDATES,
        ),
    ),
    Step(
        "fullrows: REPLICA IDENTITY FULL (old rows sent whole)",
        (
            "INSERT INTO fullrows VALUES (1, 'one', 1.00), (2, 'two', 2.00), (3, NULL, NULL)",
            "UPDATE fullrows SET amount = 1.50 WHERE id = 1",
            "UPDATE fullrows SET label = 'three' WHERE id = 3",
            "DELETE FROM fullrows WHERE id = 2",
        ),
    ),
    Step(
        "a savepoint that is rolled back (small: not streamed)",
        (
            "INSERT INTO positions VALUES (3, 'GBP', 1.00)",
            "SAVEPOINT before_fee",
            "INSERT INTO positions VALUES (3, 'JPY', 666.00)",
            "DELETE FROM positions WHERE account_id = 1 AND currency = 'EUR'",
            "ROLLBACK TO SAVEPOINT before_fee",
            "UPDATE positions SET quantity = 1.25 WHERE account_id = 3",
        ),
    ),
    Step(
        "an aborted transaction: none of it may appear",
        (
            "INSERT INTO positions VALUES (666, 'XXX', 666.00)",
            "DELETE FROM positions",
            "UPDATE kinds SET t = 'aborted' WHERE id = 1",
        ),
        outcome="rollback",
    ),
    Step(
        "a transaction replayed from another node (Origin message)",
        ("INSERT INTO positions VALUES (4, 'EUR', 4.00)",),
        origin=True,
    ),
    Step(
        "logical decoding messages around a change",
        (
            "SELECT pg_logical_emit_message(true, 'walrecover', 'transactional hello')",
            "SELECT pg_logical_emit_message(false, 'walrecover', 'non-transactional hello')",
            "INSERT INTO positions VALUES (5, 'EUR', 5.00)",
        ),
    ),
    Step(
        "staging: rows in a parent and a child",
        (
            "INSERT INTO staging (note) VALUES ('gone'), ('gone too')",
            "INSERT INTO staging_child VALUES (1, 1)",
        ),
    ),
    Step(
        "staging: TRUNCATE ... RESTART IDENTITY CASCADE",
        ("TRUNCATE staging RESTART IDENTITY CASCADE",),
    ),
    Step(
        "staging: rows after the truncate (ids restart at 1)",
        ("INSERT INTO staging (note) VALUES ('after truncate'), ('kept')",),
    ),
    Step("staging: plain truncate of the child", ("TRUNCATE staging_child",)),
    Step("recreated: rows in the first table", ("INSERT INTO recreated VALUES (1, 'old')",)),
    RECREATE,
    Step(
        "recreated: rows in the second table",
        ("INSERT INTO recreated VALUES (1, 'new', 10), (2, 'new too', 20)",),
    ),
    BIG_STREAMED,
    BIG_ABORTED,
    Step(
        "a prepared transaction, committed",
        ("INSERT INTO positions VALUES (6, 'EUR', 6.00)",),
        outcome="prepare-commit",
    ),
    Step(
        "a prepared transaction, rolled back",
        (
            "INSERT INTO positions VALUES (7, 'EUR', 7.00)",
            "UPDATE kinds SET t = 'prepared then rolled back' WHERE id = 1",
        ),
        outcome="prepare-rollback",
    ),
    Step(
        "big: prepared (streamed, then Stream Prepare under two_phase), committed",
        (bulk(20001, 600, "prepared big"),),
        outcome="prepare-commit",
    ),
    Step(
        "big: prepared and streamed, rolled back",
        (bulk(30001, 500, "prepared big rolled back"),),
        outcome="prepare-rollback",
    ),
)

#: A streamed transaction with a plain one committing between its stream blocks.
INTERLEAVED_FIRST = bulk(40001, 500, "interleaved")
INTERLEAVED_OTHER = "INSERT INTO positions VALUES (8, 'EUR', 8.00)"
INTERLEAVED_LAST = bulk(40501, 400, "interleaved late")

#: Tables and their ordering key for the ground truth.
TABLES: dict[str, tuple[str, ...]] = {
    "kinds": ("id",),
    "documents": ("id",),
    "positions": ("account_id", "currency"),
    "fullrows": ("id",),
    "staging": ("id",),
    "staging_child": ("id",),
    "recreated": ("id",),
    "big": ("id",),
}


def render_workload() -> str:
    """The workload as a readable SQL script (what the recorder runs, in order)."""
    lines = [
        "-- The workload behind the pgoutput fixtures (scripts/pgoutput_fixture.py).",
        "-- Cluster: " + ", ".join(f"{k}={v}" for k, v in SETTINGS.items()),
        "-- Session: " + ", ".join(f"{k}={v}" for k, v in SESSION_SETTINGS.items()),
        "SET synchronous_commit = on;",
        SETUP + ";",
        "",
        SCHEMA + ";",
        "",
    ]
    for step in WORKLOAD:
        lines.append(f"-- {step.label}")
        if step.origin:
            lines.append(f"SELECT pg_replication_origin_session_setup('{ORIGIN}');")
        lines.append("BEGIN;")
        if step.origin:
            lines.append("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now());")
        lines.extend(statement + ";" for statement in step.statements)
        lines.extend(statement + ";" for statement in ending(step.outcome, "fixture_gid"))
        if step.origin:
            lines.append("SELECT pg_replication_origin_session_reset();")
        lines.append("")
    lines += [
        "-- interleaved: a streamed transaction (session A) with a plain one (session B) "
        "committing between its stream blocks",
        "BEGIN;  -- A",
        INTERLEAVED_FIRST + ";  -- A",
        INTERLEAVED_OTHER + ";  -- B, autocommit",
        INTERLEAVED_LAST + ";  -- A",
        "COMMIT;  -- A",
        "",
    ]
    return "\n".join(lines)


def _xid(cur: Any) -> int:
    cur.execute("SELECT pg_current_xact_id()::text::bigint")
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def run_step(conn: Connection, step: Step, number: int) -> dict[str, Any]:
    """Run one step; return its label, xid and outcome."""
    gid = f"fixture_{number}"
    with conn.cursor() as cur:
        if step.origin:
            cur.execute("SELECT pg_replication_origin_session_setup(%s)", (ORIGIN,))
        cur.execute("BEGIN")
        if step.origin:
            cur.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
        for statement in step.statements:
            cur.execute(statement)
        xid = _xid(cur)
        for statement in ending(step.outcome, gid):
            cur.execute(statement)
        if step.origin:
            cur.execute("SELECT pg_replication_origin_session_reset()")
    return {"label": step.label, "xid": xid, "outcome": step.outcome}


def run_interleaved(conn: Connection, other: Connection) -> list[dict[str, Any]]:
    """A streamed transaction with another transaction committing in the middle of it."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(INTERLEAVED_FIRST)
        xid = _xid(cur)
        with other.cursor() as other_cur:
            other_cur.execute("BEGIN")
            other_cur.execute(INTERLEAVED_OTHER)
            other_xid = _xid(other_cur)
            other_cur.execute("COMMIT")
        cur.execute(INTERLEAVED_LAST)
        cur.execute("COMMIT")
    return [
        {"label": "interleaved: plain transaction inside", "xid": other_xid, "outcome": "commit"},
        {"label": "interleaved: streamed transaction", "xid": xid, "outcome": "commit"},
    ]


def table_contents(conn: Connection, table: str, key: tuple[str, ...]) -> dict[str, Any]:
    """Columns (name, format_type, type oid, typmod, generated) and rows as output text."""
    columns = [
        [str(name), str(type_name), int(oid), int(typmod), bool(generated)]
        for name, type_name, oid, typmod, generated in conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod), atttypid::int, atttypmod,"
            " attgenerated <> '' FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
    ]
    query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, key))
    )
    rows: list[list[str | None]] = []
    with conn.cursor() as cur, cur.copy(query) as copy:
        # Without set_types, COPY rows come back as the server's text, unescaped, None for NULL.
        for row in copy.rows():
            rows.append([None if value is None else str(value) for value in row])
    (oid,) = one(conn, "SELECT %s::regclass::oid::bigint", (table,))
    return {"relation_id": int(oid), "columns": columns, "key": list(key), "rows": rows}


def builtin_types(conn: Connection) -> list[list[Any]]:
    """``[oid, typmod, format_type]`` for every built-in type, and the typmods of ``typmods``."""
    plain = conn.execute(
        "SELECT oid::int, -1, format_type(oid, -1) FROM pg_type WHERE oid < 16384"
        " AND typtype IN ('b', 'r', 'm') ORDER BY oid"
    ).fetchall()
    modified = conn.execute(
        "SELECT DISTINCT atttypid::int, atttypmod, format_type(atttypid, atttypmod)"
        " FROM pg_attribute WHERE attrelid IN ('typmods'::regclass, 'kinds'::regclass)"
        " AND attnum > 0 AND atttypid < 16384 ORDER BY 1, 2"
    ).fetchall()
    return [[int(o), int(t), str(n)] for o, t, n in [*plain, *modified]]


def peek(conn: Connection, slot: str, options: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    flat = [item for pair in options for item in pair]
    rows = conn.execute(
        "SELECT lsn::text, xid::text::bigint, encode(data, 'hex')"
        " FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        (slot, flat),
    ).fetchall()
    return [(str(lsn), int(xid), str(data)) for lsn, xid, data in rows]


def check_coverage(name: str, rows: list[tuple[str, int, str]]) -> None:
    """Refuse a recording that lacks a message type the tests rely on."""
    seen = Counter(chr(int(data[:2], 16)) for _, _, data in rows)
    missing = [kind for kind in REQUIRED_MESSAGES[name] if kind not in seen]
    if missing:
        raise SystemExit(f"read {name} lacks message types {missing} (saw {dict(seen)})")


def dump_expected(expected: dict[str, Any]) -> str:
    """``expected`` as indented JSON, but each row, column, step and option list on one line."""
    compact: dict[str, str] = {}

    def placeholder(value: Any) -> str:
        key = f"@@{len(compact)}@@"
        compact[key] = json.dumps(value, ensure_ascii=False)
        return key

    shaped = json.loads(json.dumps(expected))
    for contents in shaped["tables"].values():
        contents["rows"] = [placeholder(row) for row in contents["rows"]]
        contents["columns"] = [placeholder(column) for column in contents["columns"]]
    shaped["typmods_columns"] = [placeholder(column) for column in shaped["typmods_columns"]]
    shaped["format_type"] = [placeholder(entry) for entry in shaped["format_type"]]
    shaped["steps"] = [placeholder(step) for step in shaped["steps"]]
    for read in shaped["reads"].values():
        read["options"] = placeholder(read["options"])
    text = json.dumps(shaped, indent=1, ensure_ascii=False)
    for key, value in compact.items():
        text = text.replace(f'"{key}"', value, 1)
    return text + "\n"


def record(out: Path) -> None:
    with Cluster(settings=SETTINGS, require_plugins=()) as cluster:
        with connect(cluster.dsn(), autocommit=True, role="fixture") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        dsn = cluster.dsn(DATABASE)
        with (
            connect(dsn, autocommit=True, role="fixture") as conn,
            connect(dsn, autocommit=True, role="fixture") as other,
        ):
            # The throwaway cluster runs with synchronous_commit = off, and peek only decodes
            # WAL that is flushed: commit synchronously so the last transactions are included.
            conn.execute("SET synchronous_commit = on")
            other.execute("SET synchronous_commit = on")
            for statement in SETUP.split(";\n"):
                conn.execute(statement)
            conn.execute(SCHEMA)
            old_recreated = int(one(conn, "SELECT 'recreated'::regclass::oid::bigint")[0])
            steps = [run_step(conn, step, n) for n, step in enumerate(WORKLOAD, 1)]
            steps += run_interleaved(conn, other)
            reads = {name: peek(conn, slot, options) for name, (slot, options) in READS.items()}
            tables = {name: table_contents(conn, name, key) for name, key in TABLES.items()}
            typmods = table_contents(conn, "typmods", ("a",))["columns"]
            types = builtin_types(conn)
            (version,) = one(conn, "SELECT version()")
    for name, rows in reads.items():
        check_coverage(name, rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "workload.sql").write_text(render_workload() + "\n", encoding="utf-8")
    for name, rows in reads.items():
        with gzip.open(out / f"{name}.jsonl.gz", "wt", encoding="utf-8", compresslevel=9) as fh:
            for lsn, xid, data in rows:
                fh.write(json.dumps({"lsn": lsn, "xid": xid, "hex": data}) + "\n")
    expected = {
        "server_version": version,
        "cluster_settings": SETTINGS,
        "session": SESSION_SETTINGS,
        "publication": PUBLICATION,
        "reads": {
            name: {"slot": slot, "options": options} for name, (slot, options) in READS.items()
        },
        "steps": steps,
        "dropped_relation_ids": {"public.recreated": old_recreated},
        "tables": {f"public.{name}": contents for name, contents in tables.items()},
        "typmods_columns": typmods,
        "format_type": types,
    }
    (out / "expected.json").write_text(dump_expected(expected), encoding="utf-8")
    size = sum(path.stat().st_size for path in out.iterdir())
    counts = ", ".join(f"{name}: {len(rows)} rows" for name, rows in reads.items())
    print(f"recorded {counts} into {out} ({size:,} bytes)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    record(args.out)


if __name__ == "__main__":
    main()
