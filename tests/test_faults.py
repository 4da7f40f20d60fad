"""Fault injection: walrecover killed, interrupted, or cut off from its databases mid-run.

One ledger workload (a few thousand transactions of inserts, updates, key changes and deletes,
a decoy table, and a stop point near the end so the audit also holds ``after_stop`` rows) is
recovered once without interruption into a reference table with a reference audit. Every
faulty run must then, after rerunning the *same* command, give exactly that: the same rows
(EXCEPT ALL both ways, duplicates counted), the same audit rows (every column, row and chain
hashes included; only the run metadata may differ), the same summary, no ``walrecover_`` copy
slot left behind, and the user's slot where it was.

The SIGKILL points are random: the seed is printed (and named in any failure); set
``WALRECOVER_FAULT_SEED=<seed>`` to replay a run's kill points.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from fault_helpers import (
    LSN_RE,
    Finished,
    audit_problems,
    copy_slots,
    live_images,
    peek_capture,
    progress,
    restart_server,
    run,
    session,
    start,
    table_differences,
    table_images,
    terminate,
    wait_for_progress,
    wait_until,
    walrecover_backends,
)
from helpers import Database, cli, recover_table, source_untouched, table_exists

from walrecover.drill.cluster import Cluster
from walrecover.errors import EXIT_UNPROVEN
from walrecover.rebuild.target import LOCK_CLASS, lock_key
from walrecover.stream.model import TableName
from walrecover.stream.sources.reader_process import ENVIRONMENT

SEED_ENV = "WALRECOVER_FAULT_SEED"
#: Ledger transactions in the workload: a run takes a couple of seconds at --batch-size 200.
TRANSACTIONS = 3000
#: Transactions committed after the stop point (left out of the table, audited as after_stop).
AFTER_STOP = 250
KILLS = 10
BATCH = "200"
#: The user's slot (slot names are cluster-wide: other tests' databases use "cdc").
SLOT = "faults_cdc"
#: Summary fields a resumed run must report exactly as the uninterrupted one.
SAME_SUMMARY = ("transactions", "changes", "rows", "no_row", "first_lsn", "last_lsn", "stop")


def workload(conn: psycopg.Connection[Any], first: int, last: int) -> None:
    """Ledger transactions ``first..last``, one per loop turn, with updates, key changes,
    deletes, multi-row transactions and rows of a decoy table."""
    conn.execute(
        f"""
        DO $$ BEGIN FOR i IN {first}..{last} LOOP
            INSERT INTO t VALUES (i, i % 37, round(i * 1.07, 2), 'row ' || i);
            IF i % 3 = 0 THEN
                UPDATE t SET amount = amount + 0.01, note = note || ' +' WHERE id = i - 1;
            END IF;
            IF i % 7 = 0 THEN DELETE FROM t WHERE id = i - 5; END IF;
            IF i % 293 = 0 THEN
                UPDATE t SET id = -i WHERE id = i - 2;
                INSERT INTO t VALUES (i - 2, 0, 0.5, 'key reused');
            END IF;
            IF i % 97 = 0 THEN
                INSERT INTO t SELECT 1000000 + i * 100 + g, g, g / 3.0, 'bulk'
                FROM generate_series(1, 40) g;
            END IF;
            IF i % 5 = 0 THEN INSERT INTO decoy VALUES (i, 'not recovered'); END IF;
            COMMIT;
        END LOOP; END $$
        """
    )


@dataclass(frozen=True)
class Ledger:
    """The workload's database, the stop point, and the uninterrupted reference run."""

    db: Database
    stop_lsn: str
    reference: Finished
    audit: Path
    directory: Path
    slot_before: tuple[str, str]

    def args(self, into: str, audit: Path, *extra: str) -> list[str]:
        return recover_args(self.db.dsn, self.stop_lsn, into, audit, *extra)


def recover_args(dsn: str, stop_lsn: str, into: str, audit: Path, *extra: str) -> list[str]:
    """The one command every run of a test repeats (a rerun is the same command)."""
    return [
        "recover",
        "-d",
        dsn,
        "--slot",
        SLOT,
        "--table",
        "public.t",
        "--into",
        into,
        "--stop-before-lsn",
        stop_lsn,
        "--batch-size",
        BATCH,
        "--audit",
        str(audit),
        "--json",
        *extra,
    ]


def build_ledger(db: Database, directory: Path) -> Ledger:
    db.execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, account integer NOT NULL,"
        " amount numeric(14,2) NOT NULL, note text);"
        " CREATE TABLE decoy (id integer PRIMARY KEY, v text)"
    )
    db.create_slot(SLOT)
    with db.connect() as conn:
        workload(conn, 1, TRANSACTIONS - AFTER_STOP)
        stop_lsn = str(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchall()[0][0])
        workload(conn, TRANSACTIONS - AFTER_STOP + 1, TRANSACTIONS)
        conn.execute("DROP TABLE t")
    slot_before = db.slot_position(SLOT)
    audit = directory / "reference.parquet"
    reference = run(recover_args(db.dsn, stop_lsn, "public.reference", audit))
    assert reference.returncode == 0, reference.describe()
    out = reference.json()
    assert out["stopped_before"] is not None
    assert out["audit"]["rows"] > out["changes"] > out["rows"] > 0  # after_stop rows audited
    assert table_images(db.dsn, "public.reference") == live_images(pq.read_table(audit))
    return Ledger(db, stop_lsn, reference, audit, directory, slot_before)


@pytest.fixture(params=["here", "process"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the walrecover processes a test starts read the slot's stream: in themselves, or
    in the child process long reads use (the ledger's stream is short: forced)."""
    monkeypatch.setenv(ENVIRONMENT, "never" if request.param == "here" else "always")
    return str(request.param)


@pytest.fixture(scope="module")
def ledger(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    name = "faults"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}_target"')
    db = Database(cluster, name)
    try:
        yield build_ledger(db, tmp_path_factory.mktemp("faults"))
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'DROP DATABASE "{name}_target" WITH (FORCE)')


def outcome_problems(
    ledger: Ledger,
    finished: Finished | None,
    into: str,
    audit: Path,
    *,
    target_dsn: str | None = None,
) -> list[str]:
    """Everything that differs from the reference run after ``finished`` (the rerun); with
    ``finished`` None (the killed run had already finished its work), only what it left."""
    problems = []
    if finished is not None:
        if finished.returncode != 0:
            return [f"the rerun failed: {finished.describe()}"]
        if finished.stderr:
            problems.append(f"the rerun wrote to stderr: {finished.stderr!r}")
        out, ref = finished.json(), ledger.reference.json()
        for field in SAME_SUMMARY:
            if out[field] != ref[field]:
                problems.append(f"summary {field}: {out[field]!r}, reference {ref[field]!r}")
        if out["audit"]["rows"] != ref["audit"]["rows"]:
            problems.append(f"audit rows {out['audit']['rows']}, reference {ref['audit']['rows']}")
    db = ledger.db
    if target_dsn is None:
        missing, extra, expected, actual = table_differences(db, "public.reference", into)
        if (missing, extra, expected) != (0, 0, actual):
            problems.append(
                f"{into}: {missing} rows missing, {extra} extra, {actual} rows vs {expected}"
            )
        target_dsn = db.dsn
    elif table_images(target_dsn, into) != table_images(db.dsn, "public.reference"):
        problems.append(f"{into} in the target database differs from the reference")
    problems += audit_problems(ledger.audit, audit)
    if audit.is_file() and live_images(pq.read_table(audit)) != table_images(target_dsn, into):
        problems.append("the audit's surviving after-images are not the rebuilt table's rows")
    with session(target_dsn) as conn:
        row = progress(conn, into)
    if row is None or not row.complete:
        problems.append(f"the progress row of {into} is not complete: {row}")
    leftovers = copy_slots(db.dsn)
    if leftovers:
        problems.append(f"copy slots left behind: {leftovers}")
    if db.slot_position(SLOT) != ledger.slot_before:
        problems.append("the user's slot moved")
    return problems


def phase(ledger: Ledger, into: str, dsn: str | None = None) -> str:
    """What the target held when the run died, for failure messages."""
    with session(dsn or ledger.db.dsn) as conn:
        row = progress(conn, into)
    if row is None:
        return "nothing committed"
    if row.complete:
        return f"target complete at {row.last_commit_lsn} (audit not yet published?)"
    return f"{row.transactions} transactions committed up to {row.last_commit_lsn}"


# -- SIGKILL -------------------------------------------------------------------------------------


def test_sigkill_at_random_points_then_rerun_gives_the_reference(
    ledger: Ledger, reader: str
) -> None:
    seed = int(os.environ.get(SEED_ENV) or time.time_ns() % 2**32)
    print(f"fault injection seed: {seed} (replay with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    span = ledger.reference.seconds
    failures: list[str] = []
    for number in range(KILLS):
        delay = rng.uniform(0.1 * span, span)
        into = f"public.kill_{reader}_{number}"
        audit = ledger.directory / f"kill_{reader}_{number}.parquet"
        args = ledger.args(into, audit)
        running = start(args)
        time.sleep(delay)
        killed = running.signal(signal.SIGKILL)
        first = running.finish()
        if killed:
            where = phase(ledger, into)
            rerun = run(args)
            if rerun.returncode == 1 and "already exists" in rerun.stderr and audit.is_file():
                # Killed after it had finished (table complete, audit published): the rerun
                # rightly refuses a complete target; what the first run left must be whole.
                where += ", killed after it had finished"
                problems = outcome_problems(ledger, None, into, audit)
            else:
                problems = outcome_problems(ledger, rerun, into, audit)
        else:  # it finished before the kill: it is an uninterrupted run
            where = "finished before the kill"
            problems = outcome_problems(ledger, first, into, audit)
        print(f"kill {number} at {delay:.2f}s: {where}: {problems or 'ok'}")
        if problems:
            failures.append(f"kill {number} at {delay:.2f}s ({where}): {'; '.join(problems)}")
    assert not failures, f"seed {seed} ({SEED_ENV}={seed}):\n" + "\n".join(failures)


def test_sigkill_while_the_audit_is_being_published(ledger: Ledger) -> None:
    """The target's last batch is committed (complete) and the result recorded, but the audit
    file is still being merged: a kill there must not lose the audit, and rerunning must
    finish it. (Killed before the result is recorded, while the checks after replay run, the
    rerun says it cannot prove the table and to use --force: test_pgoutput_gaps.)"""
    into = "public.kill_publishing"
    audit = ledger.directory / "kill_publishing.parquet"
    args = ledger.args(into, audit)
    running = start(args)
    wait_for_progress(ledger.db.dsn, into, running, complete=True, recorded=True)
    assert running.signal(signal.SIGKILL), "the run ended before it could be killed"
    running.finish()
    assert not audit.exists(), "the run published its audit before the kill: nothing tested"

    rerun = run(args)

    assert outcome_problems(ledger, rerun, into, audit) == []


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_exits_130_saying_where_it_stopped_then_rerun_resumes(
    ledger: Ledger, signum: int, reader: str
) -> None:
    into = f"public.interrupted_{reader}_{signum}"
    audit = ledger.directory / f"interrupted_{reader}_{signum}.parquet"
    args = ledger.args(into, audit)
    running = start(args)
    wait_for_progress(ledger.db.dsn, into, running, transactions=300, complete=False)
    assert running.signal(signum)

    stopped = running.finish(timeout=30)
    with session(ledger.db.dsn) as conn:
        kept = progress(conn, into)
    rerun = run(args)

    assert kept is not None and not kept.complete and kept.last_commit_lsn is not None
    problems = []
    if stopped.returncode != 130 or len(stopped.lines) != 1:
        problems.append(f"expected exit 130, one stderr line: {stopped.describe()}")
    line = stopped.lines[-1] if stopped.lines else ""
    # --json: the error is also the one object on stdout.
    if stopped.json() != {"error": line.removeprefix("walrecover: error: "), "exit": 130}:
        problems.append(f"expected the error as JSON on stdout: {stopped.stdout!r}")
    if not line.startswith("walrecover: ") or "rerun" not in line or "resume" not in line:
        problems.append(f"the line does not say that rerunning resumes: {line!r}")
    if f"{into} is incomplete" not in line:
        problems.append(f"the line does not say that {into} is incomplete: {line!r}")
    if kept.last_commit_lsn not in LSN_RE.findall(line):
        problems.append(
            f"the line does not say where it stopped (last committed LSN "
            f"{kept.last_commit_lsn}): {line!r}"
        )
    problems += outcome_problems(ledger, rerun, into, audit)
    if rerun.returncode == 0 and rerun.json()["resumed_from"] != kept.last_commit_lsn:
        problems.append(f"the rerun did not resume after {kept.last_commit_lsn}: {rerun.stdout}")
    assert problems == []


# -- connections that die -------------------------------------------------------------------------

#: When to cut the connection: after this share of the reference's transactions committed.
CUT_POINTS = (0.2, 0.75)


def _source_backend(dsn: str, database: str) -> int | None:
    """The session reading the slot copy: its walsender (the copy streamed), or the backend
    of its SQL pages."""
    for pid, _state, query in walrecover_backends(dsn, database):
        if "START_REPLICATION" in query:
            return pid
        if "pg_logical_slot_get" in query or "walrecover_page" in query:
            return pid
    return None


def _source_cut(ledger: Ledger, share: float, target_dsn: str, into: str) -> int | None:
    """The source session once it is ``share`` of the way through the stream: a walsender by
    what it has sent (the reader child reads a megabyte or more ahead of what the target has
    committed, so the target's progress would find it gone near the end), SQL pages by what
    the target has committed (a page is all a reader holds)."""
    db = ledger.db
    pid = _source_backend(db.dsn, db.name)
    if pid is None:
        return None
    sent = db.execute(
        "SELECT (sent_lsn - %s::pg_lsn) / (%s::pg_lsn - %s::pg_lsn)"
        " FROM pg_stat_replication WHERE pid = %s",
        (ledger.slot_before[0], ledger.stop_lsn, ledger.slot_before[0], pid),
    )
    if sent:
        return pid if sent[0][0] is not None and float(sent[0][0]) >= share else None
    with session(target_dsn) as conn:
        done = progress(conn, into)
    total = ledger.reference.json()["transactions"]
    return pid if done is not None and done.transactions >= int(total * share) else None


def _target_backend(dsn: str, database: str) -> int | None:
    backends = walrecover_backends(dsn, database)
    return backends[0][0] if len(backends) == 1 else None


@pytest.mark.parametrize("which", ["source", "target"])
def test_terminated_backend_is_a_one_line_error_and_rerun_completes(
    ledger: Ledger, which: str, reader: str
) -> None:
    """``pg_terminate_backend`` on walrecover's source session (the one reading the slot copy:
    its walsender, or the backend of its SQL pages) or on its target session (COPY/UPDATE into
    the rebuilt table, in a separate --target database) at several points of the run."""
    db = ledger.db
    target_db = f"{db.name}_target"
    target_dsn = db.cluster.dsn(target_db)
    total = ledger.reference.json()["transactions"]
    failures = []
    for number, share in enumerate(CUT_POINTS):
        into = f"public.cut_{reader[0]}{which[0]}{number}"
        audit = ledger.directory / f"cut_{reader[0]}{which[0]}{number}.parquet"
        args = ledger.args(into, audit, "--target", target_dsn)
        running = start(args)
        if which == "source":
            pid = wait_until(
                f"the source backend {share:.0%} through the stream",
                lambda: _source_cut(ledger, share, target_dsn, into),  # noqa: B023
                running=running,
            )
        else:
            wait_for_progress(target_dsn, into, running, transactions=int(total * share))
            pid = wait_until(
                "the target backend",
                lambda: _target_backend(db.dsn, target_db),
                running=running,
            )
        assert terminate(db.dsn, pid)
        failed = running.finish(timeout=60)
        where = phase(ledger, into, target_dsn)
        line = failed.lines[0] if failed.lines else ""
        problems = []
        if failed.returncode != 1 or len(failed.lines) != 1:
            problems.append(f"expected exit 1 and one stderr line: {failed.describe()}")
        if not line.startswith("walrecover: error: ") or "Traceback" in failed.stderr:
            problems.append(f"not a one-line walrecover error: {failed.stderr!r}")
        if "connection" not in line or "rerun" not in line:
            problems.append(
                f"the message does not say a connection was lost and to rerun: {line!r}"
            )
        rerun = run(args)
        problems += outcome_problems(ledger, rerun, into, audit, target_dsn=target_dsn)
        if problems:
            failures.append(f"cut {number} ({where}): " + "; ".join(problems))
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """A cluster of this module's own, to restart (the session's is shared)."""
    with Cluster() as running:
        yield running


def test_server_restart_mid_run_is_a_one_line_error_and_rerun_completes(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    with psycopg.connect(own_cluster.dsn(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "restart"')
    db = Database(own_cluster, "restart")
    ledger = build_ledger(db, tmp_path)
    into = "public.restarted"
    audit = tmp_path / "restarted.parquet"
    args = ledger.args(into, audit)
    total = ledger.reference.json()["transactions"]
    running = start(args)
    wait_for_progress(db.dsn, into, running, transactions=total // 3)
    restart_server(own_cluster)

    failed = running.finish(timeout=60)
    rerun = run(args)

    problems = []
    if failed.returncode != 1 or len(failed.lines) != 1 or "Traceback" in failed.stderr:
        problems.append(f"expected exit 1 and one stderr line: {failed.describe()}")
    line = failed.lines[-1] if failed.lines else ""
    if not line.startswith("walrecover: error: ") or "rerun" not in line:
        problems.append(f"the last line is not a walrecover error saying to rerun: {line!r}")
    problems += outcome_problems(ledger, rerun, into, audit)
    assert problems == []


def test_cluster_restart_returns(own_cluster: Cluster) -> None:
    """``Cluster.restart()`` (what tests are told to use) must come back, not wait on pipes."""
    worker = threading.Thread(target=own_cluster.restart, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), (
        "Cluster.restart() did not return within 10s: pg_ctl restart is run without -l, so the "
        "new postmaster keeps the captured stdout/stderr pipes open and subprocess.run waits "
        "for them until its 120s timeout"
    )
    with psycopg.connect(own_cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- progress is committed every --batch-size changes ----------------------------------------------


def test_progress_is_committed_every_batch_even_when_keys_are_reused(db: Database) -> None:
    """A transaction that moves a key away and reuses it forces a flush in the middle of a
    batch; the batch must still be committed (with its progress row) every --batch-size
    changes, or a killed run has nothing to resume from and the target holds one giant
    transaction. Each target commit shows as a distinct xmin in the rebuilt table."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v integer NOT NULL)")
    db.create_slot()
    db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 600) g")
    with db.connect() as conn:
        conn.execute(
            "DO $$ BEGIN FOR i IN 1..600 LOOP"
            " UPDATE t SET id = -i WHERE id = i; INSERT INTO t VALUES (i, i); COMMIT;"
            " END LOOP; END $$"
        )
    db.execute("DROP TABLE t")

    result = recover_table(db, batch_size=50)

    assert (result.changes, result.rows) == (1800, 1200)
    commits = db.scalar("SELECT count(DISTINCT xmin::text) FROM t_recovered")
    assert commits >= 1800 // 50 // 2, (
        f"{result.changes} changes at --batch-size 50 were committed in {commits} target "
        "transaction(s)"
    )


# -- only one writer -------------------------------------------------------------------------------


def _small_ledger(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2) NOT NULL)")
    db.create_slot()
    db.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 50) g")
    db.execute("DROP TABLE t")


def test_second_writer_is_refused_naming_the_lock_holder(db: Database, tmp_path: Path) -> None:
    """Another session holds the target's advisory lock (as a running recovery does): the
    second recovery refuses, names that session, and leaves the target and the first run's
    audit work files alone."""
    _small_ledger(db)
    audit = tmp_path / "audit.parquet"
    others = {
        audit.with_name("audit.parquet.partial"): b"the first run's audit being published",
        audit.with_name("audit.parquet.parts") / "part-000000-0000000001000000.parquet": b"x",
    }
    for path, content in others.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
    key = lock_key(TableName("public", "t_recovered"))
    with db.connect() as holder:
        holder.execute("SET application_name = 'first-recovery'")
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, key))
        pid = holder.info.backend_pid

        with source_untouched(db):
            result = cli(
                "recover",
                "-d",
                db.dsn,
                "--slot",
                "cdc",
                "--table",
                "public.t",
                "--audit",
                str(audit),
            )

    assert result.exit_code == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("walrecover: error: another recovery into public.t_recovered is running")
    assert f"pid {pid}" in line and "first-recovery" in line, line
    assert not table_exists(db, "t_recovered")
    assert {path: path.read_bytes() if path.exists() else None for path in others} == others


def test_concurrent_recoveries_into_one_target(ledger: Ledger) -> None:
    """Two real runs of the same command started together: one takes the target, the other is
    refused at once naming the first's session, and the winner completes like the reference.

    Both start at the same moment (not one after the other) so that neither can finish before
    the other reaches the lock, whatever the machine's speed."""
    into = "public.two_writers"
    audit = ledger.directory / "two_writers.parquet"
    args = ledger.args(into, audit)
    runs = [start(args), start(args)]
    done = [running.finish() for running in runs]

    refused = [d for d in done if d.returncode != 0]
    finished = [d for d in done if d.returncode == 0]
    assert len(refused) == 1 and len(finished) == 1, [d.describe() for d in done]
    (line,) = refused[0].lines
    assert f"another recovery into {into} is running (backend pid " in line
    assert "walrecover" in line.split("running", 1)[1]
    assert outcome_problems(ledger, finished[0], into, audit) == []


# -- an interrupted capture recovery resumes without duplicates -----------------------------------

#: read -> (plugin, options, --ddl with the key (test_decoding does not print it) or None)
CAPTURED: dict[str, tuple[str, dict[str, str], str | None]] = {
    "wal2json": ("wal2json", {}, None),
    "wal2json-v1": ("wal2json", {"format-version": "1"}, None),
    "pgoutput": ("pgoutput", {"publication_names": "pub", "proto_version": "1"}, None),
    "test_decoding-ddl": (
        "test_decoding",
        {},
        "CREATE TABLE public.from_capture (id integer PRIMARY KEY, amount numeric(12,2) NOT NULL,"
        " note text)",
    ),
    # Inserts only, no --ddl: the rebuilt table has no key to stop a transaction applied twice.
    "test_decoding-inserts": ("test_decoding", {}, None),
}


@pytest.mark.parametrize("read", CAPTURED)
def test_interrupted_capture_recovery_resumes_without_duplicates(
    db: Database, tmp_path: Path, read: str
) -> None:
    """A capture damaged two thirds in (a bad copy) fails after some batches were committed;
    once the whole file is there, the same command must resume and give the table exactly,
    without applying a transaction twice (test_decoding captures carry no LSN). (A capture that
    merely ends early is not a failure: what committed in it is recovered, see
    test_cut_captures.py.)"""
    plugin, options, ddl = CAPTURED[read]
    updates = (
        ""
        if read == "test_decoding-inserts"
        else (" IF i % 4 = 0 THEN UPDATE t SET amount = amount + 100 WHERE id = i - 1; END IF;")
    )
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2) NOT NULL, note text);"
        " CREATE PUBLICATION pub FOR TABLE t"
    )
    db.create_slot("cdc", plugin)
    with db.connect() as conn:
        conn.execute(
            "DO $$ BEGIN FOR i IN 1..12 LOOP INSERT INTO t VALUES (i, i, 'n' || i);"
            + updates
            + " COMMIT; END LOOP; END $$"
        )
    db.execute("CREATE UNLOGGED TABLE truth AS SELECT * FROM t; DROP TABLE t")
    capture = tmp_path / "capture"
    peek_capture(db.dsn, "cdc", plugin, capture, options=options)
    whole = capture.read_bytes()
    middle = len(whole) * 2 // 3
    capture.write_bytes(whole[:middle] + b"\n\x7f damaged \x00\n" + whole[middle:])
    flags = [f"{name}={value}" for name, value in options.items() if name != "publication_names"]
    args = [
        "recover",
        "--from-file",
        str(capture),
        "--plugin",
        plugin,
        *[item for flag in flags for item in ("-o", flag)],
        "--table",
        "public.t",
        "--target",
        db.dsn,
        "--into",
        "public.from_capture",
        "--batch-size",
        "1",
        "--json",
    ]
    if ddl is not None:
        (tmp_path / "ddl.sql").write_text(ddl)
        args += ["--ddl", str(tmp_path / "ddl.sql")]

    cut = cli(*args)
    with session(db.dsn) as conn:
        kept = progress(conn, "public.from_capture")
    capture.write_bytes(whole)
    rerun = cli(*args)

    assert cut.exit_code == 1, cut.stderr
    assert kept is not None and not kept.complete and kept.transactions > 0
    if read == "wal2json-v1":
        # Format 1 cannot show a TRUNCATE, and a capture gives the WAL nothing to look up.
        assert rerun.exit_code == EXIT_UNPROVEN, rerun.stderr
        assert "format-version 1 left out" in rerun.stderr
    else:
        assert rerun.exit_code == 0, rerun.stderr
    missing, extra, expected, actual = table_differences(db, "public.truth", "public.from_capture")
    assert (missing, extra, actual) == (0, 0, expected), (
        f"after resuming: {missing} rows missing, {extra} extra, {actual} rows vs {expected}"
    )
    assert json.loads(rerun.stdout)["transactions"] == 12
