"""Shared fixtures: one real throwaway PostgreSQL for the whole session, fresh databases per test.

Nothing is mocked: every test that needs a database talks to a cluster started by
:mod:`walrecover.cluster` (initdb as an unprivileged user when run as root, wal_level=logical).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walrecover.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
VECTORS = ROOT.parent / "shared" / "vectors"

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's throwaway cluster (stopped and removed at the end, even on failure)."""
    with Cluster() as running:
        yield running


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
            )
        ]

    def lsn(self) -> str:
        return str(self.scalar("SELECT pg_current_wal_insert_lsn()::text"))


@pytest.fixture
def db(cluster: Cluster) -> Iterator[Database]:
    """A fresh database; its slots are dropped afterwards so WAL is not retained."""
    name = f"t{next(_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = Database(cluster, name)
    yield database
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE (database = %s OR database IS NULL) AND NOT active",
            (name,),
        )
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
