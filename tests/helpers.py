"""Helpers shared by the recovery, CLI, reconcile and audit tests (all against the real server).

The usual shape of a test: create a table, create a wal2json slot *before* its rows are written,
run a workload, record the ground truth with ``CREATE UNLOGGED TABLE truth AS SELECT * FROM t``
(unlogged: its rows never reach the slot), ``DROP TABLE t``, recover, compare with EXCEPT ALL
both ways. :func:`recover_table` also proves every recovery left the user's slot where it was and
no ``walrecover_`` copy behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner, Result
from psycopg import sql

from walrecover.cli import main
from walrecover.drill.cluster import Cluster
from walrecover.rebuild.recover import RecoveryResult, recover
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import TableName

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


class Database:
    """A fresh database on the session cluster, with helpers tests keep needing."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.dsn = cluster.dsn(name)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, **kwargs)

    def execute(self, query: str, params: Any = None) -> list[Any]:
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, params: Any = None) -> Any:
        rows = self.execute(query, params)
        return rows[0][0] if rows else None

    def create_slot(self, name: str = "cdc", plugin: str = "wal2json") -> None:
        self.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (name, plugin))

    def slot_position(self, name: str = "cdc") -> tuple[str, str]:
        """(confirmed_flush_lsn, restart_lsn) of a slot, to prove it never moved."""
        row = self.execute(
            "SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (name,),
        )
        assert row, f"slot {name} is gone"
        return row[0][0], row[0][1]

    def leftover_copies(self) -> list[str]:
        return [
            r[0]
            for r in self.execute(
                "SELECT slot_name::text FROM pg_replication_slots"
                " WHERE slot_name LIKE 'walrecover\\_%'"
                # walrecover protect's recovery points are kept on purpose.
                " AND slot_name NOT LIKE 'walrecover\\_protect\\_%'"
            )
        ]

    def lsn(self) -> str:
        return str(self.scalar("SELECT pg_current_wal_insert_lsn()::text"))


SLOT = "cdc"
PASSWORD = "Sekr1t-XYZ"


def run_script(db: Database, steps: Sequence[str]) -> None:
    """Run each step on an autocommit session: one statement is one transaction, unless the
    step carries its own BEGIN ... COMMIT/ROLLBACK."""
    with db.connect() as conn:
        for step in steps:
            conn.execute(step)


def in_transaction(db: Database, *statements: str) -> int:
    """Run ``statements`` in one committed transaction; return its xid."""
    with db.connect() as conn, conn.transaction():
        row = conn.execute("SELECT txid_current()").fetchone()
        assert row is not None
        for statement in statements:
            conn.execute(statement)
        return int(row[0])


def drop_with_truth(db: Database, table: str = "t", truth: str = "truth") -> int:
    """Record ``table`` as the unlogged ``truth``, drop ``table``; return the truth's row count."""
    run_script(
        db,
        [
            sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT * FROM {}")
            .format(sql.Identifier(truth), sql.Identifier(table))
            .as_string(None),
            sql.SQL("DROP TABLE {}").format(sql.Identifier(table)).as_string(None),
        ],
    )
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(truth))
    return int(db.scalar(query.as_string(None)))


def snapshot(db: Database, table: str, name: str) -> None:
    """Copy ``table`` as it is now into the unlogged ``name`` (invisible to the slot)."""
    db.execute(
        sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT * FROM {}")
        .format(sql.Identifier(name), sql.Identifier(table))
        .as_string(None)
    )


def _ident(table: str | TableName) -> sql.Identifier:
    if isinstance(table, TableName):
        return sql.Identifier(table.schema, table.name)
    return sql.Identifier(table)


def differences(
    db: Database, expected: str | TableName, actual: str | TableName
) -> tuple[int, int]:
    """(rows of ``expected`` missing from ``actual``, rows of ``actual`` not in ``expected``),
    counting duplicates (EXCEPT ALL both ways); (0, 0) means the tables are equal."""
    query = sql.SQL(
        "SELECT (SELECT count(*) FROM (SELECT * FROM {e} EXCEPT ALL SELECT * FROM {a}) x),"
        " (SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {e}) y)"
    ).format(e=_ident(expected), a=_ident(actual))
    row = db.execute(query.as_string(None))[0]
    return int(row[0]), int(row[1])


def table_exists(db: Database, table: str, schema: str = "public") -> bool:
    return bool(
        db.scalar(
            "SELECT to_regclass(%s) IS NOT NULL",
            (sql.Identifier(schema, table).as_string(None),),
        )
    )


@contextmanager
def source_untouched(db: Database, slot: str = SLOT) -> Iterator[None]:
    """Assert the slot did not move and no walrecover copy is left when the block ends."""
    before = db.slot_position(slot)
    yield
    assert db.slot_position(slot) == before, "walrecover moved the user's slot"
    assert db.leftover_copies() == [], "walrecover left a copy slot behind"


def recover_table(
    db: Database, table: str = "t", *, slot: str = SLOT, **options: Any
) -> RecoveryResult:
    """:func:`walrecover.rebuild.recover.recover` on ``db``, proving the source was left
    untouched."""
    with source_untouched(db, slot):
        return recover(db.dsn, slot, TableName("public", table), **options)


@dataclass(frozen=True)
class StreamCommit:
    """A committed transaction as the slot shows it (read by peeking, which never moves it)."""

    xid: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: datetime


def stream_commits(db: Database, slot: str = SLOT) -> list[StreamCommit]:
    """Every committed transaction in the slot, in commit order (wal2json BEGIN objects)."""
    with db.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET DateStyle = 'ISO'")
        rows = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, 'format-version',"
            " '2', 'include-xids', '1', 'include-timestamp', '1', 'include-lsn', '1',"
            " 'include-transaction', '1')",
            (slot,),
        ).fetchall()
    commits = []
    for (data,) in rows:
        obj = json.loads(data)
        if obj["action"] == "B":
            commits.append(
                StreamCommit(
                    int(obj["xid"]),
                    Lsn.parse(obj["lsn"]),
                    Lsn.parse(obj["nextlsn"]),
                    datetime.fromisoformat(obj["timestamp"]),
                )
            )
    return commits


# -- a workload with a stop point in the middle -------------------------------------------------

STOP_TABLE_DDL = "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)"


@dataclass(frozen=True)
class StopWorkload:
    """What :func:`stop_workload` did: the stop markers and the first transaction left out."""

    lsn: Lsn
    time: datetime
    #: xid of the first transaction committed after the markers (it and later are out).
    stop_xid: int


def stop_workload(db: Database) -> StopWorkload:
    """Two transactions, then the markers (snapshot ``expected``, LSN, time), then two more.

    Recovering with a stop point at any marker must give exactly ``expected``.
    """
    db.execute(STOP_TABLE_DDL)
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t VALUES (1, 10.00, 'one'), (2, 20.00, 'two'), (3, 30.00, 'three')",
            "BEGIN; UPDATE t SET amount = 21.50 WHERE id = 2; DELETE FROM t WHERE id = 3; COMMIT",
        ],
    )
    snapshot(db, "t", "expected")
    # The insert position, not pg_current_wal_lsn(): that is the *write* position, which lags
    # behind the commit records of the transactions just committed when commits are
    # asynchronous (synchronous_commit = off on the throwaway cluster).
    lsn = Lsn.parse(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
    time.sleep(0.05)
    moment = db.scalar("SELECT clock_timestamp()")
    time.sleep(0.05)
    stop_xid = in_transaction(
        db,
        "INSERT INTO t VALUES (4, 40.00, 'four')",
        "UPDATE t SET amount = 11.00 WHERE id = 1",
    )
    run_script(
        db,
        [
            "INSERT INTO t VALUES (5, 50.00, 'five')",
            "DELETE FROM t WHERE id = 2",
            "DROP TABLE t",
        ],
    )
    return StopWorkload(lsn=lsn, time=moment, stop_xid=stop_xid)


# -- the CLI ------------------------------------------------------------------------------------


def cli(*args: str) -> Result:
    """Run ``walrecover ARGS`` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def stderr_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]
