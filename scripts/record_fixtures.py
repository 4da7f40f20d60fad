"""Record wal2json fixtures from a real, throwaway PostgreSQL cluster.

Run ``.venv/bin/python scripts/record_fixtures.py`` from the repository root. It starts a cluster
with :class:`walrecover.drill.cluster.Cluster` (initdb as an unprivileged user when run as root),
creates a wal2json slot in a fresh database, runs the fixed workload below, and writes:

- ``fixtures/wal2json/workload.sql``: the workload, transaction by transaction, for reading;
- ``fixtures/wal2json/workload.jsonl``: the raw rows of ``pg_logical_slot_peek_changes`` with the
  options of :func:`walrecover.stream.decoders.wal2json.server_options` (no table filter), one JSON
  object per row: ``{"lsn": "0/1A2B3C", "xid": 745, "data": "<plugin text>"}``;
- ``fixtures/wal2json/expected.json``: the ground truth: every table's final rows as the type's
  output function prints them (what COPY, test_decoding and wal2json print; ``bool`` gives ``t``,
  not ``true`` as ``::text`` would), ordered by key, plus the xids of the committed and aborted
  transactions of the workload.

LSNs, xids and commit times differ on every recording; the tests read them from the fixture.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

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
from walrecover.stream.decoders.wal2json import server_options

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures" / "wal2json"
DATABASE = "fixtures"
SLOT = "fixtures_wal2json"

SCHEMA = f"""\
{long_text_function(300, "Incompressible text > 8 kB, so it is TOASTed out of line")}
CREATE TABLE accounts (
    id         bigint PRIMARY KEY,
    balance    numeric(20,8) NOT NULL,
    fee        numeric(12,2),
    rate       numeric,
    flags      smallint,
    counter    integer,
    owner      text,
    photo      bytea,
    active     boolean,
    meta       jsonb,
    opened_at  timestamptz,
    score      double precision
);
{documents_table("documents")}
{POSITIONS_TABLE}
CREATE TABLE audit_log (
    event  text NOT NULL,
    amount numeric(20,8),
    at     timestamptz NOT NULL
);
CREATE TABLE staging (
    id   integer PRIMARY KEY,
    note text
)"""


WORKLOAD: tuple[Step, ...] = (
    Step(
        "accounts: exact money, every scalar type, awkward text",
        (
            "INSERT INTO accounts VALUES (1, 12345678.12345678, 1234567890.12, "
            "123456789012345678901234567890.123456789012345678901234567890, 32767, 2147483647, "
            "'O''Brien \"the\" tester', '\\x00ff10deadbeef'::bytea, true, "
            '\'{"limit": 1000.10, "rate": 0.000000000000000001, "tags": ["a", "b"]}\', '
            "'2024-02-29 23:59:59.123456+00', 0.1)",
            "INSERT INTO accounts VALUES (2, -0.00000001, -99.99, -1e-30, -32768, -2147483648, "
            "E'line one\\nline two\\ttabbed\\\\backslash \\\\x41 and a \"quote\"', "
            "''::bytea, false, '{\"nested\": {\"amount\": 99999999999.99999999}}', "
            "'1999-12-31 23:00:00-05', 1.7976931348623157e308)",
            "INSERT INTO accounts VALUES (3, 0, 0.00, 0, 0, 0, "
            "E'Grüße, 日本語, emoji 😀, control \\x01 char', NULL, NULL, NULL, 'infinity', "
            "-2.5e-300)",
            "INSERT INTO accounts (id, balance) VALUES (9223372036854775807, 99999999999.99999999)",
        ),
    ),
    Step(
        "accounts: update an amount, flip a boolean, clear a value",
        (
            "UPDATE accounts SET balance = balance + 0.00000001, active = false, "
            "meta = NULL WHERE id = 1",
            "UPDATE accounts SET flags = NULL, photo = '\\x5c6e'::bytea, fee = 0.10 WHERE id = 3",
        ),
    ),
    Step(
        "accounts: change a primary key",
        ("UPDATE accounts SET id = 20, counter = counter + 1 WHERE id = 2",),
    ),
    Step(
        "documents: TOASTed body (> 8 kB, incompressible)",
        toast_inserts("documents"),
    ),
    Step(
        "documents: updates that leave the TOASTed body alone (wal2json omits it)",
        toast_untouched("documents"),
    ),
    Step(
        "documents: an update that rewrites the body, then one that does not",
        toast_rewrite("documents"),
    ),
    Step("documents: delete", (toast_delete("documents"),)),
    Step(
        "positions: composite key",
        (
            POSITIONS_ROWS + ", (3, 'Zł', 0.01)",
            *POSITIONS_UPDATES,
        ),
    ),
    Step(
        "a transfer with a savepoint that is rolled back",
        (
            "UPDATE accounts SET balance = balance - 100.00000001 WHERE id = 1",
            "INSERT INTO audit_log VALUES ('transfer out', 100.00000001, '2024-03-01 10:00:00+00')",
            "SAVEPOINT before_fee",
            "UPDATE accounts SET balance = balance - 5 WHERE id = 1",
            "INSERT INTO audit_log VALUES ('fee (rolled back)', 5, '2024-03-01 10:00:01+00')",
            "DELETE FROM positions WHERE account_id = 1 AND currency = 'EUR'",
            "ROLLBACK TO SAVEPOINT before_fee",
            "UPDATE accounts SET balance = balance + 100.00000001 WHERE id = 20",
            "INSERT INTO audit_log VALUES ('transfer in', 100.00000001, '2024-03-01 10:00:00+00')",
        ),
    ),
    Step(
        "an aborted transaction: none of it may appear",
        (
            "INSERT INTO accounts (id, balance) VALUES (666, 666.66600000)",
            "UPDATE accounts SET balance = 0 WHERE id = 1",
            "DELETE FROM positions",
            "INSERT INTO audit_log VALUES ('aborted', 1, '2024-03-01 11:00:00+00')",
        ),
        outcome="rollback",
    ),
    Step(
        "audit_log: a table without a primary key (insert only), duplicate rows included",
        (
            "INSERT INTO audit_log VALUES ('duplicate', 1.5, '2024-03-02 00:00:00+00'), "
            "('duplicate', 1.5, '2024-03-02 00:00:00+00'), (E'multi\\nline', NULL, "
            "'2024-03-02 00:00:01+00')",
        ),
    ),
    Step(
        "staging: rows, a TRUNCATE, and rows after it",
        (
            "INSERT INTO staging VALUES (1, 'gone'), (2, 'gone too')",
            "UPDATE staging SET note = 'still gone' WHERE id = 1",
        ),
    ),
    Step("staging: truncate", ("TRUNCATE staging",)),
    Step(
        "staging: after the truncate",
        ("INSERT INTO staging VALUES (2, 'after truncate'), (3, 'kept')",),
    ),
    Step(
        "deletes",
        (
            "DELETE FROM accounts WHERE id = 9223372036854775807",
            "DELETE FROM positions WHERE account_id = 20",
        ),
    ),
)

#: Tables and their ordering key for the ground truth (audit_log has no key: order by all).
TABLES: dict[str, tuple[str, ...]] = {
    "accounts": ("id",),
    "documents": ("id",),
    "positions": ("account_id", "currency"),
    "audit_log": (),
    "staging": ("id",),
}


def render_workload() -> str:
    """The workload as a readable SQL script (what the recorder runs, in order)."""
    header = [
        "-- The workload behind workload.jsonl and expected.json (scripts/record_fixtures.py).",
        "-- Session: " + ", ".join(f"{k}={v}" for k, v in SESSION_SETTINGS.items()),
        "SET synchronous_commit = on;",
        f"SELECT pg_create_logical_replication_slot('{SLOT}', 'wal2json');",
    ]
    return render_steps(header, SCHEMA, WORKLOAD)


def run_workload(conn: Connection) -> tuple[list[int], list[int]]:
    """Run every step; return (committed xids, aborted xids)."""
    return run_steps(conn, WORKLOAD)


def wal2json_package(major: int) -> str | None:
    """The installed wal2json package and version (Debian), if dpkg knows it."""
    package = f"postgresql-{major}-wal2json"
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def record(out: Path) -> None:
    options = server_options()
    with Cluster() as cluster:
        with connect(cluster.dsn(), autocommit=True, role="fixture") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        with connect(cluster.dsn(DATABASE), autocommit=True, role="fixture") as conn:
            # The throwaway cluster runs with synchronous_commit = off, and peek only decodes
            # WAL that is flushed: commit synchronously so the last transactions are included.
            conn.execute("SET synchronous_commit = on")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (SLOT,))
            conn.execute(SCHEMA)
            committed, aborted = run_workload(conn)
            flat = [item for pair in options for item in pair]
            rows = conn.execute(
                "SELECT lsn::text, xid::text::bigint, data"
                " FROM pg_logical_slot_peek_changes(%s, NULL, NULL, VARIADIC %s::text[])",
                (SLOT, flat),
            ).fetchall()
            tables = {name: table_contents(conn, name, key) for name, key in TABLES.items()}
            (version,) = one(conn, "SELECT version()")
    decoded_xids = {int(xid) for _, xid, _ in rows}
    missing = [xid for xid in committed if xid not in decoded_xids]
    if missing:
        raise SystemExit(f"committed transactions {missing} are missing from the slot's output")
    if decoded_xids & set(aborted):
        raise SystemExit(f"aborted transactions {aborted} appear in the slot's output")
    out.mkdir(parents=True, exist_ok=True)
    (out / "workload.sql").write_text(render_workload() + "\n", encoding="utf-8")
    with (out / "workload.jsonl").open("w", encoding="utf-8") as fh:
        for lsn, xid, data in rows:
            fh.write(
                json.dumps({"lsn": lsn, "xid": int(xid), "data": data}, ensure_ascii=False) + "\n"
            )
    expected = {
        "server_version": version,
        "wal2json_package": wal2json_package(cluster.installation.major),
        "options": [list(pair) for pair in options],
        "session": SESSION_SETTINGS,
        "committed_xids": committed,
        "aborted_xids": aborted,
        "tables": {f"public.{name}": contents for name, contents in tables.items()},
    }
    (out / "expected.json").write_text(
        json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    size = sum(path.stat().st_size for path in out.iterdir())
    print(f"recorded {len(rows)} rows into {out} ({size:,} bytes)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    record(args.out)


if __name__ == "__main__":
    main()
