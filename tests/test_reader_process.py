"""The replication stream read in a child process (issue 12: both cores on a recovery).

What the stream yields is tested in both places by ``test_slot_stream.py``; here: the child
never outlives its read (a whole read, an early stop, a SIGKILLed walrecover), a server error in
the child reaches the user as it does without the child, the rebuilt table is the truth, and the
choice between the two follows the read's size unless the environment says otherwise.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from fault_helpers import run, start
from helpers import SLOT, Database, cli, differences, drop_with_truth, run_script, source_untouched

from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Begin, TableName
from walrecover.stream.sources.reader_process import ENVIRONMENT, PROCESS_MIN_BYTES, use_process
from walrecover.stream.sources.slot import SlotSource

T = TableName("public", "t")
RECOVERED = TableName("public", "t_recovered")


def _readers(parent: int) -> list[int]:
    """The reader processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"reader_process" in command:
            found.append(int(entry.name))
    return found


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # dead, its parent not yet waited for it
        time.sleep(0.02)
    return False


@pytest.fixture
def in_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT, "always")


def _setup(db: Database, rows: int = 2_000) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v numeric(12,2), w text)")
    db.create_slot(SLOT, "wal2json")
    run_script(
        db,
        [
            f"INSERT INTO t SELECT g, g * 1.25, repeat('x', 50)"
            f" FROM generate_series({k}, {k + 999}) g"
            for k in range(1, rows, 1000)
        ]
        + ["UPDATE t SET v = v + 0.01 WHERE id % 7 = 0", "DELETE FROM t WHERE id % 11 = 0"],
    )


@pytest.mark.usefixtures("in_child")
def test_a_whole_read_and_an_early_stop_leave_no_child(db: Database) -> None:
    _setup(db)
    with source_untouched(db):
        with SlotSource(db.dsn, SLOT, tables=[T]) as src:
            events = src.events()
            next(events)
            (child,) = _readers(os.getpid())
            for number, event in enumerate(events):
                if isinstance(event, Begin) and number > 10:
                    break
        assert _gone(child), "the reader process outlived an early stop"
        with SlotSource(db.dsn, SLOT, tables=[T]) as src:
            changes = sum(1 for _ in src.events())
            assert _readers(os.getpid()) == []
    assert changes > 2_000


@pytest.mark.usefixtures("in_child")
@pytest.mark.parametrize("plugin", ["wal2json", "pgoutput"])
def test_the_rebuilt_table_is_the_truth(db: Database, plugin: str) -> None:
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v numeric(12,2), w text);"
        " CREATE TABLE other (n integer); CREATE PUBLICATION everything FOR ALL TABLES"
    )
    db.create_slot(SLOT, plugin)
    steps = []
    for k in range(1, 3000, 100):
        steps += [
            f"INSERT INTO t SELECT g, g * 1.25, 'r' || g FROM generate_series({k}, {k + 99}) g",
            f"INSERT INTO other SELECT generate_series(1, {k % 500})",
            f"UPDATE t SET v = v + 0.05, w = NULL WHERE id BETWEEN {k} AND {k + 20}",
            f"DELETE FROM t WHERE id BETWEEN {k + 30} AND {k + 35}",
        ]
    run_script(db, steps)
    drop_with_truth(db)
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", RECOVERED) == (0, 0)


@pytest.mark.usefixtures("in_child")
def test_a_server_error_in_the_child_reaches_the_user_unchanged(db: Database) -> None:
    """pgoutput asked for a publication that does not exist: the walsender's error, raised in
    the child, is the one the user would see without it (exit 2, the same advice)."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY)")
    db.create_slot(SLOT, "pgoutput")
    run_script(db, ["CREATE PUBLICATION p FOR TABLE t", "INSERT INTO t VALUES (1)"])
    args = ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t",
            "-o", "publication_names=missing"]  # fmt: skip
    with source_untouched(db):
        here = cli(*args)
        os.environ[ENVIRONMENT] = "never"
        try:
            without = cli(*args)
        finally:
            os.environ[ENVIRONMENT] = "always"
    assert here.exit_code == without.exit_code != 0
    assert "publication" in here.stderr and here.stderr == without.stderr


def test_a_killed_walrecover_takes_its_reader_with_it(db: Database) -> None:
    """SIGKILL cannot be caught: the kernel ends the child (PR_SET_PDEATHSIG), its walsender
    lets the copy go, and the rerun drops it and rebuilds the truth."""
    _setup(db, rows=150_000)
    drop_with_truth(db)
    args = ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t"]
    with source_untouched(db):
        running = start(args, {ENVIRONMENT: "always"})
        deadline = time.monotonic() + 60
        readers: list[int] = []
        while not readers and running.alive() and time.monotonic() < deadline:
            readers = _readers(running.proc.pid)
            time.sleep(0.01)
        assert readers, "no reader process appeared"
        running.signal(signal.SIGKILL)
        running.finish()
        assert _gone(readers[0]), "the reader process outlived a SIGKILLed walrecover"
        rerun = run(args, {ENVIRONMENT: "always"})
        assert rerun.returncode == 0, rerun.stderr
    assert differences(db, "truth", RECOVERED) == (0, 0)


def test_the_child_is_used_for_long_reads_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert not use_process(Lsn(0), Lsn(PROCESS_MIN_BYTES - 1))
    assert use_process(Lsn(1 << 32), Lsn((1 << 32) + PROCESS_MIN_BYTES))
    monkeypatch.setenv(ENVIRONMENT, "never")
    assert not use_process(Lsn(0), Lsn(PROCESS_MIN_BYTES * 8))
    monkeypatch.setenv(ENVIRONMENT, "Always")
    assert use_process(Lsn(0), Lsn(0))
