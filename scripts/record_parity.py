"""Record the parity fixtures: ONE workload read through every plugin, by slot and by capture.

Run ``.venv/bin/python scripts/record_parity.py`` from the repository root. It starts one
throwaway cluster (:class:`walrecover.drill.cluster.Cluster`, ``logical_decoding_work_mem = 64kB``
so big transactions are streamed or spilled, ``max_prepared_transactions = 10``), and in a fresh
database, *before* the workload, creates a publication ``FOR ALL TABLES`` and one slot per way of
reading the stream:

- slots that are only peeked (peeking never moves a slot, so one slot serves several reads):
  ``parity_wal2json`` (read in format 2 and format 1), ``parity_test_decoding``,
  ``parity_pgoutput`` (protocol 1, and protocol 2 with streaming) and ``parity_pgoutput_2pc``
  (created with two-phase decoding; protocol 3 with streaming and two_phase);
- one slot per capture, each consumed by ``pg_recvlogical --start -f FILE --no-loop --endpos``
  (as the cluster's run-as user when this runs as root).

Then it runs :data:`WORKLOAD` and writes ``fixtures/parity/``:

- ``workload.json``: the schema and the steps exactly as run (the parity tests replay it on a
  live database, so the live run and the recording cannot drift apart);
- ``reads/<name>.jsonl.gz``: the rows of ``pg_logical_slot_peek_changes`` (or ``_binary_``)
  with the options walrecover's ``SlotSource`` sends for that plugin
  (:func:`walrecover.stream.decoders.plugin_options`), one JSON object per row:
  ``{"lsn", "xid", "data"}`` (text plugins) or ``{"lsn", "xid", "hex"}`` (pgoutput);
- ``captures/<name>.gz``: the bytes ``pg_recvlogical -f`` wrote, gzipped;
- ``expected.json``: the ground truth: each workload step's xid, outcome and commit position
  and time, each table's columns, relation id and final rows as COPY text (the type's output
  function; ``null`` is SQL NULL), ordered; and how every read and capture was made.

Every session (the workload, the peeks, ``pg_recvlogical`` through PGOPTIONS) uses
:data:`walrecover.db.SESSION_SETTINGS`, so every plugin prints the same text for a value.
LSNs, xids and times differ on every recording: tests read them from the fixture.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql
from recording import Step
from workload import (
    BIG_ABORTED,
    BIG_STREAMED,
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
from walrecover.drill.cluster import Cluster, find_installation
from walrecover.stream.decoders import plugin_options

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures" / "parity"
DATABASE = "parity"
PUBLICATION = "parity_pub"
SETTINGS = {"logical_decoding_work_mem": "64kB", "max_prepared_transactions": "10"}
#: The whole fixture directory must stay below this (the brief: well under 1 MB).
MAX_BYTES = 1_000_000


@dataclass(frozen=True)
class Read:
    """One way of reading the stream: plugin, the user's ``-o`` options, and the slot."""

    plugin: str
    #: What a user passes as ``-o NAME=VALUE`` (walrecover adds its own defaults to these).
    user_options: dict[str, str]
    slot: str
    #: The slot is created with two-phase decoding (pgoutput protocol 3 with two_phase).
    two_phase: bool = False

    def options(self) -> list[tuple[str, str]]:
        """Exactly the options walrecover's SlotSource sends for this plugin."""
        return plugin_options(self.plugin, (), self.user_options)


PGOUTPUT_V1 = {"publication_names": PUBLICATION, "proto_version": "1"}
PGOUTPUT_V2 = {"publication_names": PUBLICATION, "proto_version": "2", "streaming": "on"}
PGOUTPUT_V3 = {
    "publication_names": PUBLICATION,
    "proto_version": "3",
    "streaming": "on",
    "two_phase": "on",
}

#: Slot reads (peeked: the slots never move).
READS: dict[str, Read] = {
    "wal2json_v2": Read("wal2json", {}, "parity_wal2json"),
    "wal2json_v1": Read("wal2json", {"format-version": "1"}, "parity_wal2json"),
    "test_decoding": Read("test_decoding", {}, "parity_test_decoding"),
    "pgoutput_v1": Read("pgoutput", PGOUTPUT_V1, "parity_pgoutput"),
    "pgoutput_v2": Read("pgoutput", PGOUTPUT_V2, "parity_pgoutput"),
    "pgoutput_v3": Read("pgoutput", PGOUTPUT_V3, "parity_pgoutput_2pc", two_phase=True),
}

#: pg_recvlogical captures (each consumes a slot of its own).
CAPTURES: dict[str, Read] = {
    "wal2json_v2": Read("wal2json", {}, "capture_wal2json_v2"),
    "wal2json_v1": Read("wal2json", {"format-version": "1"}, "capture_wal2json_v1"),
    "test_decoding": Read("test_decoding", {}, "capture_test_decoding"),
    "pgoutput_v1": Read("pgoutput", PGOUTPUT_V1, "capture_pgoutput_v1"),
    "pgoutput_v2": Read("pgoutput", PGOUTPUT_V2, "capture_pgoutput_v2"),
    "pgoutput_v3": Read("pgoutput", PGOUTPUT_V3, "capture_pgoutput_v3", two_phase=True),
}

SCHEMA = f"""\
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated"');
CREATE DOMAIN amount AS numeric(12,2) CHECK (VALUE > -1000000);
{long_text_function(300, "Incompressible text > 8 kB, stored out of line")}
CREATE TABLE kinds (
    id   integer PRIMARY KEY,
    i2   smallint,
    i8   bigint,
    n_c  numeric(20,8),
    n_u  numeric,
    r    real,
    d    double precision,
    t    text,
    vc   varchar(20),
    ch   char(5),
    ba   bytea,
    b    boolean,
    dt   date,
    tm   time,
    ttz  timetz,
    ts   timestamp,
    tstz timestamptz,
    iv   interval,
    u    uuid,
    j    json,
    jb   jsonb,
    ip   inet,
    ai   integer[],
    at   text[],
    m    mood,
    am   amount,
    g    numeric GENERATED ALWAYS AS (n_c * 2) STORED
);
{documents_table("documents")}
ALTER TABLE documents ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE fullrows (id integer NOT NULL, label text, amount numeric(12,2));
ALTER TABLE fullrows REPLICA IDENTITY FULL;
CREATE TABLE staging (id integer PRIMARY KEY, note text);
CREATE TABLE recreated (id integer PRIMARY KEY, v text);
CREATE TABLE big (id integer PRIMARY KEY, note text)"""

KINDS_COLUMNS = (
    "id, i2, i8, n_c, n_u, r, d, t, vc, ch, ba, b, dt, tm, ttz, ts, tstz, iv, u, j, jb, ip, ai, "
    "at, m, am"
)

KINDS_ROW_1 = (
    f"INSERT INTO kinds ({KINDS_COLUMNS}) VALUES (1, 32767, 9223372036854775807, "  # noqa: S608
    "12345678.12345678, 123456789012345678901234567890.123456789012345678901234567890, "
    "3.14159, 0.1, "
    "E'O''Brien \"the\" tester\\ttab\\nnew line \\\\backslash Grüße 日本 😀', "
    "'varchar value', 'ab', '\\x00ff10deadbeef', true, '2024-02-29', '23:59:59.123456', "
    "'10:00:00+02', '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.123456+00', "
    "'1 year 2 months 3 days 04:05:06.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    '\'{"limit": 1000.10,  "rate": 0.000000000000000001}\', '
    '\'{"nested": {"amount": 99999999999.99999999}, "tags": ["a", "b"]}\', '
    "'192.168.0.1', '{1,NULL,3}', "
    '\'{"with space","quote\\"d",NULL,"NULL","comma,here","back\\\\slash",""}\', '
    "'it''s \"complicated\"', 1234.56)"
)

#: NULL in every column but the key.
KINDS_ROW_2 = "INSERT INTO kinds (id) VALUES (2)"

KINDS_ROW_3 = (
    f"INSERT INTO kinds ({KINDS_COLUMNS}) VALUES (3, -32768, -9223372036854775808, "  # noqa: S608
    "-0.00000001, 'NaN', 'NaN', 'Infinity', "
    "E' leading space, ''single'' and \"double\" quotes,\\n\\nblank line,\\r\\nCR LF, "
    "trailing backslash\\\\', '', 'x', ''::bytea, false, '-infinity', '00:00:00', "
    "'23:59:59.999999-08', '1999-12-31 23:00:00', 'infinity', '-1 days +02:00:00', "
    "'00000000-0000-0000-0000-000000000000', '[]', '{}', '::1', '{}', '{\"\"}', 'sad', 0.01)"
)

KINDS_ROW_4 = (
    "INSERT INTO kinds (id, n_c, n_u, r, d, t) VALUES (4, 99999999999.99999999, "
    "-1234567890123456789012345678901234567890.0123456789, '-Infinity', '-Infinity', "
    "'forty digits')"
)


WORKLOAD: tuple[Step, ...] = (
    Step(
        "kinds: every type, NULLs in every column, NaN, Infinity, awkward text",
        (KINDS_ROW_1, KINDS_ROW_2, KINDS_ROW_3),
    ),
    Step("kinds: 40+ digits and -Infinity", (KINDS_ROW_4,)),
    Step(
        "kinds: updates of some columns, a key change, NULLs filled",
        (
            "UPDATE kinds SET n_c = n_c + 0.00000001, b = false, jb = NULL, m = 'ok' WHERE id = 1",
            "UPDATE kinds SET id = 30, t = t || ' (moved)' WHERE id = 3",
            "UPDATE kinds SET i2 = 7, n_u = 'NaN', at = '{NULL,\"\"}' WHERE id = 2",
        ),
    ),
    Step(
        "documents: TOASTed bodies (> 8 kB, incompressible)",
        toast_inserts("documents"),
    ),
    Step(
        "documents: updates that leave the TOASTed body alone, one changing the key",
        toast_untouched("documents"),
    ),
    Step(
        "documents: rewrite a body, then leave it alone, then delete another",
        (*toast_rewrite("documents"), toast_delete("documents")),
    ),
    Step(
        "fullrows: REPLICA IDENTITY FULL without a primary key, NULLs in old rows",
        (
            "INSERT INTO fullrows VALUES (1, 'one', 1.00), (2, 'two', 2.00), (3, NULL, NULL),"
            " (4, 'four', NULL)",
            "UPDATE fullrows SET amount = 1.50 WHERE id = 1",
            "UPDATE fullrows SET label = 'three' WHERE id = 3",
            "UPDATE fullrows SET id = 40 WHERE id = 4",
            "DELETE FROM fullrows WHERE id = 2",
        ),
    ),
    Step(
        "a savepoint that is rolled back",
        (
            "INSERT INTO staging VALUES (1, 'before the savepoint')",
            "SAVEPOINT before_fee",
            "INSERT INTO staging VALUES (666, 'rolled back')",
            "UPDATE kinds SET t = 'rolled back' WHERE id = 1",
            "DELETE FROM documents WHERE id = 3",
            "ROLLBACK TO SAVEPOINT before_fee",
            "UPDATE staging SET note = 'after the savepoint' WHERE id = 1",
        ),
    ),
    Step(
        "an aborted transaction: none of it may appear",
        (
            "INSERT INTO staging VALUES (667, 'aborted')",
            "DELETE FROM fullrows",
            "UPDATE kinds SET t = 'aborted' WHERE id = 1",
        ),
        outcome="rollback",
    ),
    Step(
        "staging: rows that the TRUNCATE removes",
        (
            "INSERT INTO staging VALUES (2, 'gone too')",
            "UPDATE staging SET note = 'gone' WHERE id = 1",
        ),
    ),
    Step("staging: TRUNCATE", ("TRUNCATE staging",)),
    Step(
        "staging: rows after the truncate (other keys)",
        ("INSERT INTO staging VALUES (3, 'after truncate'), (4, 'kept')",),
    ),
    Step(
        "recreated: rows in the first table",
        ("INSERT INTO recreated VALUES (1, 'old'), (2, 'old too')",),
    ),
    RECREATE,
    Step(
        "recreated: rows in the second table",
        ("INSERT INTO recreated VALUES (1, 'new', 10), (3, 'new too', 30)",),
    ),
    BIG_STREAMED,
    BIG_ABORTED,
    Step(
        "a prepared transaction, committed",
        (
            "INSERT INTO staging VALUES (5, 'prepared')",
            "UPDATE kinds SET vc = 'prepared' WHERE id = 4",
        ),
        outcome="prepare-commit",
    ),
    Step(
        "a prepared transaction, rolled back",
        (
            "INSERT INTO staging VALUES (6, 'prepared, rolled back')",
            "UPDATE kinds SET t = 'prepared then rolled back' WHERE id = 1",
        ),
        outcome="prepare-rollback",
    ),
    Step(
        "big: prepared and streamed, committed",
        (bulk(2001, 500, "prepared big"),),
        outcome="prepare-commit",
    ),
    Step(
        "deletes, the last transaction",
        ("DELETE FROM kinds WHERE id = 4", "DELETE FROM staging WHERE id = 4"),
    ),
)

#: Tables of the ground truth and the columns their rows are ordered by.
TABLES: dict[str, tuple[str, ...]] = {
    "kinds": ("id",),
    "documents": ("id",),
    "fullrows": ("id", "label", "amount"),
    "staging": ("id",),
    "recreated": ("id",),
    "big": ("id",),
}


def run_workload(conn: Connection) -> list[dict[str, Any]]:
    """Run every step on an autocommit connection; return each step's label, xid, outcome."""
    steps = []
    for number, step in enumerate(WORKLOAD, 1):
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for statement in step.statements:
                cur.execute(statement)
            cur.execute("SELECT pg_current_xact_id()::text::bigint")
            row = cur.fetchone()
            assert row is not None
            for statement in ending(step.outcome, f"parity_{number}"):
                cur.execute(statement)
        steps.append({"label": step.label, "xid": int(row[0]), "outcome": step.outcome})
    return steps


def table_contents(conn: Connection, table: str, order: tuple[str, ...]) -> dict[str, Any]:
    """Columns ``[name, format_type, generated]``, relation id, and rows as COPY text."""
    columns = [
        [str(name), str(type_name), bool(generated)]
        for name, type_name, generated in conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod), attgenerated <> ''"
            " FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
    ]
    key = [
        str(name)
        for (name,) in conn.execute(
            "SELECT a.attname::text FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n",
            (table,),
        )
    ]
    (identity,) = one(
        conn, "SELECT relreplident::text FROM pg_class WHERE oid = %s::regclass", (table,)
    )
    query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, order))
    )
    rows: list[list[str | None]] = []
    with conn.cursor() as cur, cur.copy(query) as copy:
        # Without set_types, COPY rows come back as the server's text, unescaped, None for NULL.
        for row in copy.rows():
            rows.append([None if value is None else str(value) for value in row])
    (oid,) = one(conn, "SELECT %s::regclass::oid::bigint", (table,))
    return {
        "relation_id": int(oid),
        "columns": columns,
        "key": key,
        "replica_identity": {"d": "default", "f": "full"}.get(identity, identity),
        "order_by": list(order),
        "rows": rows,
    }


def peek(conn: Connection, read: Read) -> list[dict[str, Any]]:
    """Every row the slot holds, read with walrecover's options (peeking never moves it)."""
    flat = [item for pair in read.options() for item in pair]
    if read.plugin == "pgoutput":
        rows = conn.execute(
            "SELECT lsn::text, xid::text::bigint, encode(data, 'hex')"
            " FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, VARIADIC %s::text[])",
            (read.slot, flat),
        ).fetchall()
        return [{"lsn": lsn, "xid": int(xid), "hex": data} for lsn, xid, data in rows]
    rows = conn.execute(
        "SELECT lsn::text, xid::text::bigint, data"
        " FROM pg_logical_slot_peek_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        (read.slot, flat),
    ).fetchall()
    return [{"lsn": lsn, "xid": int(xid), "data": data} for lsn, xid, data in rows]


def pg_recvlogical(
    cluster: Cluster, dbname: str, read: Read, endpos: str, path: Path, timeout: float = 120
) -> None:
    """Consume ``read.slot`` with ``pg_recvlogical --start -f path`` up to ``endpos``.

    Runs as the cluster's run-as user when this process is root (like the server itself); the
    session gets walrecover's settings through PGOPTIONS, so values print as walrecover's do.
    """
    binary = find_installation().bindir / "pg_recvlogical"
    args = [str(binary), "-d", cluster.dsn(dbname), "--start", "--no-loop"]
    args += ["-S", read.slot, "-P", read.plugin, "-E", endpos, "-f", str(path), "-F", "0"]
    args += ["-s", "1"]
    for name, value in read.options():
        args += ["-o", f"{name}={value}"]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env["PGOPTIONS"] = " ".join(
        f"-c {name}={value.replace(' ', '')}" for name, value in SESSION_SETTINGS.items()
    )
    kwargs: dict[str, Any] = {}
    if cluster.run_as:
        entry = pwd.getpwnam(cluster.run_as)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kwargs
    )
    if result.returncode != 0 or not path.is_file():
        raise SystemExit(f"pg_recvlogical failed ({result.returncode}): {result.stderr.strip()}")


def writable_dir(cluster: Cluster) -> Path:
    """A temporary directory the run-as user (who runs pg_recvlogical) can write."""
    directory = Path(tempfile.mkdtemp(prefix="walrecover-capture-"))
    if cluster.run_as:
        entry = pwd.getpwnam(cluster.run_as)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory


def create_slots(conn: Connection, reads: dict[str, Read]) -> None:
    for read in {r.slot: r for r in reads.values()}.values():
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, %s, false, %s)",
            (read.slot, read.plugin, read.two_phase),
        )


def commit_positions(rows: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """xid -> commit LSN, end LSN and commit time, from wal2json format-2 B objects."""
    found: dict[int, dict[str, str]] = {}
    for row in rows:
        obj = json.loads(row["data"])
        if obj["action"] == "B":
            found[int(obj["xid"])] = {
                "commit_lsn": obj["lsn"],
                "end_lsn": obj["nextlsn"],
                "commit_time": obj["timestamp"],
            }
    return found


def check(reads: dict[str, list[dict[str, Any]]], steps: list[dict[str, Any]]) -> None:
    """Refuse a recording that does not show what the tests rely on."""
    seen = {int(row["xid"]) for row in reads["wal2json_v2"]}
    for step in steps:
        committed = step["outcome"] in ("commit", "prepare-commit")
        has_rows = not step["label"].startswith("recreated: dropped")
        if committed and has_rows and step["xid"] not in seen:
            raise SystemExit(f"committed step {step['label']!r} is missing from the slot")
    kinds = {
        name: {row["hex"][:2] for row in reads[name]} for name in ("pgoutput_v2", "pgoutput_v3")
    }
    if "53" not in kinds["pgoutput_v2"]:  # 'S': Stream Start
        raise SystemExit("the big transaction was not streamed: is logical_decoding_work_mem low?")
    if "50" not in kinds["pgoutput_v3"]:  # 'P': Prepare
        raise SystemExit("the two-phase read shows no Prepare message")


def dump(value: Any) -> str:
    """Indented JSON, with each row, column and option list on one line."""
    compact: dict[str, str] = {}

    def placeholder(item: Any) -> str:
        key = f"@@{len(compact)}@@"
        compact[key] = json.dumps(item, ensure_ascii=False)
        return key

    shaped = json.loads(json.dumps(value))
    for contents in shaped.get("tables", {}).values():
        contents["rows"] = [placeholder(row) for row in contents["rows"]]
        contents["columns"] = [placeholder(column) for column in contents["columns"]]
    if "steps" in shaped:
        shaped["steps"] = [placeholder(step) for step in shaped["steps"]]
    for group in ("reads", "captures"):
        for read in shaped.get(group, {}).values():
            read["options"] = placeholder(read["options"])
            read["user_options"] = placeholder(read["user_options"])
    text = json.dumps(shaped, indent=1, ensure_ascii=False)
    for key, item in compact.items():
        text = text.replace(f'"{key}"', item, 1)
    return text + "\n"


def record(out: Path) -> None:
    with Cluster(settings=SETTINGS, require_plugins=("wal2json",)) as cluster:
        with connect(cluster.dsn(), autocommit=True, role="fixture") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        capture_dir = writable_dir(cluster)
        try:
            with connect(cluster.dsn(DATABASE), autocommit=True, role="fixture") as conn:
                # Peek only decodes flushed WAL; the throwaway cluster commits asynchronously.
                conn.execute("SET synchronous_commit = on")
                conn.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(
                        sql.Identifier(PUBLICATION)
                    )
                )
                create_slots(conn, READS)
                create_slots(conn, CAPTURES)
                conn.execute(SCHEMA)
                (old_recreated,) = one(conn, "SELECT 'recreated'::regclass::oid::bigint")
                steps = run_workload(conn)
                (endpos,) = one(conn, "SELECT pg_current_wal_insert_lsn()::text")
                reads = {name: peek(conn, read) for name, read in READS.items()}
                tables = {name: table_contents(conn, name, order) for name, order in TABLES.items()}
                (version,) = one(conn, "SELECT version()")
            captures: dict[str, bytes] = {}
            for name, read in CAPTURES.items():
                path = capture_dir / f"{name}.out"
                pg_recvlogical(cluster, DATABASE, read, endpos, path)
                captures[name] = path.read_bytes()
        finally:
            shutil.rmtree(capture_dir, ignore_errors=True)
    check(reads, steps)
    positions = commit_positions(reads["wal2json_v2"])
    for step in steps:
        step.update(positions.get(step["xid"], {}))
    write(out, steps, reads, captures, tables, version, endpos, int(old_recreated))


def write(
    out: Path,
    steps: list[dict[str, Any]],
    reads: dict[str, list[dict[str, Any]]],
    captures: dict[str, bytes],
    tables: dict[str, dict[str, Any]],
    version: str,
    endpos: str,
    old_recreated: int,
) -> None:
    if out.exists():
        shutil.rmtree(out / "reads", ignore_errors=True)
        shutil.rmtree(out / "captures", ignore_errors=True)
    (out / "reads").mkdir(parents=True, exist_ok=True)
    (out / "captures").mkdir(parents=True, exist_ok=True)
    workload = {
        "schema": SCHEMA,
        "steps": [
            {"label": s.label, "statements": list(s.statements), "outcome": s.outcome}
            for s in WORKLOAD
        ],
        "publication": PUBLICATION,
        "cluster_settings": SETTINGS,
    }
    (out / "workload.json").write_text(
        json.dumps(workload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    for name, rows in reads.items():
        lines = b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in rows)
        _write_gzip(out / "reads" / f"{name}.jsonl.gz", lines)
    for name, data in captures.items():
        _write_gzip(out / "captures" / f"{name}.gz", data)
    expected = {
        "server_version": version,
        "cluster_settings": SETTINGS,
        "session": SESSION_SETTINGS,
        "publication": PUBLICATION,
        "capture_endpos": endpos,
        "reads": _described(READS, "reads", ".jsonl.gz"),
        "captures": _described(CAPTURES, "captures", ".gz"),
        "steps": steps,
        "dropped_relation_ids": {"public.recreated": old_recreated},
        "tables": {f"public.{name}": contents for name, contents in tables.items()},
    }
    (out / "expected.json").write_text(dump(expected), encoding="utf-8")
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in reads.items())
    print(f"recorded {out} ({size:,} bytes); rows per read: {counts}", file=sys.stderr)
    if size > MAX_BYTES:
        raise SystemExit(f"{out} is {size:,} bytes: keep it under {MAX_BYTES:,}")


def _write_gzip(path: Path, data: bytes) -> None:
    """``data`` gzipped into ``path``; mtime=0: re-recording the same bytes gives the same file."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as fh,
    ):
        fh.write(data)


def _described(group: dict[str, Read], folder: str, suffix: str) -> dict[str, Any]:
    """How each read or capture was made, and its file."""
    return {
        name: {
            "plugin": read.plugin,
            "slot": read.slot,
            "two_phase": read.two_phase,
            "user_options": read.user_options,
            "options": [list(pair) for pair in read.options()],
            "file": f"{folder}/{name}{suffix}",
        }
        for name, read in group.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    record(args.out)


if __name__ == "__main__":
    main()
