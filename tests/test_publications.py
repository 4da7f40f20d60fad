"""walrecover never breaks logical replication around the table it builds (issue 8, B10).

A recovery into a database with a ``FOR ALL TABLES`` (or ``TABLES IN SCHEMA``) publication used
to publish ``<table>_recovered`` and ``walrecover.progress``: every subscriber stopped applying
*all* tables ("logical replication target relation ... does not exist") and a new subscription
could not be created. These tests run a real subscriber (a second throwaway cluster subscribed
over TCP to a publication in a database of the session cluster), recover into that database,
and prove the subscriber still applies later writes, a fresh subscription still succeeds, and
the rebuilt table equals the truth, uninterrupted, killed and resumed, read through pgoutput,
and after a server crash emptied the unlogged build.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fault_helpers import (
    progress,
    run,
    session,
    start,
    table_images,
    wait_for_progress,
    wait_until,
)
from helpers import (
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    recover_table,
    source_untouched,
    stderr_lines,
)
from psycopg import sql

from walrecover.drill.cluster import Cluster
from walrecover.drill.rehearsal import rehearse
from walrecover.stream.model import TableName

_names = itertools.count(1)

TABLES_DDL = (
    "CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric(14,2) NOT NULL DEFAULT 0);"
    " CREATE TABLE t (id integer PRIMARY KEY, account integer NOT NULL,"
    " amount numeric(12,2) NOT NULL, note text)"
)


def workload(dsn: str, first: int, last: int) -> None:
    """Ledger transactions ``first..last`` on ``t`` and ``accounts``, one commit each, with
    updates and deletes."""
    with session(dsn) as conn:
        conn.execute(
            f"""
            DO $$ BEGIN FOR i IN {first}..{last} LOOP
                INSERT INTO t VALUES (i, i % 10 + 1, round(i * 1.07, 2), 'row ' || i);
                UPDATE accounts SET balance = balance + round(i * 1.07, 2) WHERE id = i % 10 + 1;
                IF i % 3 = 0 THEN UPDATE t SET amount = amount + 0.01 WHERE id = i - 1; END IF;
                IF i % 7 = 0 THEN DELETE FROM t WHERE id = i - 5; END IF;
                COMMIT;
            END LOOP; END $$
            """
        )


def persistence(dsn: str, table: str) -> str | None:
    """``p`` (logged), ``u`` (unlogged) or None (no such table)."""
    with session(dsn) as conn:
        row = conn.execute(
            "SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass(%s)", (table,)
        ).fetchone()
    return None if row is None else str(row[0])


def published(dsn: str, publication: str) -> set[str]:
    """The tables ``publication`` publishes now (``schema.table``)."""
    with session(dsn) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
            (publication,),
        ).fetchall()
    return {str(r[0]) for r in rows}


def flush_wal(conn: psycopg.Connection[Any]) -> None:
    """Flush the WAL written so far: decoding reads only flushed WAL, and commits are
    asynchronous on the throwaway cluster. A synchronous commit flushes everything before it."""
    conn.execute("SET synchronous_commit = on")
    # A commit that wrote WAL (a catalog row); one that only took an xid does not wait.
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS flush ()")
    conn.execute("DROP TABLE flush")


def slot_mentions(dsn: str, slot: str, *names: str) -> list[str]:
    """The names among ``names`` that appear in the changes of the user's wal2json ``slot``
    (peeked, never moved): a table written while logged shows there, an unlogged one never."""
    with session(dsn) as conn:
        flush_wal(conn)
        rows = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, 'format-version', '2')",
            (slot,),
        ).fetchall()
    text = "\n".join(str(r[0]) for r in rows)
    return [name for name in names if name in text]


# -- the subscriber ------------------------------------------------------------------------------


@dataclass
class Subscriber:
    """A database on the subscriber cluster holding one subscription."""

    cluster: Cluster
    database: str
    subscription: str

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.database)

    def scalar(self, query: str, params: Any = None) -> Any:
        with session(self.dsn) as conn:
            row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every table of the subscription has finished its initial copy."""

        def probe() -> bool | None:
            waiting = self.scalar(
                "SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel"
            )
            return True if waiting == 0 else None

        wait_until(f"subscription {self.subscription} to sync", probe, timeout=timeout)

    def problems(self) -> list[str]:
        """Why the subscription is not healthy: errors in the subscriber's log, error counts,
        or no apply worker running."""
        assert self.cluster.directory is not None
        log = (self.cluster.directory / "server.log").read_text(errors="replace")
        found = [line for line in log.splitlines() if "ERROR:" in line]
        worker = self.scalar(
            "SELECT pid FROM pg_stat_subscription WHERE subname = %s AND relid IS NULL",
            (self.subscription,),
        )
        if worker is None:
            found.append(f"subscription {self.subscription} has no apply worker")
        errors = self.scalar(
            "SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats"
            " WHERE subname = %s",
            (self.subscription,),
        )
        if errors:
            found.append(f"subscription {self.subscription} counts {errors} errors")
        return found


def subscribe(
    cluster: Cluster, source: Database, publication: str, tables: list[str] | None = None
) -> Subscriber:
    """A new database on ``cluster`` with the tables ``publication`` publishes (their columns
    as the publisher has them, as a schema dump would give), subscribed to it over TCP."""
    number = next(_names)
    name = f"sub_{source.name}_{number}"
    with session(cluster.dsn()) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with session(source.dsn) as conn:
        wanted = tables if tables is not None else sorted(published(source.dsn, publication))
        definitions = []
        for qualified in wanted:
            row = conn.execute(
                "SELECT string_agg(quote_ident(attname) || ' ' ||"
                " format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (qualified,),
            ).fetchone()
            assert row is not None and row[0], f"{qualified} has no columns on the source"
            key = conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND contype = 'p'",
                (qualified,),
            ).fetchone()
            extra = f", {key[0]}" if key else ""
            definitions.append(f"CREATE TABLE {qualified} ({row[0]}{extra})")
    subscriber = Subscriber(cluster, name, name)
    with session(subscriber.dsn) as conn:
        for definition in definitions:
            conn.execute(definition)
        conn.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}").format(
                sql.Identifier(name),
                sql.Literal(source.cluster.tcp_dsn(source.name)),
                sql.Identifier(publication),
            )
        )
    subscriber.wait_ready()
    return subscriber


def unsubscribe(subscriber: Subscriber) -> None:
    """Drop the subscription (and its slot on the publisher), then its database."""
    with session(subscriber.dsn) as conn:
        conn.execute(
            sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(subscriber.subscription))
        )
    with session(subscriber.cluster.dsn()) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(subscriber.database))
        )


_next_account = itertools.count(10_000, 100)


def assert_still_applies(source: Database, subscriber: Subscriber) -> None:
    """Write rows to another published table on the source and prove the subscriber applies
    them, with no error in its log or statistics."""
    first = next(_next_account)
    source.execute(
        "INSERT INTO accounts SELECT g, 1.00 FROM generate_series(%s::integer, %s::integer) g",
        (first, first + 9),
    )

    def arrived() -> bool | None:
        count = subscriber.scalar(
            "SELECT count(*) FROM accounts WHERE id BETWEEN %s AND %s", (first, first + 9)
        )
        return True if count == 10 else None

    try:
        wait_until("the subscriber to apply rows written after the recovery", arrived, timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; subscriber problems: {subscriber.problems()}") from None
    assert subscriber.problems() == []


# -- a published source with a subscriber --------------------------------------------------------


#: The module's source slot (slot names are cluster-wide; the per-test databases use "cdc").
SHARED_SLOT = "published_cdc"


@dataclass(frozen=True)
class Published:
    """A source database with a publication FOR ALL TABLES, a subscriber that synced it, a
    workload on ``t`` and ``accounts``, the truth, and ``t`` dropped."""

    db: Database
    subscriber: Subscriber
    subscribers: Cluster
    directory: Path


@pytest.fixture(scope="module")
def subscribers() -> Iterator[Cluster]:
    """The subscriber cluster (a second throwaway server)."""
    with Cluster(require_plugins=()) as running:
        yield running


@pytest.fixture(scope="module")
def source(
    cluster: Cluster, subscribers: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    name = "published"
    with session(cluster.dsn()) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    subscriber: Subscriber | None = None
    try:
        db.execute(TABLES_DDL)
        db.execute("INSERT INTO accounts (id) SELECT g FROM generate_series(1, 10) g")
        db.execute("CREATE PUBLICATION allpub FOR ALL TABLES")
        db.create_slot(SHARED_SLOT)
        subscriber = subscribe(subscribers, db, "allpub")
        workload(db.dsn, 1, 600)
        assert drop_with_truth(db) > 400
        yield Published(db, subscriber, subscribers, tmp_path_factory.mktemp("published"))
    finally:
        if subscriber is not None:
            unsubscribe(subscriber)
        with session(cluster.dsn()) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_recovery_into_a_database_published_for_all_tables_leaves_subscribers_applying(
    source: Published,
) -> None:
    db = source.db
    assert source.subscriber.problems() == []

    with source_untouched(db, SHARED_SLOT):
        result = cli(
            "recover",
            "-d",
            db.dsn,
            "--slot",
            SHARED_SLOT,
            "--table",
            "public.t",
            "--batch-size",
            "50",
        )

    assert result.exit_code == 0, result.stderr
    warnings = [line for line in stderr_lines(result) if line.startswith("walrecover: warning:")]
    assert len(warnings) == 1, result.stderr
    assert (
        "public.t_recovered was built unlogged, so no subscriber received its rows" in (warnings[0])
    )
    assert "published by allpub (FOR ALL TABLES)" in warnings[0]
    assert "do not write to it until you swap it in for public.t" in warnings[0]
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    # The finished table survives a crash; the bookkeeping is never published.
    assert persistence(db.dsn, "public.t_recovered") == "p"
    assert persistence(db.dsn, "walrecover.progress") == "u"
    assert published(db.dsn, "allpub") == {"public.accounts", "public.t_recovered"}
    # Nothing walrecover wrote reached logical decoding (the user's slot shows the same).
    assert slot_mentions(db.dsn, SHARED_SLOT, "t_recovered", '"walrecover"') == []

    assert_still_applies(db, source.subscriber)

    # A new subscriber, set up with the tables the publication lists, subscribes and syncs.
    fresh = subscribe(source.subscribers, db, "allpub")
    try:
        assert fresh.scalar("SELECT count(*) FROM public.t_recovered") == db.scalar(
            "SELECT count(*) FROM truth"
        )
        assert_still_applies(db, fresh)
    finally:
        unsubscribe(fresh)
    assert_still_applies(db, source.subscriber)


def test_killed_recovery_resumes_unpublished(source: Published) -> None:
    db = source.db
    into = "public.t_resumed"
    args = [
        "recover",
        "-d",
        db.dsn,
        "--slot",
        SHARED_SLOT,
        "--table",
        "public.t",
        "--into",
        into,
        "--batch-size",
        "2",
        "--json",
    ]
    running = start(args)
    wait_for_progress(db.dsn, into, running, transactions=20, complete=False)
    assert running.signal(signal.SIGKILL), "the run ended before it could be killed"
    running.finish()
    with session(db.dsn) as conn:
        killed = progress(conn, into)
    assert killed is not None and not killed.complete
    # Mid-build, neither the table nor its progress is something a publication can publish.
    assert persistence(db.dsn, into) == "u"
    assert "public.t_resumed" not in published(db.dsn, "allpub")
    assert_still_applies(db, source.subscriber)

    rerun = run(args)

    assert rerun.returncode == 0, rerun.describe()
    assert rerun.json()["resumed_from"] == killed.last_commit_lsn
    assert differences(db, "truth", TableName("public", "t_resumed")) == (0, 0)
    assert persistence(db.dsn, into) == "p"
    assert "published by allpub (FOR ALL TABLES)" in rerun.stderr
    assert slot_mentions(db.dsn, SHARED_SLOT, "t_resumed") == []
    assert_still_applies(db, source.subscriber)


def test_recovery_read_through_pgoutput_leaves_subscribers_applying(source: Published) -> None:
    db = source.db
    with source_untouched(db, SHARED_SLOT):
        result = cli(
            "recover",
            "-d",
            db.dsn,
            "--slot",
            SHARED_SLOT,
            "--via-plugin",
            "pgoutput",
            "-o",
            "publication_names=allpub",
            "--table",
            "public.t",
            "--into",
            "public.t_pgoutput",
        )

    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", TableName("public", "t_pgoutput")) == (0, 0)
    assert_still_applies(db, source.subscriber)


def test_rehearsal_through_pgoutput_builds_unpublished_and_matches() -> None:
    """The pgoutput rehearsal's bank has a publication FOR ALL TABLES."""
    result = rehearse(300, 10, plugin="pgoutput")

    assert result.identical and result.reconciled
    assert any(
        "published by bank_pub (FOR ALL TABLES)" in warning for warning in result.recovery.warnings
    ), result.recovery.warnings


# -- which publications make walrecover build unlogged --------------------------------------------


def _small_source(db: Database) -> int:
    db.execute(TABLES_DDL)
    db.execute("INSERT INTO accounts (id) SELECT g FROM generate_series(1, 10) g")
    db.create_slot(SLOT)
    workload(db.dsn, 1, 60)
    return drop_with_truth(db)


@pytest.mark.parametrize(
    ("publication", "into", "publishes_into"),
    [
        ("FOR TABLES IN SCHEMA public", "public.t_recovered", True),
        ("FOR TABLES IN SCHEMA walrecover", "public.t_recovered", False),
        ("FOR TABLES IN SCHEMA rebuilt", "rebuilt.t2", True),
        (None, "public.t_recovered", False),
    ],
    ids=["schema-of-into", "schema-walrecover", "schema-of-other-into", "no-publication"],
)
def test_what_a_publication_would_publish_is_built_unlogged(
    db: Database, publication: str | None, into: str, publishes_into: bool
) -> None:
    _small_source(db)
    db.execute("CREATE SCHEMA walrecover; CREATE SCHEMA rebuilt")
    if publication is not None:
        db.execute(f"CREATE PUBLICATION p {publication}")
    schema, _, name = into.partition(".")

    result = recover_table(db, into=TableName(schema, name))

    assert differences(db, "truth", TableName(schema, name)) == (0, 0)
    assert result.exact
    logged_build = publication is None
    # While it was built, the table and its progress reached the WAL's row changes only when
    # no publication would publish them.
    mentioned = slot_mentions(db.dsn, SLOT, f'"{name}"', '"walrecover"')
    assert mentioned == ([f'"{name}"', '"walrecover"'] if logged_build else [])
    assert persistence(db.dsn, into) == "p"
    assert persistence(db.dsn, "walrecover.progress") == ("p" if logged_build else "u")
    warned = [w for w in result.warnings if "was built unlogged" in w]
    if publishes_into:
        assert into in published(db.dsn, "p")
        assert len(warned) == 1 and f"published by p ({publication})" in warned[0]
    else:
        assert warned == []
        if publication is not None:
            assert published(db.dsn, "p") == set()


def test_ddl_comment_is_kept_and_what_keeps_a_ddl_table_published_is_refused(
    db: Database, tmp_path: Path
) -> None:
    _small_source(db)
    db.execute("CREATE PUBLICATION allpub FOR ALL TABLES")
    columns = "id integer PRIMARY KEY, account integer, amount numeric(12,2), note text"
    ddl = tmp_path / "ddl.sql"
    ddl.write_text(
        f"CREATE TABLE public.t_recovered ({columns});"
        " COMMENT ON TABLE public.t_recovered IS 'rebuilt for INC-42'"
    )

    result = recover_table(db, ddl=ddl.read_text())

    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert db.scalar("SELECT obj_description('public.t_recovered'::regclass)") == (
        "rebuilt for INC-42"
    )
    assert persistence(db.dsn, "public.t_recovered") == "p"
    assert any("published by allpub" in w for w in result.warnings)

    # A logged table of the --ddl that references the target keeps it from being unlogged.
    referenced = tmp_path / "referenced.sql"
    referenced.write_text(
        f"CREATE TABLE public.t_fk ({columns});"
        " CREATE TABLE public.t_fk_notes (id integer REFERENCES public.t_fk (id))"
    )
    with source_untouched(db):
        refused = cli(*_recover_into(db, "public.t_fk", "--ddl", str(referenced)))

    assert refused.exit_code == 1, refused.stderr
    assert stderr_lines(refused) == [
        "walrecover: error: publication allpub (FOR ALL TABLES) would publish public.t_fk, so "
        "walrecover builds public.t_fk unlogged, but PostgreSQL refuses: could not change table"
        ' "t_fk" to unlogged because it references logged table "t_fk_notes"; drop that from '
        "the --ddl file (a foreign key to a logged table, say), or build with --target another"
        " database or --into a schema no publication publishes"
    ]
    assert db.scalar("SELECT to_regclass('public.t_fk')") is None


def _recover_into(db: Database, into: str, *extra: str) -> list[str]:
    return ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--into", into, *extra]


# -- publications that name the table: refused --------------------------------------------------


def test_into_listed_in_a_publication_is_refused_even_with_force(db: Database) -> None:
    _small_source(db)
    db.execute("CREATE TABLE t_recovered (id integer PRIMARY KEY, note text)")
    db.execute("INSERT INTO t_recovered VALUES (1, 'kept')")
    db.execute("CREATE PUBLICATION named FOR TABLE t_recovered")

    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--force")

    assert result.exit_code == 1, result.stderr
    assert stderr_lines(result) == [
        "walrecover: error: --into public.t_recovered is listed in publication named (FOR "
        "TABLE): its subscribers would receive every row walrecover writes, and stop applying "
        "if they lack the table; choose another --into (or --target another database), or take "
        "it out of the publication yourself (ALTER PUBLICATION named DROP TABLE "
        "public.t_recovered)"
    ]
    assert db.execute("SELECT * FROM t_recovered") == [(1, "kept")]
    assert published(db.dsn, "named") == {"public.t_recovered"}


def test_progress_table_listed_in_a_publication_is_refused(db: Database) -> None:
    _small_source(db)
    recover_table(db, into=TableName("public", "first"))
    db.execute("CREATE PUBLICATION named FOR TABLE walrecover.progress")
    before = db.execute("SELECT target, complete FROM walrecover.progress")

    with source_untouched(db):
        result = cli(
            "recover",
            "-d",
            db.dsn,
            "--slot",
            SLOT,
            "--table",
            "public.t",
            "--into",
            "public.second",
        )

    assert result.exit_code == 1, result.stderr
    (line,) = stderr_lines(result)
    assert line == (
        "walrecover: error: walrecover.progress (walrecover's progress table) is listed in "
        "publication named (FOR TABLE): its subscribers would receive walrecover's bookkeeping"
        " and stop applying; ALTER PUBLICATION named DROP TABLE walrecover.progress, or build "
        "in another database with --target"
    )
    assert db.scalar("SELECT to_regclass('public.second')") is None
    assert db.execute("SELECT target, complete FROM walrecover.progress") == before


# -- a publication that appears during or after a logged build -----------------------------------


def _pgoutput_mentions(db: Database, slot: str, publication: str, *names: bytes) -> list[bytes]:
    with session(db.dsn) as conn:
        flush_wal(conn)
    rows = db.execute(
        "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
        " 'proto_version', '1', 'publication_names', %s)",
        (slot, publication),
    )
    data = b"".join(bytes(r[0]) for r in rows)
    return [name for name in names if name in data]


def test_publication_created_during_a_logged_build_stops_it_and_the_rerun_goes_on_unpublished(
    db: Database,
) -> None:
    db.execute(TABLES_DDL)
    db.execute("INSERT INTO accounts (id) SELECT g FROM generate_series(1, 10) g")
    db.create_slot(SLOT)
    workload(db.dsn, 1, 1500)
    drop_with_truth(db)
    into = "public.t_recovered"
    args = ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--batch-size", "3"]
    running = start(args)
    wait_for_progress(db.dsn, into, running, transactions=10, complete=False)
    db.execute("CREATE PUBLICATION late FOR ALL TABLES")
    # What the publication's subscribers would receive from here on.
    db.execute("SELECT pg_create_logical_replication_slot('late_sub', 'pgoutput')")

    stopped = running.finish()

    assert stopped.returncode == 1, stopped.describe()
    (line,) = stopped.lines
    assert line.startswith(
        "walrecover: error: publication late (FOR ALL TABLES) began publishing "
        "public.t_recovered or walrecover.progress during the recovery; walrecover stopped "
        "before committing more, so no subscriber received rows of the rebuild: rerun the same "
        "command to resume"
    ), line
    with session(db.dsn) as conn:
        kept = progress(conn, into)
    assert kept is not None and not kept.complete and kept.transactions >= 10

    # The rerun resumes that logged build (its progress too) unlogged, out of the publication.
    rerun = run([*args, "--json"])

    assert rerun.returncode == 0, rerun.describe()
    assert rerun.json()["resumed_from"] == kept.last_commit_lsn
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    assert persistence(db.dsn, into) == "p"
    assert persistence(db.dsn, "walrecover.progress") == "u"
    assert published(db.dsn, "late") == {"public.accounts", "public.t_recovered"}
    assert _pgoutput_mentions(db, "late_sub", "late", b"t_recovered", b"walrecover") == []


# -- a server crash empties the unlogged build -----------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own, to crash (the session's is shared)."""
    with Cluster() as running:
        yield running


def _crash(cluster: Cluster) -> None:
    """Crash the server the way a dying backend does: every session ends, crash recovery runs
    and empties unlogged tables. Committed work is flushed first (commits are asynchronous on
    the throwaway cluster), so only unlogged tables lose anything."""
    with session(cluster.dsn()) as conn:
        flush_wal(conn)
        pid = conn.info.backend_pid
        os.kill(pid, signal.SIGKILL)

    def back() -> bool | None:
        try:
            with session(cluster.dsn()) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return None
        return True

    time.sleep(0.2)
    wait_until("the server to finish crash recovery", back, timeout=60, interval=0.1)


def test_server_crash_during_an_unlogged_build_then_rerun_builds_again(
    own_cluster: Cluster,
) -> None:
    with session(own_cluster.dsn()) as conn:
        conn.execute('CREATE DATABASE "crashed"')
    db = Database(own_cluster, "crashed")
    db.execute(TABLES_DDL)
    db.execute("INSERT INTO accounts (id) SELECT g FROM generate_series(1, 10) g")
    db.execute("CREATE PUBLICATION allpub FOR ALL TABLES")
    db.create_slot(SLOT)
    workload(db.dsn, 1, 1500)
    truth = table_images(db.dsn, "public.t")  # kept here: a crash would empty an unlogged copy
    db.execute("DROP TABLE t")
    into = "public.t_recovered"
    args = ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--batch-size", "3"]
    running = start(args)
    wait_for_progress(db.dsn, into, running, transactions=10, complete=False)
    assert running.signal(signal.SIGKILL), "the run ended before it could be killed"
    running.finish()

    _crash(own_cluster)

    # The crash emptied the build and its progress; the marked table is still there.
    assert persistence(db.dsn, into) == "u"
    assert db.scalar("SELECT count(*) FROM public.t_recovered") == 0
    with session(db.dsn) as conn:
        assert progress(conn, into) is None

    rerun = run([*args, "--json"])

    assert rerun.returncode == 0, rerun.describe()
    assert (
        "walrecover: warning: the server crashed (or stopped without a clean shutdown) during "
        "an earlier run, which emptied the unlogged public.t_recovered it was building and its "
        "progress: public.t_recovered is rebuilt from the start"
    ) in rerun.lines
    assert rerun.json()["resumed_from"] is None
    assert table_images(db.dsn, into) == truth
    assert sum(truth.values()) > 1000
    assert persistence(db.dsn, into) == "p"
    assert db.scalar("SELECT obj_description('public.t_recovered'::regclass)") is None
    # The user's empty unlogged table is not walrecover's to drop.
    db.execute("CREATE UNLOGGED TABLE t_other (id integer)")
    again = run(
        ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--into", "t_other"]
    )
    assert again.returncode == 1
    assert "target table public.t_other already exists" in again.stderr
    assert persistence(db.dsn, "public.t_other") == "u"
